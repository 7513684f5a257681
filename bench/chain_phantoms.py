"""Acceptance experiment: CT segmenter on MR through synthetic CT, on phantoms. Prints JSON.

1. Train a CT segmenter on phantom CTs + labels (seeds ``seg_seeds``).
2. Train an unpaired MR->CT translator on phantom MRs and CTs from OTHER seeds (MR and CT from
   different phantoms too, so nothing is paired).
3. Segment held-out phantom MRs four ways and score per-organ Dice against their true labels:
   ``chain`` (MR -> translator -> segmenter), ``none`` (segmenter on the normalised MR),
   ``histogram`` (segmenter on the MR histogram-matched to the segmenter's CT histogram) and
   ``upper_bound`` (segmenter on the test phantoms' true CTs).

Usage::

    python bench/chain_phantoms.py --out /tmp/chain_bench                     # full (~1 h on 2 cores)
    python bench/chain_phantoms.py --out /tmp/chain_quick --quick             # small (~2 min)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.chain_phantoms")

ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "vertebrae", "aorta", "muscle", "fat")

FULL = {
    "shape": (64, 64, 32), "spacing": (3.0, 3.0, 4.5), "seg_seeds": list(range(6)), "tr_mr_seeds": [100, 101, 102],
    "tr_ct_seeds": [103, 104, 105], "test_seeds": [200, 201, 202], "mr_weighting": "t1",
    "seg_steps": 300, "tr_steps": 300,
    "seg_overrides": ["data.spacing=[3,3,4.5]", "data.patch_size=[64,64,32]", "network.channels=[8,16,32,64]",
                      "data.batch_size=1", "train.validate_every=100", "train.checkpoint_every=50",
                      "train.precision=auto", "train.lr=0.01"],
    "tr_overrides": ["preprocess.mr.spacing=[3,3,4.5]", "preprocess.ct.spacing=[3,3,4.5]", "model.features=12",
                     "model.n_blocks=3", "data.patch_size=[64,64]", "model.disc_features=12",
                     "train.validate_every=1000", "train.checkpoint_every=50", "train.log_every=50"],
}
QUICK = {
    "shape": (48, 48, 24), "spacing": (4.0, 4.0, 6.0), "seg_seeds": [0, 1, 2], "tr_mr_seeds": [100, 101],
    "tr_ct_seeds": [103, 104], "test_seeds": [200], "mr_weighting": "t1",
    "seg_steps": 120, "tr_steps": 200,
    "seg_overrides": ["data.spacing=[4,4,6]", "data.patch_size=[32,32,16]", "network.channels=[8,16,32]",
                      "network.strides=[2,2]", "train.validate_every=1000", "train.checkpoint_every=1000",
                      "train.lr=0.005", "data.batch_size=2"],
    "tr_overrides": ["preprocess.mr.spacing=[4,4,6]", "preprocess.ct.spacing=[4,4,6]", "model.features=8",
                     "model.n_blocks=2", "data.patch_size=[48,48]", "model.disc_features=8",
                     "train.validate_every=1000", "train.checkpoint_every=1000", "train.log_every=50"],
}


def _write_cases(folder: Path, seeds, settings, *, kinds=("ct", "mr", "labels")) -> dict[str, list[Path]]:
    from medgen.data.phantoms import make_phantom
    from medgen.io.volume import Volume
    from medgen.io.writers import write_volume
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {k: [] for k in kinds}
    for seed in seeds:
        p = make_phantom(seed, shape=tuple(settings["shape"]), spacing=tuple(settings["spacing"]),
                         mr_weighting=settings["mr_weighting"])
        arrays = {"ct": np.rint(p.ct).astype(np.int16), "mr": p.mr, "labels": p.labels}
        for k in kinds:
            path = folder / f"phantom{seed}_{k}.nii.gz"
            if not path.exists():
                write_volume(Volume(arrays[k], p.affine), path)
            out[k].append(path)
    return out


def run_experiment(out_dir: str | Path, settings: dict, *, device: str = "cpu", mlflow: bool = False,
                   methods=("chain", "none", "histogram", "upper_bound")) -> dict:
    """Run the whole experiment in ``out_dir``; returns the results dict (also written as JSON)."""
    from medgen.config import load_config
    from medgen.data.phantoms import label_names
    from medgen.inference.chain import load_chain_translator, segment_mr_volume
    from medgen.io.readers import read_volume
    from medgen.metrics.image import mae
    from medgen.metrics.segmentation import per_label_scores
    from medgen.models.segmenters import load_segmenter
    from medgen.pipelines.train_segmenter import train_segmenter
    from medgen.training.segmenter import SegmenterConfig

    out_dir = Path(out_dir)
    names = label_names()
    t0 = time.perf_counter()
    seg_data = _write_cases(out_dir / "data" / "seg", settings["seg_seeds"], settings, kinds=("ct", "labels"))
    tr_mr = _write_cases(out_dir / "data" / "tr_mr", settings["tr_mr_seeds"], settings, kinds=("mr",))["mr"]
    tr_ct = _write_cases(out_dir / "data" / "tr_ct", settings["tr_ct_seeds"], settings, kinds=("ct",))["ct"]
    test = _write_cases(out_dir / "data" / "test", settings["test_seeds"], settings)
    timings = {"data_s": time.perf_counter() - t0}

    seg_run = out_dir / "segmenter"
    t1 = time.perf_counter()
    if not (seg_run / "bundle" / "medgen.json").exists():
        cfg = load_config(None, SegmenterConfig, default="segmenter/ct_unet", overrides=settings["seg_overrides"])
        train_segmenter(cfg, images=seg_data["ct"], labels=seg_data["labels"], output=seg_run, label_names=names,
                        include=settings.get("include"), max_steps=settings["seg_steps"], resume=(seg_run / "checkpoints").exists(), device=device,
                        mlflow=mlflow)
    timings["segmenter_train_s"] = time.perf_counter() - t1

    translator = None
    if "chain" in methods:
        from medgen.pipelines.train_translator import train_translator
        from medgen.training.translator import TranslatorConfig
        tr_run = out_dir / "translator"
        t2 = time.perf_counter()
        if not (tr_run / "bundle" / "medgen.json").exists():
            cfg = load_config(None, TranslatorConfig, default="translator/cyclegan_25d",
                              overrides=settings["tr_overrides"])
            train_translator(cfg, mr_inputs=tr_mr, ct_inputs=tr_ct, run_dir=tr_run, max_steps=settings["tr_steps"],
                             resume=(tr_run / "checkpoints").exists(), device=device, mlflow=mlflow)
        timings["translator_train_s"] = time.perf_counter() - t2
        translator = load_chain_translator(tr_run)

    segmenter = load_segmenter(seg_run)
    per_method: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    sct_mae = []
    t3 = time.perf_counter()
    for ct_path, mr_path, lab_path in zip(test["ct"], test["mr"], test["labels"]):
        truth = read_volume(lab_path, kind="label")
        mr = read_volume(mr_path)
        ct = read_volume(ct_path)
        for method in methods:
            if method == "upper_bound":
                mask = segmenter.segment(ct, device=device, precision="fp32")
            else:
                trans = translator if method == "chain" else method
                result = segment_mr_volume(mr, translator=trans, segmenter=segmenter, device=device, precision="fp32")
                mask = result.mask
                if method == "chain":
                    body = truth.array > 0
                    sct_mae.append(mae(result.sct.array, ct.array, body))
            scores = per_label_scores(mask.array, truth.array, pred_names=segmenter.label_names, ref_names=names,
                                      spacing=truth.spacing, compute_hd95=False)
            for organ, s in scores.items():
                per_method[method].setdefault(organ, []).append(s["dice"])
    timings["evaluate_s"] = time.perf_counter() - t3

    organs = [o for o in ORGANS if o in per_method[methods[0]]] + \
        [o for o in per_method[methods[0]] if o not in ORGANS and o not in ("soft_tissue", "bowel_gas")]
    table = {m: {o: round(float(np.mean(per_method[m][o])), 4) for o in organs} for m in methods}
    for m in methods:
        table[m]["mean"] = round(float(np.mean([table[m][o] for o in organs])), 4)
    results = {
        "settings": {k: v for k, v in settings.items() if not k.endswith("overrides")},
        "dice": table,
        "organs": organs,
        "n_test_cases": len(test["mr"]),
        "chain_over_upper_bound": round(table["chain"]["mean"] / max(table["upper_bound"]["mean"], 1e-9), 4)
        if "chain" in table and "upper_bound" in table else None,
        "sct_mae_hu_in_body": round(float(np.mean(sct_mae)), 1) if sct_mae else None,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="working folder (resumes what is already there)")
    parser.add_argument("--quick", action="store_true", help="the small fast configuration (as in the tests)")
    parser.add_argument("--seg-steps", type=int, default=None)
    parser.add_argument("--tr-steps", type=int, default=None)
    parser.add_argument("--mr-weighting", default=None, choices=("t1", "t2"))
    parser.add_argument("--tr-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra translator config override (repeatable), e.g. data.intensity_balance=0.5")
    parser.add_argument("--seg-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra segmenter config override (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mlflow", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    settings = dict(QUICK if args.quick else FULL)
    if args.seg_steps:
        settings["seg_steps"] = args.seg_steps
    if args.tr_steps:
        settings["tr_steps"] = args.tr_steps
    if args.mr_weighting:
        settings["mr_weighting"] = args.mr_weighting
    settings["tr_overrides"] = settings["tr_overrides"] + args.tr_set
    settings["seg_overrides"] = settings["seg_overrides"] + args.seg_set
    results = run_experiment(args.out, settings, device=args.device, mlflow=args.mlflow)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
