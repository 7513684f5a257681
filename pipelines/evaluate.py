"""Pipeline: compare predictions with references (``medgen evaluate``).

* segmentation: Dice and HD95 per label, matched by label NAME (prediction and reference may
  number organs differently), on the reference's grid;
* translation: MAE (HU), PSNR and SSIM of a synthetic CT against a reference CT, optionally
  inside a mask.

A prediction on another grid is resampled onto the reference grid in world coordinates (nearest
neighbour for labels, linear for images) and the report says so.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np

from medgen.errors import InputError, OutputError
from medgen.io.volume import Volume
from medgen.data.label_names import read_label_names
from medgen.io.atomic import check_output_path, write_text_atomic
from medgen.io.geometry import resample_like
from medgen.io.readers import labels_json_path, read_volume
from medgen.metrics.image import mae, psnr, ssim
from medgen.metrics.segmentation import match_names, per_label_scores

log = logging.getLogger(__name__)


def world_box(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The world (RAS mm) bounding box of a volume's voxels, corners included: (lower, upper)."""
    shape = np.array(volume.shape, float)
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    world = corners @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def check_world_overlap(pred: Volume, ref: Volume) -> None:
    """Refuse a prediction and reference whose volumes do not overlap in world space (Dice would be 0).

    Raises:
        InputError: naming both boxes and the likely causes.
    """
    (plo, phi), (rlo, rhi) = world_box(pred), world_box(ref)
    if np.all(np.minimum(phi, rhi) > np.maximum(plo, rlo)):
        return

    def box(lo, hi):
        return " x ".join(f"{round(a):d}..{round(b):d}" for a, b in zip(lo, hi))

    raise InputError(f"does not overlap the reference {ref.name} in world space (prediction spans {box(plo, phi)} mm, "
                     f"reference {box(rlo, rhi)} mm RAS): every score would be 0", path=pred.name,
                     fix="compare a prediction with the reference of the same scan, or repair the header "
                         "(origin, orientation) of the one that is off")


def _on_grid(pred: Volume, ref: Volume, *, order: int) -> tuple[Volume, bool]:
    if pred.same_grid(ref):
        return pred, False
    check_world_overlap(pred, ref)
    log.info("resampling the prediction (%s, %s) onto the reference grid (%s, %s)", pred.shape, pred.orientation,
             ref.shape, ref.orientation)
    return resample_like(pred, ref, order=order, cval=0.0 if order == 0 else None), True


def load_label_names(ref: str | Path | None, volume_path: str | Path) -> dict[int, str] | None:
    """Names from ``--*-labels`` (JSON id->name, ``FILE#KEY``, or a ``.labels.json`` written by segment-mr),
    else a ``<mask>.labels.json`` beside the volume, else None."""
    if ref is None:
        side = labels_json_path(Path(volume_path))
        if not side.exists():
            return None
        ref = side
    path = Path(str(ref).split("#")[0])
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot be read as JSON ({exc})", path=path) from exc
        if isinstance(data, dict) and isinstance(data.get("label_names"), dict):
            return {int(k): str(v) for k, v in data["label_names"].items()}
    return read_label_names(ref)


def evaluate_segmentation(pred_path, ref_path, *, pred_labels=None, ref_labels=None) -> dict:
    """Per-label Dice/HD95 (by name) plus their means; see the module docstring."""
    pred = read_volume(pred_path, kind="label")
    ref = read_volume(ref_path, kind="label")
    check_world_overlap(pred, ref)
    pred_names = load_label_names(pred_labels, pred_path)
    ref_names = load_label_names(ref_labels, ref_path)
    if ref_names is None and pred_names is None:
        ids = sorted({int(i) for i in np.unique(ref.array)} | {int(i) for i in np.unique(pred.array)})
        ref_names = {i: f"label_{i}" for i in ids}
        log.warning("no label names given: comparing by id")
    pred_names = pred_names or ref_names
    ref_names = ref_names or pred_names
    pred, resampled = _on_grid(pred, ref, order=0)
    scores = per_label_scores(pred.array, ref.array, pred_names=pred_names, ref_names=ref_names, spacing=ref.spacing)
    _, only_pred, only_ref = match_names(pred_names, ref_names)
    dices = [s["dice"] for s in scores.values()]
    hds = [s["hd95"] for s in scores.values() if np.isfinite(s["hd95"])]
    return {"kind": "segmentation", "prediction": str(pred_path), "reference": str(ref_path),
            "resampled_prediction": resampled, "labels": scores,
            "mean_dice": float(np.mean(dices)), "mean_hd95_finite": float(np.mean(hds)) if hds else None,
            "labels_only_in_prediction": only_pred, "labels_only_in_reference": only_ref}


def evaluate_translation(pred_path, ref_path, *, mask_path=None, data_range: float = 2000.0) -> dict:
    """MAE (HU), PSNR and SSIM of a synthetic CT against a reference CT, optionally inside a mask."""
    pred = read_volume(pred_path)
    ref = read_volume(ref_path)
    pred, resampled = _on_grid(pred, ref, order=1)
    mask = None
    if mask_path is not None:
        m, _ = _on_grid(read_volume(mask_path, kind="label"), ref, order=0)
        mask = m.array > 0
        if not mask.any():
            raise InputError("the mask is empty on the reference grid", path=mask_path)
    clip = (-1024.0, 3071.0)  # the HU range scanners store
    p = np.clip(pred.array, *clip)
    r = np.clip(ref.array, *clip)
    return {"kind": "translation", "prediction": str(pred_path), "reference": str(ref_path),
            "mask": None if mask_path is None else str(mask_path), "resampled_prediction": resampled,
            "mae_hu": mae(p, r, mask), "psnr_db": psnr(p, r, mask, data_range=data_range),
            # SSIM's luminance term is not shift invariant: HU near 0 (water) would be penalised for
            # tiny offsets, so it is computed on HU shifted to be non-negative (HU + 1024).
            "ssim": ssim(p - clip[0], r - clip[0], mask, data_range=data_range), "psnr_data_range_hu": data_range,
            "n_voxels": int(mask.sum()) if mask is not None else int(r.size)}


def _jsonable(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def report_text(report: dict, fmt: str) -> str:
    """The report as JSON or CSV text (CSV: one row per label, or one row of image metrics)."""
    if fmt == "json":
        return json.dumps(_jsonable(report), indent=1)
    buf = io.StringIO()
    writer = csv.writer(buf)
    if report["kind"] == "segmentation":
        writer.writerow(["label", "dice", "hd95_mm", "pred_voxels", "ref_voxels"])
        for name, s in report["labels"].items():
            hd = s["hd95"] if np.isfinite(s["hd95"]) else ""
            writer.writerow([name, f"{s['dice']:.4f}", f"{hd:.2f}" if hd != "" else "", s["pred_voxels"], s["ref_voxels"]])
    else:
        writer.writerow(["mae_hu", "psnr_db", "ssim", "n_voxels"])
        writer.writerow([f"{report['mae_hu']:.2f}", f"{report['psnr_db']:.2f}", f"{report['ssim']:.4f}", report["n_voxels"]])
    return buf.getvalue()


def write_report(report: dict, output: str | Path | None, *, overwrite: bool = False) -> str:
    """Write to ``output`` (``.json`` or ``.csv``) or return the JSON text for stdout."""
    if output is None:
        return report_text(report, "json")
    output = Path(output)
    fmt = output.suffix.lower().lstrip(".")
    if fmt not in ("json", "csv"):
        raise OutputError("has an unsupported extension", path=output, fix="use .json or .csv")
    check_output_path(output, overwrite=overwrite, inputs=(report["prediction"], report["reference"]))
    text = report_text(report, fmt)
    write_text_atomic(output, text)
    return text
