"""Does a shipped segmenter recipe learn from few CTs within its default length? Prints JSON.

Issue 17 part 4: with two to five labelled CTs the shipped segmenter configs must train to a good
model in their default number of steps on a 2-core CPU.

``--data real`` trains on the two TotalSegmentator example CTs (``example_ct`` with
``example_seg_fast_force_split``; the ``example_ct_dicom`` series with ``example_seg_dicom``,
matched in world coordinates) on the 8 structures the issue names (liver, spleen, both kidneys,
stomach, aorta, both autochthon muscles) and scores Dice on those same training CTs (a fit
measure: no held-out labelled CT exists in the samples). The labels are TotalSegmentator
*predictions*, not manual ground truth.

``--data phantom`` trains on ``--n-train`` phantom CTs and scores ``--n-test`` held-out phantom CTs
(all phantom labels).

Also records the training time, seconds per step and the fit curve the trainer logged.

Usage::

    OMP_NUM_THREADS=2 python bench/segmenter_fit.py --data real --out /tmp/fit_real [--set KEY=VALUE ...]
    OMP_NUM_THREADS=2 python bench/segmenter_fit.py --data phantom --out /tmp/fit_ph --n-train 3
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from chain_real import _data_dir, _dice_table

log = logging.getLogger("bench.segmenter_fit")

STRUCTURES = ["liver", "spleen", "kidney_left", "kidney_right", "stomach", "aorta", "autochthon_left",
              "autochthon_right"]
PHANTOM_GRID = {"shape": (128, 104, 48), "spacing": (3.0, 3.0, 4.0)}


def _real_cases(root: Path) -> tuple[list, list, str, list[str] | None]:
    ts = root / "totalsegmentator"
    images = [ts / "example_ct.nii.gz", ts / "example_ct_dicom"]
    labels = [ts / "example_seg_fast_force_split.nii.gz", ts / "example_seg_dicom.nii.gz"]
    return images, labels, f"{ts / 'class_map_total_and_total_mr.json'}#total", STRUCTURES


def _phantom_cases(folder: Path, seeds: list[int]) -> tuple[list, list]:
    from medgen.data.phantoms import make_phantom
    from medgen.io.volume import Volume
    from medgen.io.writers import write_volume
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for seed in seeds:
        ct, lab = folder / f"phantom{seed}_ct.nii.gz", folder / f"phantom{seed}_labels.nii.gz"
        if not (ct.exists() and lab.exists()):
            p = make_phantom(seed, shape=PHANTOM_GRID["shape"], spacing=PHANTOM_GRID["spacing"])
            write_volume(Volume(np.rint(p.ct).astype(np.int16), p.affine), ct)
            write_volume(Volume(p.labels, p.affine), lab)
        images.append(ct)
        labels.append(lab)
    return images, labels


def run(args) -> dict:
    import torch

    from medgen.config import load_config
    from medgen.data.phantoms import LABEL_NAMES
    from medgen.models.segmenters import load_segmenter
    from medgen.pipelines.train_segmenter import train_segmenter
    from medgen.training.loop import read_history
    from medgen.data.label_names import read_label_names
    from medgen.training.segmenter import SegmenterConfig, plan_labels

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.data == "real":
        images, labels, names_ref, include = _real_cases(_data_dir(args.sample_data))
        test_images, test_labels = images, labels
    else:
        images, labels = _phantom_cases(out / "phantoms", list(range(args.n_train)))
        test_images, test_labels = _phantom_cases(out / "phantoms", list(range(100, 100 + args.n_test)))
        names_ref, include = None, None
        names_file = out / "phantom_label_names.json"
        names_file.write_text(json.dumps({str(k): v for k, v in LABEL_NAMES.items()}))
        names_ref = str(names_file)
    config = load_config(args.config, SegmenterConfig, default="segmenter/ct_unet", overrides=args.set)
    run_dir = out / "run"
    t0 = time.perf_counter()
    train_segmenter(config, images=images, labels=labels, output=run_dir, label_names=names_ref, include=include,
                    max_steps=args.steps, resume=(run_dir / "checkpoints").exists(), device="cpu", mlflow=False)
    train_s = time.perf_counter() - t0
    steps = args.steps or config.train.steps
    plan = plan_labels(read_label_names(names_ref), include)
    segmenter = load_segmenter(run_dir)
    curve = [{k: round(v, 3) for k, v in row.items() if k.endswith("/mean") or k == "step"}
             for row in read_history(run_dir) if row.get("phase") == "val"]
    dice = _dice_table(segmenter, {Path(str(i)).name: (i, lab) for i, lab in zip(test_images, test_labels)}, plan,
                       "cpu")
    means = [t["mean_present"] for t in dice.values() if t["mean_present"] is not None]
    return {"data": args.data, "config": args.config or "segmenter/ct_unet", "overrides": args.set, "steps": steps,
            "torch_threads": torch.get_num_threads(), "train_s": round(train_s, 1),
            "s_per_step": round(train_s / steps, 3), "scored_on": "training CTs" if args.data == "real" else
            "held-out phantom CTs", "dice": dice, "mean_dice": round(float(np.mean(means)), 3), "fit_curve": curve}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("real", "phantom"), default="real")
    ap.add_argument("--out", required=True)
    ap.add_argument("-c", "--config", default=None, help="segmenter config (default: segmenter/ct_unet)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=None, help="default: the config's train.steps")
    ap.add_argument("--n-train", type=int, default=3)
    ap.add_argument("--n-test", type=int, default=3)
    ap.add_argument("--sample-data", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    print(json.dumps(run(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
