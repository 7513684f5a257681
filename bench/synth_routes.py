"""Routes side by side on phantoms: CT labels only, held-out MRs in T1 *and* T2. Prints JSON.

1. Write phantom CTs + labels (training), and held-out phantoms with both a T1 and a T2 MR.
2. Train the CT segmenter (``segmenter/ct_unet``, the upper bound on true CT) and the
   contrast-agnostic segmenter (``segmenter/synth_unet``: renderings of the same CTs' label and
   HU-band maps; it never sees a phantom MR intensity).
3. Score per-organ Dice on every held-out MR and weighting:
   ``direct`` (contrast-agnostic segmenter on the MR), ``none`` / ``histogram`` (CT segmenter on
   the normalised / histogram-matched MR), ``upper_bound`` (CT segmenter on the true CT),
   ``direct_on_ct`` (contrast-agnostic segmenter on the true CT), ``painted_chain`` (MR -> the
   contrast-agnostic segmenter exported as a tissue-painting translator,
   :mod:`medgen.models.tissue_translator` -> CT segmenter), and with ``--translator NAME=RUN``
   ``NAME`` (MR -> that translator -> CT segmenter) for each translator given.

Usage::

    python bench/synth_routes.py --out /tmp/routes_s0 --seed 0 --threads 1
    python bench/synth_routes.py --out /tmp/routes_q --quick          # small (~3 min)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.synth_routes")

ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "vertebrae", "aorta", "muscle", "fat")
COMMON = ["data.spacing=[4.0,4.0,6.0]", "data.patch_size=[48,48,32]", "network.channels=[8,16,32,64]",
          "train.precision=fp32", "train.validate_every=200", "train.checkpoint_every=200", "train.log_every=50"]
#: the CT segmenter trains ``segmenter/ct_unet``'s default length (2000 steps): the chain's upper bound is
#: then a CT segmenter trained as a user's would be (session 13's table used 600: ``--seg-steps 600``)
FULL = {"shape": (88, 72, 32), "spacing": (4.0, 4.0, 6.0), "n_train": 6, "n_test": 3, "seg_steps": 2000,
        "synth_steps": 12000, "seg_overrides": COMMON + ["train.lr=0.005"], "synth_overrides": COMMON + ["train.lr=0.005"]}
QUICK = {"shape": (48, 48, 24), "spacing": (4.0, 4.0, 6.0), "n_train": 3, "n_test": 1, "seg_steps": 120,
         "synth_steps": 160,
         "seg_overrides": ["data.spacing=[4,4,6]", "data.patch_size=[32,32,16]", "network.channels=[8,16,32]",
                           "network.strides=[2,2]", "train.validate_every=1000", "train.checkpoint_every=1000",
                           "train.lr=0.005"]}
QUICK["synth_overrides"] = QUICK["seg_overrides"]

def _write(folder: Path, seed: int, settings: dict, weightings=("t1",)) -> dict[str, Path]:
    from medgen.data.phantoms import make_phantom
    from medgen.io.volume import Volume
    from medgen.io.writers import write_volume
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for w in weightings:
        p = make_phantom(seed, shape=tuple(settings["shape"]), spacing=tuple(settings["spacing"]), mr_weighting=w)
        arrays = {"ct": np.rint(p.ct).astype(np.int16), "labels": p.labels, f"mr_{w}": p.mr}
        for k, a in arrays.items():
            path = folder / f"phantom{seed}_{k}.nii.gz"
            if not path.exists():
                write_volume(Volume(a, p.affine), path)
            paths[k] = path
    return paths


def _train(config_name: str, overrides, steps: int, images, labels, run: Path, names, device: str) -> Path:
    from medgen.config import load_config
    from medgen.pipelines.train_segmenter import train_segmenter
    from medgen.training.segmenter import SegmenterConfig
    if not (run / "bundle" / "medgen.json").exists():
        cfg = load_config(None, SegmenterConfig, default=config_name, overrides=overrides)
        train_segmenter(cfg, images=images, labels=labels, output=run, label_names=names, max_steps=steps,
                        resume=(run / "checkpoints").exists(), device=device, mlflow=False)
    return run


def _tissue_translator(synth_run: Path, settings: dict, images, labels, names) -> Path:
    """The contrast-agnostic segmenter exported as a tissue-painting translator (``RUN/translator``).

    A run trained with ``synth.target: classes`` exported it already; for one trained on the labels
    only (on phantoms every body voxel is labelled, so the class map differs only outside the body)
    it is exported here, with the class means measured on its training cases exactly as
    ``medgen train segmenter`` measures them.
    """
    from medgen.config import load_config
    from medgen.io.readers import read_volume
    from medgen.models.bundle import load_bundle
    from medgen.models.tissue_translator import export_tissue_translator
    from medgen.training.segmenter import SegmenterConfig, class_mean_hu, input_spec, plan_labels, prepare_case
    folder = synth_run / "translator"
    if (folder / "medgen.json").exists():
        return folder
    means = None
    if "class_mean_hu" not in load_bundle(synth_run / "bundle").extra:
        cfg = load_config(None, SegmenterConfig, default="segmenter/synth_unet", overrides=settings["synth_overrides"])
        plan = plan_labels(names, None)
        cases = [prepare_case(str(i), read_volume(i), read_volume(lab, kind="label"), input_spec(cfg), plan,
                              synth=cfg.synth) for i, lab in zip(images, labels)]
        means = class_mean_hu(cases)
    return export_tissue_translator(synth_run, folder, means)


def run_routes(out_dir: str | Path, settings: dict, *, seed: int = 0, device: str = "cpu",
               translators: dict[str, str] | None = None, tta: bool = False) -> dict:
    """Train both segmenters for ``seed`` and score every route; returns (and writes) the results
    (``results.json``; with ``tta`` both segmenters apply test-time augmentation: ``results_tta.json``)."""
    from medgen.data.phantoms import label_names
    from medgen.inference.chain import load_chain_translator, segment_mr_volume
    from medgen.io.readers import read_volume
    from medgen.metrics.segmentation import per_label_scores
    from medgen.models.segmenters import load_segmenter

    out_dir = Path(out_dir)
    names = label_names()
    base = 1000 * seed
    train = [_write(out_dir / "data" / "train", base + i, settings) for i in range(settings["n_train"])]
    test = [_write(out_dir / "data" / "test", base + 500 + i, settings, ("t1", "t2")) for i in range(settings["n_test"])]
    images, labels = [c["ct"] for c in train], [c["labels"] for c in train]
    timings = {}
    t0 = time.perf_counter()
    seg = load_segmenter(_train("segmenter/ct_unet", settings["seg_overrides"] + [f"train.seed={seed}"],
                                settings["seg_steps"], images, labels, out_dir / "ct_segmenter", names, device),
                         tta=tta)
    timings["ct_segmenter_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    synth_run = _train("segmenter/synth_unet", settings["synth_overrides"] + [f"train.seed={seed}"],
                       settings["synth_steps"], images, labels, out_dir / "synth_segmenter", names, device)
    synth = load_segmenter(synth_run, tta=tta)
    timings["synth_segmenter_s"] = time.perf_counter() - t1
    translators = {"painted_chain": str(_tissue_translator(synth_run, settings, images, labels, names)),
                   **(translators or {})}
    chains = {name: load_chain_translator(ref) for name, ref in translators.items()}

    scores: dict[str, dict[str, list[float]]] = {}

    def score(route: str, mask, truth) -> None:
        s = per_label_scores(mask.array, truth.array, pred_names=mask.meta.get("label_names", seg.label_names),
                             ref_names=names, spacing=truth.spacing, compute_hd95=False)
        for organ, v in s.items():
            scores.setdefault(route, {}).setdefault(organ, []).append(v["dice"])

    t2 = time.perf_counter()
    for case in test:
        truth = read_volume(case["labels"], kind="label")
        ct = read_volume(case["ct"])
        score("upper_bound", _named(seg.segment(ct), seg), truth)
        score("direct_on_ct", _named(synth.segment(ct), synth), truth)
        for w in ("t1", "t2"):
            mr = read_volume(case[f"mr_{w}"])
            score(f"direct/{w}", segment_mr_volume(mr, translator="none", segmenter=synth, device=device).mask, truth)
            for baseline in ("none", "histogram"):
                score(f"{baseline}/{w}", segment_mr_volume(mr, translator=baseline, segmenter=seg, device=device).mask,
                      truth)
            for name, tr in chains.items():
                score(f"{name}/{w}", segment_mr_volume(mr, translator=tr, segmenter=seg, device=device).mask, truth)
    timings["evaluate_s"] = time.perf_counter() - t2

    organs = [o for o in ORGANS if o in scores["upper_bound"]]
    table = {r: {o: round(float(np.mean(v[o])), 4) for o in organs if o in v} for r, v in scores.items()}
    for r in table:
        table[r]["mean"] = round(float(np.mean([table[r].get(o, 0.0) for o in organs])), 4)
    ub = max(table["upper_bound"]["mean"], 1e-9)
    results = {"seed": seed, "tta": tta, "settings": {k: v for k, v in settings.items() if not k.endswith("overrides")},
               "dice": table, "share_of_upper_bound": {r: round(t["mean"] / ub, 3) for r, t in table.items()},
               "organs": organs, "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    name = "results_tta" if tta else "results"
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=1))
    plot_routes(results, out_dir / ("routes_tta.png" if tta else "routes.png"))
    return results


def plot_routes(results: dict, path: Path) -> None:
    """One figure of the table: mean Dice of every route, T1 and T2 side by side, the upper bound as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dice = results["dice"]
    routes = sorted({r.split("/")[0] for r in dice if "/" in r})
    fig, ax = plt.subplots(figsize=(1.3 * len(routes) + 2, 3.2))
    for k, w in enumerate(("t1", "t2")):
        values = [dice.get(f"{r}/{w}", {}).get("mean", 0.0) for r in routes]
        ax.bar(np.arange(len(routes)) + 0.4 * k - 0.2, values, width=0.4, label=f"{w.upper()} MR")
    ub = dice["upper_bound"]["mean"]
    ax.axhline(ub, color="k", lw=1, label=f"upper bound (CT) {ub:.2f}")
    ax.axhline(0.8 * ub, color="k", lw=1, ls="--", label="80 % of it")
    ax.set_xticks(range(len(routes)), routes)
    ax.set_ylabel("mean Dice (8 organs)")
    ax.set_title(f"routes on held-out phantom MRs, seed {results['seed']}")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _named(mask, segmenter):
    mask.meta["label_names"] = segmenter.label_names
    return mask


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="working folder (resumes what is already there)")
    parser.add_argument("--seed", type=int, default=0, help="phantom anatomies and training seed")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--synth-steps", type=int, default=None)
    parser.add_argument("--seg-steps", type=int, default=None)
    parser.add_argument("--synth-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--translator", action="append", default=[], metavar="NAME=RUN",
                        help="also score the chain through this translator (repeatable)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tta", action="store_true",
                        help="score with test-time augmentation (segment-mr --tta); reuses the trained models in --out")
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    settings = dict(QUICK if args.quick else FULL)
    settings["synth_overrides"] = settings["synth_overrides"] + args.synth_set
    if args.synth_steps:
        settings["synth_steps"] = args.synth_steps
    if args.seg_steps:
        settings["seg_steps"] = args.seg_steps
    translators = dict(t.split("=", 1) for t in args.translator)
    print(json.dumps(run_routes(args.out, settings, seed=args.seed, device=args.device, translators=translators,
                                tta=args.tta), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
