"""What a thin scan and a coarse network cost a segmenter, measured on a labelled CT. Prints JSON.

Real MR is often a slab: ``example_mr_sm`` is 20 slices of 3 mm (60 mm), shorter than the 96 mm
window of ``segmenter/synth_unet`` (16 slices of 6 mm) or ``segmenter/ct_unet`` (32 of 3 mm).
There is no reference segmentation of that MR, so this bench cuts slabs of the same kind out of
``example_ct`` (TotalSegmentator's example CT, 112 slices of 3 mm; its label map is a
TotalSegmentator *prediction*) and segments each slab alone, three ways, with the building
blocks ``medgen segment`` uses (:mod:`medgen.inference.segment`):

* ``air``: the slab padded with air to one window along the body axis, the class arg-max mapped
  back by nearest neighbour (what medgen did before session 21);
* ``edge``: the slab extended by repeating its end slices
  (:func:`~medgen.inference.segment.extend_along_body_axis`), arg-max mapped by nearest neighbour;
* ``edge_interpolated``: extended, and the class scores interpolated onto the CT grid before
  the arg-max (:func:`~medgen.inference.segment.argmax_on_grid`; what ``medgen segment`` does now).

The reference row ``whole`` segments the whole CT the current way and scores the same slices.
Dice is the mean over structures with more than 5 ml inside the slab, averaged over slabs
starting every 10 slices from slice 40 (the abdomen; below it the slabs hold few structures).

Usage (1 torch thread; about a minute per model and thickness)::

    OMP_NUM_THREADS=1 python bench/thin_scans.py --segmenter RUN [RUN ...] [--slices 10 20 30 40]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from chain_real import INCLUDE, _data_dir, _remap

MIN_ML = 5.0


def _labels(segmenter, ct, *, extend: bool, interpolate: bool) -> np.ndarray:
    """``segmenter``'s label ids on ``ct``'s grid, by the steps named (see the module docstring)."""
    from medgen.inference.segment import argmax_on_grid, extend_along_body_axis, sliding_window_scores
    from medgen.io.geometry import resample_like
    from medgen.models.segmenters import NetworkSegmenter, _map_channels_to_ids
    spec = segmenter.spec
    work = NetworkSegmenter.prepare_image(ct, spec)
    if extend:
        work = extend_along_body_axis(work, spec.patch_size)
    pad = float(spec.scale(np.array([-1024.0]))[0])
    scores = sliding_window_scores(segmenter.network, work.array, patch_size=spec.patch_size, overlap=spec.overlap,
                                   pad_value=pad)
    if interpolate:
        labels = argmax_on_grid(scores, work.affine, ct.affine, ct.shape)
    else:
        coarse = work.with_array(scores.argmax(0).numpy().astype(np.uint8))
        labels = resample_like(coarse, ct, order=0).array
    return _map_channels_to_ids(labels, segmenter.label_names)


def _mean_dice(pred: np.ndarray, ref: np.ndarray, ids, voxel_ml: float) -> tuple[float, int]:
    scores = []
    for i in ids:
        truth = ref == i
        if truth.sum() * voxel_ml > MIN_ML:
            mask = pred == i
            scores.append(2.0 * (mask & truth).sum() / (mask.sum() + truth.sum()))
    return (float(np.mean(scores)) if scores else float("nan")), len(scores)


def run(segmenter_ref: str, data: Path, thicknesses: list[int]) -> dict:
    from medgen.data.label_names import read_label_names
    from medgen.io.readers import read_volume
    from medgen.io.volume import Volume
    from medgen.models.segmenters import load_segmenter
    from medgen.training.segmenter import plan_labels

    ts = data / "totalsegmentator"
    plan = plan_labels(read_label_names(f"{ts / 'class_map_total_and_total_mr.json'}#total"), INCLUDE)
    segmenter = load_segmenter(segmenter_ref)
    ct = read_volume(ts / "example_ct.nii.gz")
    ref = _remap(read_volume(ts / "example_seg_fast_force_split.nii.gz", kind="label"), plan).array
    ids = [i for i in plan.names if i]
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    whole = _labels(segmenter, ct, extend=True, interpolate=True)
    out = {"segmenter": str(segmenter_ref), "spacing": list(segmenter.spec.spacing or []),
           "window": list(segmenter.spec.patch_size), "by_thickness": {}}
    ways = {"air": (False, False), "edge": (True, False), "edge_interpolated": (True, True)}
    for n in thicknesses:
        rows = {name: [] for name in ("whole", *ways)}
        for z0 in range(40, ct.shape[2] - n + 1, 10):
            affine = ct.affine.copy()
            affine[:3, 3] = ct.affine[:3, :3] @ np.array([0.0, 0.0, z0]) + ct.affine[:3, 3]
            slab = Volume(ct.array[:, :, z0:z0 + n].copy(), affine)
            truth = ref[:, :, z0:z0 + n]
            rows["whole"].append(_mean_dice(whole[:, :, z0:z0 + n], truth, ids, voxel_ml)[0])
            for name, (extend, interpolate) in ways.items():
                rows[name].append(_mean_dice(_labels(segmenter, slab, extend=extend, interpolate=interpolate),
                                             truth, ids, voxel_ml)[0])
        out["by_thickness"][f"{n}_slices_{n * ct.spacing[2]:g}_mm"] = {
            "slabs": len(rows["whole"]), **{k: round(float(np.nanmean(v)), 3) for k, v in rows.items()}}
        print(json.dumps({segmenter_ref: {n: out["by_thickness"]}}), file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segmenter", nargs="+", required=True, help="medgen segmenter run / bundle dirs")
    parser.add_argument("--slices", nargs="+", type=int, default=[10, 20, 30, 40], help="slab thicknesses (slices)")
    parser.add_argument("--data", help="sample data folder (default: $MEDGEN_SAMPLE_DATA or ../shared/data)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    data = _data_dir(args.data)
    print(json.dumps([run(ref, data, args.slices) for ref in args.segmenter], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
