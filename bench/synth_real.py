"""Real abdomen, synthesis route: a contrast-agnostic segmenter from two CTs, applied to a real MR.

Uses the public sample data (``$MEDGEN_SAMPLE_DATA``, default ``../shared/data``; every label map
there is a TotalSegmentator *prediction*, not manual ground truth). No MR is used for training.

1. Train ``segmenter/synth_unet`` on the two TotalSegmentator example CTs and their label maps
   (the structures of ``bench/chain_real.py``), i.e. on renderings of their anatomy (labels +
   HU tissue bands) with random contrast, resolution, bias and noise (plus some real CT patches).
2. Its fit on the two training CTs themselves (Dice vs the TotalSegmentator maps).
3. ``medgen segment-mr --translator none --agreement`` on ``example_mr_sm`` (stored LPS, another
   subject): mask on the MR's exact grid (header and reader checks), QC picture, per-label
   volumes and RAS centroids with anatomical-plausibility checks, the reliability flag, and an
   axial montage to look at.

Usage (1 torch thread)::

    OMP_NUM_THREADS=1 python bench/synth_real.py --out /tmp/synth_real [--steps 800] > /tmp/synth_real.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from chain_real import INCLUDE, _axial_montage, _data_dir, _dice_table, _grid, _label_stats, _plausibility, _same

log = logging.getLogger("bench.synth_real")

OVERRIDES = ["data.spacing=[3,3,3]", "data.patch_size=[64,64,32]", "network.channels=[8,16,32,64]",
             "train.precision=fp32", "train.lr=0.004", "train.validate_every=100000", "train.checkpoint_every=100",
             "train.log_every=25"]


def run(out: Path, data: Path, steps: int, overrides: list[str], device: str) -> dict:
    from medgen.config import load_config
    from medgen.io.readers import read_volume
    from medgen.models.segmenters import load_segmenter
    from medgen.pipelines.segment_mr import ChainOptions, segment_mr
    from medgen.pipelines.train_segmenter import train_segmenter
    from medgen.data.label_names import read_label_names
    from medgen.training.segmenter import SegmenterConfig, plan_labels

    ts = data / "totalsegmentator"
    names_ref = f"{ts / 'class_map_total_and_total_mr.json'}#total"
    ct_images = [ts / "example_ct.nii.gz", ts / "example_ct_dicom"]
    ct_labels = [ts / "example_seg_fast_force_split.nii.gz", ts / "example_seg_dicom.nii.gz"]
    mr_path = ts / "example_mr_sm.nii.gz"
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "synth_segmenter"
    result: dict = {"labels_note": "reference labels are TotalSegmentator predictions, not manual ground truth",
                    "overrides": OVERRIDES + overrides, "steps": steps}
    t0 = time.perf_counter()
    if not (run_dir / "bundle" / "medgen.json").exists():
        cfg = load_config(None, SegmenterConfig, default="segmenter/synth_unet", overrides=OVERRIDES + overrides)
        train_segmenter(cfg, images=ct_images, labels=ct_labels, output=run_dir, label_names=names_ref,
                        include=INCLUDE, max_steps=steps, resume=(run_dir / "checkpoints").exists(), device=device,
                        mlflow=False)
    result["train_s"] = round(time.perf_counter() - t0, 1)
    plan = plan_labels(read_label_names(names_ref), INCLUDE)
    segmenter = load_segmenter(run_dir)
    result["fit_dice_on_training_cts"] = _dice_table(segmenter, {
        "example_ct": (ct_images[0], ct_labels[0]), "example_ct_dicom": (ct_images[1], ct_labels[1])}, plan, device)

    mask_path = out / "segment" / "mr_sm_direct.nii.gz"
    options = ChainOptions(translator="none", segmenter=str(run_dir), device=device, precision="fp32",
                           overwrite=True, agreement=True)
    report = segment_mr([mr_path], mask_path, options, qc="auto")[0]
    mr = read_volume(mr_path)
    mask = read_volume(mask_path, kind="label")
    mr_shape, mr_affine = _grid(mr_path)
    shape, affine = _grid(mask_path)
    names = {int(k): v for k, v in json.loads(mask_path.with_name("mr_sm_direct.labels.json").read_text())
             ["label_names"].items()}
    stats = _label_stats(mask, names)
    result["mr_sm"] = {
        "outputs": report.outputs, "agreement": report.agreement,
        "grid": {"header_shape_equal": shape == mr_shape, "header_affine_equal": _same(affine, mr_affine),
                 "reader_grid_equal": mask.shape == mr.shape and _same(mask.affine, mr.affine)},
        "labels": stats, "plausibility": _plausibility(stats),
        "labelled_fraction": round(float(np.mean(mask.array > 0)), 4)}
    result["montage_png"] = _axial_montage(out / "segment" / "compare_mr_sm_direct.png",
                                           [("MR", mr, None, None), ("direct (synth segmenter)", mr, mask, None)],
                                           plan.names, "example_mr_sm: contrast-agnostic segmenter, no translator")
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default=None, help="sample data folder (default: $MEDGEN_SAMPLE_DATA or ../shared/data)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="segmenter override")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    print(json.dumps(run(Path(args.out), _data_dir(args.data), args.steps, args.set, args.device), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
