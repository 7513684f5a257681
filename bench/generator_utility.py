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
   every arm) on real only, synthetic only, and real + synthetic (optionally also on
   ``--n-rich`` real volumes, a data-rich reference), and report Dice per label on the held-out
   real phantoms.

Prints one JSON document on stdout (logs go to stderr). Takes about 10-15 minutes on 2 CPU
cores with the defaults; run it in the background::

    nohup python bench/generator_utility.py --out /tmp/gen_bench > gen_bench.json 2> gen_bench.log &
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


def _segmenter_config(args):
    from medgen.config import load_config
    from medgen.training.segmenter import SegmenterConfig
    overrides = ["data.spacing=null", f"data.patch_size={args.seg_patch}", "network.channels=[8, 16, 32, 64]",
                 f"train.steps={args.segmenter_steps}", "train.validate_every=100000",
                 "train.checkpoint_every=100000", "train.log_every=50", f"train.seed={args.seed}"]
    return load_config(None, SegmenterConfig, default="segmenter/ct_unet", overrides=overrides)


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
    parser.add_argument("--segmenter-steps", type=int, default=250)
    parser.add_argument("--seg-patch", default="[48, 48, 32]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from medgen.config import load_config
    from medgen.data.label_image_pairs import hu_to_unit
    from medgen.data.phantoms import label_names
    from medgen.inference.generate import AnatomyGenerator, generate_dataset
    from medgen.io.readers import read_volume
    from medgen.metrics.realism import frechet_distance, per_label_wasserstein
    from medgen.pipelines.train_generator import train_generator
    from medgen.pipelines.train_segmenter import train_segmenter
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
                                        "train.validate_every=100000", "train.checkpoint_every=100000"])
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

    # 4. utility: same segmenter config and steps for each arm
    seg_config = _segmenter_config(args)
    arms = {"real_only": ([real_img], [real_lbl]),
            "synthetic_only": ([synth_dir / "images"], [synth_dir / "labels"]),
            "real_plus_synthetic": ([real_img, synth_dir / "images"], [real_lbl, synth_dir / "labels"])}
    if args.n_rich:
        rich_img, rich_lbl, _ = _write_phantoms(out / "rich", range(RICH_SEEDS_START, RICH_SEEDS_START + args.n_rich),
                                                shape, spacing)
        arms[f"real_rich_{args.n_rich}"] = ([rich_img], [rich_lbl])
    utility = {}
    for arm, (images, labels) in arms.items():
        t = time.perf_counter()
        seed_everything(args.seed)
        run = out / f"seg_{arm}"
        seg_bundle = train_segmenter(seg_config, images=images, labels=labels, output=run, label_names=names,
                                     device="cpu", mlflow=False, resume=(run / "checkpoints").exists())
        utility[arm] = _evaluate_segmenter(seg_bundle, test, names)
        timings[f"segmenter_{arm}_s"] = time.perf_counter() - t
        log.info("%s: mean Dice %.3f", arm, utility[arm]["mean_dice"])
    real_mean = utility["real_only"]["mean_dice"]
    result = {
        "scenario": {"n_real_train": args.n_real, "n_synthetic": args.n_synth, "n_heldout_real": args.n_test,
                     "phantom_shape": shape, "phantom_spacing_mm": spacing, "generator_steps": args.generator_steps,
                     "segmenter_steps": args.segmenter_steps, "segmenter": "segmenter/ct_unet, channels [8,16,32,64], "
                     f"patch {args.seg_patch}, native spacing", "threads": args.threads,
                     "label_note": "phantom labels are exact ground truth (procedural)"},
        "realism": realism,
        "utility": utility,
        "summary": {
            "synthetic_only_fraction_of_real_only_dice": round(utility["synthetic_only"]["mean_dice"] / real_mean, 3)
            if real_mean else None,
            "real_plus_synthetic_minus_real_only_dice": round(utility["real_plus_synthetic"]["mean_dice"] - real_mean, 4),
        },
        "timings_s": {k: round(v, 1) for k, v in timings.items()} | {"total_s": round(time.perf_counter() - t0, 1)},
    }
    if args.n_rich:
        rich = utility[f"real_rich_{args.n_rich}"]["mean_dice"]
        result["summary"]["synthetic_only_fraction_of_real_rich_dice"] = round(
            utility["synthetic_only"]["mean_dice"] / rich, 3) if rich else None
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("mlflow", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    print(json.dumps(main(), indent=1))
