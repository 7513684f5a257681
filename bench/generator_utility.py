"""Acceptance run for anatomy generators: realism and utility (train on synthetic, test on real).

Scenario: labelled CT is scarce (``--n-real`` phantom CTs, default 2). We

1. train a label -> CT generator on those real volumes (``configs/generator/label2ct``),
2. generate ``--n-synth`` labelled synthetic CTs from new anatomies (the label-map sampler
   deforms the real label maps),
3. measure realism against held-out real phantoms (never seen by anything): per-label
   Wasserstein distance of HU distributions and the Frechet distance in the feature space of a
   fixed random conv net (:mod:`medgen.metrics.realism`), each next to the same number computed
   for the real training CTs (a real-vs-real baseline for scale),
4. train the product's CT segmenter (``pipelines/train_segmenter.py``, same config and steps for
   every arm) and report Dice per label on the held-out real phantoms. Arms (``--arms``):

   * ``real_only``: the ``--n-real`` real CTs;
   * ``synthetic_only``: the synthetic CTs alone;
   * ``real_plus_synthetic``: real CTs as ``--images`` plus the synthetic ones as
     ``synthetic_images``, with ``data.real_fraction=--real-fraction`` (share of training
     patches drawn from the real cases; 0.5 by default, fixed before looking at any result);
   * ``real_plus_synthetic_pooled``: the naive alternative, both folders pooled and every case
     drawn equally often (2 real among 16 synthetic: real patches only 11% of the time);
   * ``synthetic_then_real``: pre-train on synthetic, fine-tune on real -- the ``synthetic_only``
     model (same seed) fine-tuned on the real CTs for the same number of steps
     (``train.init_from``);
   * ``real_only_matched``: the real CTs alone for twice the steps, the same total as
     ``synthetic_then_real`` (its fair control: more steps alone also help);
   * ``real_rich_N`` (with ``--n-rich N``): a data-rich real reference. It is also the check
     that the segmenter trains long enough to be data-limited: it must clearly beat
     ``real_only``, else the comparison measures the step budget rather than the data.

   Each arm runs once per ``--seg-seeds`` seed (segmenter init and patch sampling; the
   generator and its synthetic data use ``--seed``); the summary reports mean and spread.

Measured (2026-11-24, 1 thread; mean Dice on the 4 held-out phantoms, mean of the segmenter
seeds with min-max). Session 2, seeds 0-1, no per-structure moves: real_only 0.792 (0.792-0.793),
synthetic_only 0.791 (99.8% of real_only), real_plus_synthetic (real_fraction 0.5) 0.794
(+0.0015, within the seed spread), real_plus_synthetic_pooled 0.795, real_rich_8 0.841.
Session 3, per-structure moves on (the generator configs' default), seeds 0-2:
synthetic_then_real 0.811 (0.806-0.817) against real_only_matched (4000 real steps) 0.8015
(0.800-0.802): +0.009, every fine-tuned seed above every control seed; against real_only at
2000 steps (seeds 0-1) +0.015. synthetic_only 0.788 (0.783-0.796). Mixing in one run
(real_plus_synthetic) still ties (+0.0025). A 1500-step bf16 generator (``--generator-steps 1500
--generator-set train.precision=bf16``, 673 s) improved realism (HU Wasserstein mean 37.4 -> 24.3,
real-vs-real 17.8) but not utility. Note that 2000 steps are not enough for real_only to
converge (4000 steps: +0.010), hence the matched control.

Prints one JSON document on stdout (logs go to stderr). Resumable: each finished arm writes
``OUT/seg_<arm>_seed<S>/bench_arm.json`` (Dice and training seconds) and a re-run with the same
settings reuses it, so arms can be run in several sittings (``--arms``). With the defaults
(2000 segmenter steps, 4 arms, 1 seed) it takes about 40 minutes on one CPU thread::

    OMP_NUM_THREADS=1 nohup python bench/generator_utility.py --out /tmp/gen_bench --threads 1 \
        --n-rich 8 > gen_bench.json 2> gen_bench.log &
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.generator_utility")

TRAIN_SEEDS_START, TEST_SEEDS_START, RICH_SEEDS_START = 0, 1000, 500


def _write_phantoms(folder: Path, seeds, shape, spacing) -> tuple[Path, Path, list]:
    from medgen.data.phantoms import make_phantom
    from medgen.io.volume import Volume
    from medgen.io.writers import write_volume
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    phantoms = []
    for s in seeds:
        p = make_phantom(int(s), shape=shape, spacing=spacing)
        write_volume(Volume(p.ct, p.affine), folder / "images" / f"phantom{s:04d}.nii.gz", overwrite=True)
        write_volume(Volume(p.labels, p.affine), folder / "labels" / f"phantom{s:04d}.nii.gz", overwrite=True)
        phantoms.append(p)
    return folder / "images", folder / "labels", phantoms


def _segmenter_config(args, seed: int, real_fraction: float | None, init_from: Path | None = None,
                      steps: int | None = None):
    from medgen.config import load_config
    from medgen.training.segmenter import SegmenterConfig
    overrides = ["data.spacing=null", f"data.patch_size={args.seg_patch}", "network.channels=[8, 16, 32, 64]",
                 f"train.steps={steps or args.segmenter_steps}", "train.validate_every=100000",
                 "train.checkpoint_every=500", "train.log_every=50", f"train.seed={seed}",
                 # scored on real CTs: no per-label shift (it buys robustness to synthetic CT's errors
                 # at about -0.03 Dice on true CT, and the measured numbers predate it)
                 "augment.label_shift=0"]
    if real_fraction is not None:
        overrides.append(f"data.real_fraction={real_fraction}")
    if init_from is not None:
        overrides.append(f"train.init_from={init_from}")
    return load_config(None, SegmenterConfig, default="segmenter/ct_unet", overrides=overrides)


def _run_arm(arm: dict, run: Path, config, test, names) -> dict:
    """Train one segmenter arm (or reuse its finished ``bench_arm.json``) and score it on ``test``."""
    from medgen.pipelines.train_segmenter import train_segmenter
    from medgen.runtime import seed_everything
    record = run / "bench_arm.json"
    settings = json.loads(config.model_dump_json())
    if record.exists():
        cached = json.loads(record.read_text())
        if cached.get("config") == settings and cached.get("inputs") == arm:
            log.info("%s: reusing %s", run.name, record)
            return cached
    t = time.perf_counter()
    seed_everything(config.train.seed)
    synthetic = {k: arm[k] for k in ("synthetic_images", "synthetic_labels") if arm.get(k)}
    bundle = train_segmenter(config, images=arm["images"], labels=arm["labels"], output=run, label_names=names,
                             device="cpu", mlflow=False, resume=(run / "checkpoints").exists(), **synthetic)
    train_s = time.perf_counter() - t
    result = _evaluate_segmenter(bundle, test, names) | {"train_and_eval_s": round(time.perf_counter() - t, 1),
                                                         "train_s": round(train_s, 1), "config": settings,
                                                         "inputs": arm}
    record.write_text(json.dumps(result, indent=1))
    return result


def _summarise_seeds(per_seed: dict[int, dict]) -> dict:
    """Per-label and mean Dice averaged over seeds, with the spread (min, max) of the mean."""
    runs = list(per_seed.values())
    labels = runs[0]["dice_per_label"]
    means = [r["mean_dice"] for r in runs]
    return {"dice_per_label": {k: round(float(np.mean([r["dice_per_label"][k] for r in runs])), 4) for k in labels},
            "mean_dice": round(float(np.mean(means)), 4),
            "mean_dice_min_max": [round(min(means), 4), round(max(means), 4)],
            "per_seed": {str(s): {"dice_per_label": r["dice_per_label"], "mean_dice": r["mean_dice"],
                                  "train_and_eval_s": r["train_and_eval_s"]} for s, r in per_seed.items()}}


def _evaluate_segmenter(bundle: Path, test_phantoms, names) -> dict:
    from medgen.io.volume import Volume
    from medgen.metrics.segmentation import per_label_scores
    from medgen.models.segmenters import load_medgen_segmenter
    seg = load_medgen_segmenter(bundle)
    per_label: dict[str, list[float]] = {}
    for p in test_phantoms:
        pred = seg.segment(Volume(p.ct, p.affine), device="cpu", precision="fp32")
        scores = per_label_scores(pred.array, p.labels, pred_names=seg.label_names, ref_names=names,
                                  spacing=tuple(np.linalg.norm(p.affine[:3, :3], axis=0)), compute_hd95=False)
        for name, s in scores.items():
            per_label.setdefault(name, []).append(s["dice"])
    dice = {k: round(float(np.mean(v)), 4) for k, v in per_label.items()}
    return {"dice_per_label": dice, "mean_dice": round(float(np.mean(list(dice.values()))), 4)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/medgen_generator_bench", help="work folder")
    parser.add_argument("--shape", default="64,64,32", help="phantom grid")
    parser.add_argument("--spacing", default="3,3,4.5", help="phantom spacing (mm)")
    parser.add_argument("--n-real", type=int, default=2, help="real labelled CTs available for training")
    parser.add_argument("--n-test", type=int, default=4, help="held-out real phantoms for evaluation")
    parser.add_argument("--n-synth", type=int, default=16, help="synthetic volumes generated")
    parser.add_argument("--n-rich", type=int, default=0, help="also train a data-rich real reference on N volumes")
    parser.add_argument("--generator-steps", type=int, default=300)
    parser.add_argument("--segmenter-steps", type=int, default=2000,
                        help="steps per arm: enough that n-rich real clearly beats n-real (data-limited)")
    parser.add_argument("--seg-patch", default="[48, 48, 32]")
    parser.add_argument("--real-fraction", type=float, default=0.5,
                        help="data.real_fraction of the real_plus_synthetic arm")
    parser.add_argument("--arms", default="real_only,real_plus_synthetic,real_rich,synthetic_only",
                        help="comma list of real_only, synthetic_only, real_plus_synthetic, "
                             "real_plus_synthetic_pooled, synthetic_then_real (fine-tunes the synthetic_only "
                             "model on the real CTs), real_only_matched (real only for twice the steps: the "
                             "same total as synthetic_then_real), real_rich (needs --n-rich)")
    parser.add_argument("--seed", type=int, default=0, help="generator and synthetic data seed")
    parser.add_argument("--seg-seeds", default="0", help="comma list of segmenter seeds; every arm runs each")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sampler", action="append", default=[], metavar="KEY=VALUE",
                        help="label-map sampler setting of the generator (repeatable), e.g. structure_shift_mm=8")
    parser.add_argument("--generator-set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other generator config override (repeatable), e.g. train.precision=bf16")
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from medgen.config import load_config
    from medgen.transforms.intensity import hu_to_unit
    from medgen.data.phantoms import label_names
    from medgen.inference.generate import AnatomyGenerator, generate_dataset
    from medgen.io.readers import read_volume
    from medgen.metrics.realism import frechet_distance, per_label_wasserstein
    from medgen.pipelines.train_generator import train_generator
    from medgen.runtime import seed_everything
    from medgen.training.generator import GeneratorConfig

    shape = tuple(int(v) for v in args.shape.split(","))
    spacing = tuple(float(v) for v in args.spacing.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = label_names()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    real_img, real_lbl, real = _write_phantoms(out / "real", range(TRAIN_SEEDS_START, TRAIN_SEEDS_START + args.n_real),
                                               shape, spacing)
    _, _, test = _write_phantoms(out / "test", range(TEST_SEEDS_START, TEST_SEEDS_START + args.n_test), shape, spacing)
    timings["phantoms_s"] = time.perf_counter() - t0

    # 1. generator on the scarce real data
    t = time.perf_counter()
    seed_everything(args.seed)
    gen_config = load_config(None, GeneratorConfig, default="generator/label2ct",
                             overrides=[f"train.steps={args.generator_steps}", f"train.seed={args.seed}",
                                        "train.validate_every=100000", "train.checkpoint_every=100000",
                                        *(f"sampler.{kv}" for kv in args.sampler), *args.generator_set])
    gen_run = out / "generator_run"
    bundle = train_generator(gen_config, images=[real_img], labels=[real_lbl], output=gen_run, label_names=names,
                             device="cpu", mlflow=False, resume=(gen_run / "checkpoints").exists())
    timings["generator_training_s"] = time.perf_counter() - t

    # 2. synthetic labelled volumes
    t = time.perf_counter()
    synth_dir = out / "synthetic"
    if not (synth_dir / "datalist.json").exists():
        generate_dataset(AnatomyGenerator(bundle, device="cpu", precision="fp32"), synth_dir, n=args.n_synth,
                         seed=args.seed)
    timings["generation_s"] = time.perf_counter() - t
    synth_images = sorted((synth_dir / "images").glob("*.nii.gz"))
    synth_pairs = [(read_volume(p).array, read_volume(synth_dir / "labels" / p.name, kind="label").array)
                   for p in synth_images]

    # 3. realism against held-out real phantoms, with a real-vs-real baseline
    t = time.perf_counter()
    test_ct, test_lab = [p.ct for p in test], [p.labels for p in test]
    w_synth = per_label_wasserstein([s[0] for s in synth_pairs], test_ct, [s[1] for s in synth_pairs], names,
                                    real_labels=test_lab)
    w_real = per_label_wasserstein([p.ct for p in real], test_ct, [p.labels for p in real], names, real_labels=test_lab)
    fd_synth = frechet_distance([hu_to_unit(s[0]) for s in synth_pairs], [hu_to_unit(c) for c in test_ct])
    fd_real = frechet_distance([hu_to_unit(p.ct) for p in real], [hu_to_unit(c) for c in test_ct])
    realism = {
        "wasserstein_hu_synthetic_vs_heldout": {k: round(v, 2) for k, v in w_synth.items()},
        "wasserstein_hu_real_train_vs_heldout": {k: round(v, 2) for k, v in w_real.items()},
        "wasserstein_hu_mean": {"synthetic": round(float(np.mean(list(w_synth.values()))), 2),
                                "real_baseline": round(float(np.mean(list(w_real.values()))), 2)},
        "frechet_random_conv": {"synthetic_vs_heldout": round(fd_synth, 4), "real_train_vs_heldout": round(fd_real, 4),
                                "feature_net": "RandomConvFeatures(seed=0), axial slices, HU window [-1000, 1000]"},
    }
    timings["realism_s"] = time.perf_counter() - t

    # 4. utility: same segmenter config and steps for each arm, once per segmenter seed
    real_in = {"images": [str(real_img)], "labels": [str(real_lbl)]}
    synth_in = {"images": [str(synth_dir / "images")], "labels": [str(synth_dir / "labels")]}
    available = {"real_only": (real_in, None), "synthetic_only": (synth_in, None),
                 "real_plus_synthetic": (real_in | {"synthetic_images": synth_in["images"],
                                                    "synthetic_labels": synth_in["labels"]}, args.real_fraction),
                 "real_plus_synthetic_pooled": ({"images": real_in["images"] + synth_in["images"],
                                                 "labels": real_in["labels"] + synth_in["labels"]}, None)}
    if args.n_rich:
        rich_img, rich_lbl, _ = _write_phantoms(out / "rich", range(RICH_SEEDS_START, RICH_SEEDS_START + args.n_rich),
                                                shape, spacing)
        available[f"real_rich_{args.n_rich}"] = ({"images": [str(rich_img)], "labels": [str(rich_lbl)]}, None)
    available["synthetic_then_real"] = (real_in, None)  # fine-tunes the synthetic_only arm's model
    available["real_only_matched"] = (real_in, None)  # real only, as many steps as synthetic_then_real in all
    wanted = [f"real_rich_{args.n_rich}" if a.strip() == "real_rich" else a.strip() for a in args.arms.split(",")]
    if "synthetic_then_real" in wanted and "synthetic_only" not in wanted[:wanted.index("synthetic_then_real")]:
        wanted.insert(wanted.index("synthetic_then_real"), "synthetic_only")
    unknown = [a for a in wanted if a not in available]
    if unknown:
        parser.error(f"unknown or unavailable arms {unknown}; available: {sorted(available)}")
    seg_seeds = [int(v) for v in args.seg_seeds.split(",")]
    utility = {}
    for arm in wanted:
        inputs, real_fraction = available[arm]
        per_seed = {}
        for seg_seed in seg_seeds:
            pretrained = out / f"seg_synthetic_only_seed{seg_seed}" / "bundle" if arm == "synthetic_then_real" else None
            steps = 2 * args.segmenter_steps if arm == "real_only_matched" else None
            config = _segmenter_config(args, seg_seed, real_fraction, pretrained, steps)
            per_seed[seg_seed] = _run_arm(inputs, out / f"seg_{arm}_seed{seg_seed}", config, test, names)
            timings[f"segmenter_{arm}_seed{seg_seed}_s"] = per_seed[seg_seed]["train_and_eval_s"]
            log.info("%s seed %d: mean Dice %.3f", arm, seg_seed, per_seed[seg_seed]["mean_dice"])
        utility[arm] = _summarise_seeds(per_seed)
    result = {
        "scenario": {"n_real_train": args.n_real, "n_synthetic": args.n_synth, "n_heldout_real": args.n_test,
                     "phantom_shape": shape, "phantom_spacing_mm": spacing, "generator_steps": args.generator_steps,
                     "segmenter_steps": args.segmenter_steps, "segmenter_seeds": seg_seeds,
                     "real_fraction_real_plus_synthetic": args.real_fraction,
                     "label_sampler": gen_config.sampler.model_dump(), "generator_overrides": args.generator_set,
                     "segmenter": "segmenter/ct_unet, channels [8,16,32,64], "
                     f"patch {args.seg_patch}, native spacing", "threads": args.threads,
                     "label_note": "phantom labels are exact ground truth (procedural)"},
        "realism": realism,
        "utility": utility,
        "summary": _summary(utility, args.n_rich),
        "timings_s": {k: round(v, 1) for k, v in timings.items()} | {"total_s": round(time.perf_counter() - t0, 1)},
    }
    return result


def _summary(utility: dict, n_rich: int) -> dict:
    """The acceptance numbers: synthetic-only as a fraction of real-only, and each arm minus real-only."""
    out = {}
    base = utility.get("real_only", {}).get("mean_dice")
    if not base:
        return out
    if "synthetic_only" in utility:
        out["synthetic_only_fraction_of_real_only_dice"] = round(utility["synthetic_only"]["mean_dice"] / base, 3)
    for arm in ("real_plus_synthetic", "real_plus_synthetic_pooled", "synthetic_then_real", "real_only_matched",
                f"real_rich_{n_rich}"):
        if arm in utility:
            out[f"{arm}_minus_real_only_dice"] = round(utility[arm]["mean_dice"] - base, 4)
    if "synthetic_then_real" in utility and "real_only_matched" in utility:  # the same training steps in all
        out["synthetic_then_real_minus_real_only_matched_dice"] = round(
            utility["synthetic_then_real"]["mean_dice"] - utility["real_only_matched"]["mean_dice"], 4)
    rich = utility.get(f"real_rich_{n_rich}", {}).get("mean_dice")
    if rich and "synthetic_only" in utility:
        out["synthetic_only_fraction_of_real_rich_dice"] = round(utility["synthetic_only"]["mean_dice"] / rich, 3)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("mlflow", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    print(json.dumps(main(), indent=1))
