"""Real-data acceptance run of the MR -> synthetic CT -> CT segmenter chain (issue 4). Prints JSON.

Uses the public sample data (``$MEDGEN_SAMPLE_DATA``, default ``../shared/data``). Every label
map there is a TotalSegmentator *prediction*, not manual ground truth; every Dice below is
agreement with those predictions.

1. Train a small CT segmenter on the two TotalSegmentator example CTs (``example_ct`` with
   ``example_seg_fast_force_split``, and the ``example_ct_dicom`` series with
   ``example_seg_dicom``, whose voxel order differs from the series': medgen matches them in
   world coordinates), on liver, spleen, kidneys, stomach, pancreas, aorta, IVC, vertebrae
   (+ sacrum), autochthon and iliopsoas, at 3 mm.
2. Train an unpaired MR -> CT translator (2.5D CycleGAN) with ``example_mr_sm`` (stored LPS, no
   labels, another subject) as the only MR and the two CTs.
3. Segment ``example_mr_sm`` three ways through ``medgen.pipelines.segment_mr`` (what ``medgen
   segment-mr`` runs): ``chain`` (the translator), ``none`` (segmenter on the normalised MR) and
   ``histogram`` (MR histogram-matched to the segmenter's CT histogram); the MRI-DIR porcine T2
   DICOM subset the same three ways, with a DICOM SEG. Writes NIfTI masks, synthetic CTs and QC
   PNGs under ``OUT/segment``.
4. Records: training times, output paths, grid checks (mask shape + affine == the input MR's,
   in the stored NIfTI header and through medgen's reader; the DICOM SEG read back with medgen's
   reader == the NIfTI mask voxel for voxel), per-label voxel counts / volumes (ml) / RAS
   centroids per method with simple anatomical-plausibility checks, and the segmenter's Dice on
   its own training CTs and on ``example_ct_sm`` + ``example_seg`` (see the note in the JSON:
   that CT is a crop of ``example_ct``, not a held-out scan).

Resumable: re-running the same command skips finished training; with larger ``--seg-steps`` /
``--tr-steps`` it continues from the last checkpoint (the translator's LR schedule follows the
new step count). Segmentation outputs are rewritten on every run.

Usage (1 torch thread; about 20 min of training on one CPU core with the defaults)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python bench/chain_real.py --out /tmp/chain_real \\
        [--seg-steps 1600] [--tr-steps 2000] > /tmp/chain_real.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.chain_real")

INCLUDE = ["liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas", "aorta", "inferior_vena_cava",
           "vertebrae=vertebrae_*|sacrum", "autochthon=autochthon_*", "iliopsoas=iliopsoas_*"]
SEG_OVERRIDES = ["data.spacing=[3,3,3]", "data.patch_size=[64,64,32]", "network.channels=[8,16,32,64]",
                 "train.precision=auto", "train.lr=0.004", "train.validate_every=100000", "train.checkpoint_every=50",
                 "train.log_every=25"]
TR_OVERRIDES = ["preprocess.mr.spacing=[3,3,3]", "preprocess.ct.spacing=[3,3,3]", "model.features=16",
                "model.n_blocks=4", "data.patch_size=[64,64]", "model.disc_features=16", "train.checkpoint_every=50",
                "train.validate_every=100000", "train.log_every=25"]
METHODS = ("chain", "none", "histogram")
SOFT_TISSUE = (-160.0, 240.0)  # HU display window (level 40, width 400)


def _data_dir(arg: str | None) -> Path:
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    root = Path(arg or os.environ.get("MEDGEN_SAMPLE_DATA") or default)
    if not (root / "totalsegmentator" / "example_mr_sm.nii.gz").exists():
        raise SystemExit(f"{root}: no sample data (totalsegmentator/example_mr_sm.nii.gz). "
                         "Fix: pass --data or set MEDGEN_SAMPLE_DATA")
    return root.resolve()


def _train(kind: str, run_dir: Path, steps: int, train_fn) -> dict:
    """Train (or continue) up to ``steps``; skip when the bundle exists at that step already."""
    from medgen.training.checkpoint import latest_checkpoint_step
    done = latest_checkpoint_step(run_dir / "checkpoints")
    info = {"run_dir": str(run_dir), "steps": steps, "steps_before_this_run": done}
    if done >= steps and (run_dir / "bundle" / "medgen.json").exists():
        log.info("%s: already trained to step %d; skipping", kind, done)
        info.update(trained_now=False, train_s=0.0)
    else:
        log.info("%s: training steps %d..%d", kind, done + 1, steps)
        t0 = time.perf_counter()
        train_fn(resume=(run_dir / "checkpoints").exists())
        info.update(trained_now=True, train_s=round(time.perf_counter() - t0, 1))
        times = run_dir / "train_times.jsonl"  # cumulative across resumed runs
        with times.open("a") as fh:
            fh.write(json.dumps({"from": done, "to": steps, "seconds": info["train_s"]}) + "\n")
    rows = [json.loads(line) for line in (run_dir / "train_times.jsonl").read_text().splitlines() if line.strip()] \
        if (run_dir / "train_times.jsonl").exists() else []
    info["train_s_total_all_runs"] = round(sum(r["seconds"] for r in rows), 1)
    hist = _history(run_dir)
    if hist:
        info["last_train_metrics"] = hist
    return info


def _history(run_dir: Path) -> dict:
    """The last training row of the run's metrics history (rounded), or {}."""
    from medgen.training.loop import read_history
    last = next((row for row in reversed(read_history(run_dir)) if row.get("phase") == "train"), {})
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in last.items() if k != "phase"}


def _remap(label, plan):
    """The label map in the segmenter's classes (exactly as its training cases were remapped)."""
    return label.with_array(plan.apply(label.array, label.name))


def _dice_table(segmenter, pairs: dict, plan, device: str) -> dict:
    from medgen.io.geometry import resample_like
    from medgen.io.readers import read_volume
    from medgen.metrics.segmentation import per_label_scores
    out = {}
    for case, (img_path, lab_path) in pairs.items():
        image = read_volume(img_path)
        label = read_volume(lab_path, kind="label")
        if label.shape != image.shape or not np.allclose(label.affine, image.affine, atol=1e-3):
            label = resample_like(label, image, order=0, cval=0)  # world coordinates, never array-to-array
        ref = _remap(label, plan)
        pred = segmenter.segment(image, device=device, precision="fp32")
        scores = per_label_scores(pred.array, ref.array, pred_names=segmenter.label_names, ref_names=plan.names,
                                  spacing=image.spacing, compute_hd95=False)
        present = {plan.names[int(i)] for i in np.unique(ref.array) if i}
        table = {k: round(float(v["dice"]), 3) for k, v in scores.items() if k in present}
        table["mean_present"] = round(float(np.mean(list(table.values()))), 3) if table else None
        out[case] = table
    return out


def _same(a, b) -> bool:
    return bool(np.allclose(a, b, atol=1e-4))


def _grid(path) -> tuple[list[int], np.ndarray]:
    import nibabel as nib
    img = nib.load(str(path))
    return list(img.shape[:3]), img.affine


def _label_stats(mask, names: dict[int, str]) -> dict:
    vox_ml = float(abs(np.linalg.det(mask.affine[:3, :3]))) / 1000.0
    out = {}
    ids, counts = np.unique(mask.array, return_counts=True)
    for i, n in zip(ids, counts):
        if i == 0:
            continue
        ijk = np.argwhere(mask.array == i).mean(axis=0)
        ras = mask.affine[:3, :3] @ ijk + mask.affine[:3, 3]
        out[names.get(int(i), str(int(i)))] = {"voxels": int(n), "ml": round(float(n) * vox_ml, 1),
                                              "centroid_ras_mm": [round(float(c), 1) for c in ras]}
    return out


def _plausibility(stats: dict) -> dict:
    """Left/right and front/back relations that hold in normal abdominal anatomy.

    Centroids are RAS+ world coordinates: +x towards the patient's right, +y anterior.
    """
    c = {k: v["centroid_ras_mm"] for k, v in stats.items()}
    checks = {}

    def check(name, a, b, axis, sign):
        if a in c and b in c:
            checks[name] = bool(sign * (c[a][axis] - c[b][axis]) > 0)
    check("liver_right_of_spleen", "liver", "spleen", 0, +1)
    check("kidney_right_right_of_kidney_left", "kidney_right", "kidney_left", 0, +1)
    check("aorta_anterior_of_vertebrae", "aorta", "vertebrae", 1, +1)
    check("vertebrae_posterior_of_liver", "vertebrae", "liver", 1, -1)
    check("kidneys_posterior_of_liver", "kidney_right", "liver", 1, -1)
    return checks


def _axial_montage(path: Path, rows: list[tuple[str, object, object, tuple | None]], names: dict[int, str],
                   title: str, n_slices: int = 5) -> str:
    """Rows of axial slices (radiological display, medgen.viz conventions) with a colour legend.

    ``rows``: (row title, image Volume, label Volume or None, HU window or None for a percentile window).
    """
    import matplotlib.pyplot as plt

    from medgen.io.geometry import reorient
    from medgen.viz import label_legend, label_overlay, percentile_window, plane_slice
    depth = reorient(rows[0][1], "RAS").shape[2]
    ks = np.linspace(depth * 0.1, depth * 0.9, n_slices).astype(int)
    fig, axes = plt.subplots(len(rows), n_slices, figsize=(2.4 * n_slices, 2.1 * len(rows) + 1.0), squeeze=False)
    for r, (label, image, overlay, window) in enumerate(rows):
        win = window or percentile_window(image.array)
        for c, k in enumerate(ks):
            ax = axes[r][c]
            ax.axis("off")
            img, aspect = plane_slice(image, "axial", int(k))
            ax.imshow(img, cmap="gray", vmin=win[0], vmax=win[1], aspect=aspect, interpolation="nearest")
            if overlay is not None:
                ov = plane_slice(overlay, "axial", int(k))[0]
                ax.imshow(label_overlay(ov, alpha=0.5), aspect=aspect, interpolation="nearest")
            ax.set_title(f"{label} z={k}" if c == 0 else f"z={k}", fontsize=7)
    label_legend(fig, names, ncol=6)
    fig.suptitle(title + "  (axial, from the feet: patient's right on the viewer's left, anterior up)", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def run(out: Path, data: Path, seg_steps: int, tr_steps: int, device: str, mlflow: bool) -> dict:
    from medgen.config import load_config
    from medgen.io.dicom_seg import read_dicom_seg
    from medgen.io.readers import read_volume
    from medgen.models.segmenters import load_segmenter
    from medgen.pipelines.segment_mr import ChainOptions, segment_mr
    from medgen.pipelines.train_segmenter import train_segmenter
    from medgen.pipelines.train_translator import train_translator
    from medgen.data.label_names import read_label_names
    from medgen.training.segmenter import SegmenterConfig, plan_labels
    from medgen.training.translator import TranslatorConfig

    ts = data / "totalsegmentator"
    names_ref = f"{ts / 'class_map_total_and_total_mr.json'}#total"
    ct_images = [ts / "example_ct.nii.gz", ts / "example_ct_dicom"]
    ct_labels = [ts / "example_seg_fast_force_split.nii.gz", ts / "example_seg_dicom.nii.gz"]
    mr_path = ts / "example_mr_sm.nii.gz"
    mr_dicom = data / "mridir_phantom" / "mr_t2_dicom_subset"
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"data": str(data), "labels_note": "all reference labels are TotalSegmentator predictions, "
                                                      "not manual ground truth",
                    "torch_threads": None, "settings": {"include": INCLUDE, "seg_overrides": SEG_OVERRIDES,
                                                        "tr_overrides": TR_OVERRIDES}}
    import torch
    result["torch_threads"] = torch.get_num_threads()

    seg_run = out / "segmenter"
    seg_cfg = load_config(None, SegmenterConfig, default="segmenter/ct_unet", overrides=SEG_OVERRIDES)
    result["segmenter"] = _train("segmenter", seg_run, seg_steps, lambda resume: train_segmenter(
        seg_cfg, images=ct_images, labels=ct_labels, output=seg_run, label_names=names_ref, include=INCLUDE,
        max_steps=seg_steps, resume=resume, device=device, mlflow=mlflow))

    tr_run = out / "translator"
    tr_cfg = load_config(None, TranslatorConfig, default="translator/cyclegan_25d", overrides=TR_OVERRIDES)
    result["translator"] = _train("translator", tr_run, tr_steps, lambda resume: train_translator(
        tr_cfg, mr_inputs=[mr_path], ct_inputs=ct_images, run_dir=tr_run, max_steps=tr_steps, resume=resume,
        device=device, mlflow=mlflow))

    # --- the segmenter on CTs (sanity) ---------------------------------------------------------
    plan = plan_labels(read_label_names(names_ref), INCLUDE)
    segmenter = load_segmenter(seg_run)
    t0 = time.perf_counter()
    result["segmenter_dice_on_training_cts"] = _dice_table(segmenter, {
        "example_ct": (ct_images[0], ct_labels[0]), "example_ct_dicom": (ct_images[1], ct_labels[1])}, plan, device)
    ct_full, ct_sm = read_volume(ct_images[0]), read_volume(ts / "example_ct_sm.nii.gz")
    depth = ct_sm.shape[2]
    crop_at = [k for k in range(ct_full.shape[2] - depth + 1)
               if ct_full.shape[:2] == ct_sm.shape[:2] and np.array_equal(ct_full.array[:, :, k:k + depth], ct_sm.array)]
    if crop_at:
        note = (f"NOT held out: example_ct_sm is voxel-identical to slices {crop_at[0]}..{crop_at[0] + depth - 1}"
                " of example_ct (a training CT) although its header keeps example_ct's origin; example_seg is a "
                "different TotalSegmentator prediction (41 labels) with ids of the 'total' map")
    else:
        note = "example_ct_sm is not a crop of example_ct; its labels follow the 'total' map"
    result["segmenter_dice_example_ct_sm"] = {
        "note": note,
        "dice": _dice_table(segmenter, {"example_ct_sm": (ts / "example_ct_sm.nii.gz", ts / "example_seg.nii.gz")},
                            plan, device)["example_ct_sm"]}
    ref_ct = _remap(read_volume(ct_labels[0], kind="label"), plan)  # also validates the plausibility checks
    if crop_at:  # how much do two TotalSegmentator predictions of the same voxels agree?
        from medgen.metrics.segmentation import per_label_scores
        a = _remap(read_volume(ts / "example_seg.nii.gz", kind="label"), plan).array
        b = ref_ct.array[:, :, crop_at[0]:crop_at[0] + depth]
        scores = per_label_scores(a, b, ref_names=plan.names, compute_hd95=False)
        present = {plan.names[int(i)] for i in np.unique(b) if i}
        result["segmenter_dice_example_ct_sm"]["example_seg_vs_example_seg_fast_force_split_on_crop"] = {
            k: round(float(v["dice"]), 3) for k, v in scores.items() if k in present}
    result["ct_dice_s"] = round(time.perf_counter() - t0, 1)
    ct_pred = segmenter.segment(ct_full, device=device, precision="fp32")
    result["ct_montage_png"] = _axial_montage(out / "segmenter_on_example_ct.png", [
        ("CT + TotalSegmentator", ct_full, ref_ct, SOFT_TISSUE),
        ("CT + medgen segmenter", ct_full, ct_pred, SOFT_TISSUE)],
        plan.names, "segmenter on its training CT example_ct", n_slices=6)
    result["plausibility_on_example_ct_labels"] = _plausibility(_label_stats(ref_ct, plan.names))

    # --- segment the MRs -------------------------------------------------------------------------
    seg_dir = out / "segment"
    seg_dir.mkdir(exist_ok=True)
    mr_vol = read_volume(mr_path)
    mr_shape, mr_affine = _grid(mr_path)
    dicom_vol = read_volume(mr_dicom)
    result["mr"] = {"path": str(mr_path), "shape": mr_shape, "orientation_read": mr_vol.orientation,
                    "spacing": [round(float(s), 3) for s in mr_vol.spacing]}
    result["mr_dicom"] = {"path": str(mr_dicom), "shape": list(dicom_vol.shape),
                          "orientation_read": dicom_vol.orientation,
                          "spacing": [round(float(s), 3) for s in dicom_vol.spacing]}
    per_method, timings, montage_rows = {}, {}, [("MR", mr_vol, None, None)]
    for method in METHODS:
        translator = str(tr_run) if method == "chain" else method
        options = ChainOptions(translator=translator, segmenter=str(seg_run), device=device, precision="fp32",
                               overwrite=True)
        entry = {}
        for case, src, extra in (("mr_sm", mr_path, {}), ("mridir_dicom", mr_dicom, {"dicom_seg": "auto"})):
            mask_path = seg_dir / f"{case}_{method}.nii.gz"
            t0 = time.perf_counter()
            report = segment_mr([src], mask_path, options, save_sct="auto", qc="auto", **extra)[0]
            timings[f"{case}_{method}"] = round(time.perf_counter() - t0, 1)
            mask = read_volume(mask_path, kind="label")
            labels = json.loads((seg_dir / f"{case}_{method}.labels.json").read_text())
            names = {int(k): v for k, v in labels["label_names"].items()}
            if case == "mr_sm":
                shape, affine = _grid(mask_path)
                sct_shape, sct_affine = _grid(report.outputs["sct"])
                grid = {"header_shape_equal": shape == mr_shape, "header_affine_equal": _same(affine, mr_affine),
                        "sct_header_grid_equal": sct_shape == mr_shape and _same(sct_affine, mr_affine),
                        "reader_grid_equal": mask.shape == mr_vol.shape and _same(mask.affine, mr_vol.affine)}
            else:
                seg_vol, _ = read_dicom_seg(report.outputs["dicom_seg"], mr_dicom)
                grid = {"reader_grid_equal": mask.shape == dicom_vol.shape and _same(mask.affine, dicom_vol.affine),
                        "dicom_seg_equals_nifti_mask": seg_vol.shape == mask.shape
                        and bool(np.array_equal(seg_vol.array, mask.array)),
                        "dicom_seg_grid_equal": _same(seg_vol.affine, mask.affine)}
            stats = _label_stats(mask, names)
            entry[case] = {"outputs": report.outputs, "grid": grid, "labels": stats,
                           "plausibility": _plausibility(stats) if case == "mr_sm" else None,
                           "labelled_fraction": round(float(np.mean(mask.array > 0)), 4)}
            if case == "mr_sm":  # synthetic CT intensities in the MR body (Otsu-free: MR > 10 % of its p99)
                sct_vol = read_volume(report.outputs["sct"])
                montage_rows += [(f"{method}: CT input", sct_vol, None, SOFT_TISSUE),
                                 (f"{method}: mask", mr_vol, mask, None)]
                sct = sct_vol.array.astype(np.float32)
                body = mr_vol.array > 0.1 * np.percentile(mr_vol.array, 99)
                entry[case]["sct_hu_in_body"] = {q: round(float(np.percentile(sct[body], p)), 0)
                                                 for q, p in (("p5", 5), ("p50", 50), ("p95", 95))}
                entry[case]["sct_hu_outside_body_p50"] = round(float(np.median(sct[~body])), 0)
                # what the segmenter sees per MR tissue brightness (dark -> bright deciles of the body):
                # on this T1-like MR the brightest band is mostly fat, which is about -100 HU on CT
                edges = np.percentile(mr_vol.array[body], [0, 10, 30, 50, 70, 90, 100])
                mr_arr = mr_vol.array
                entry[case]["sct_hu_median_by_mr_brightness_band"] = {
                    f"p{a}-p{b}": round(float(np.median(sct[body & (mr_arr >= lo) & (mr_arr <= hi)])), 0)
                    for a, b, lo, hi in zip((0, 10, 30, 50, 70, 90), (10, 30, 50, 70, 90, 100), edges[:-1], edges[1:])}
        per_method[method] = entry
    result["segment"] = per_method
    result["mr_sm_volumes_ml"] = {
        name: {m: per_method[m]["mr_sm"]["labels"].get(name, {}).get("ml", 0.0) for m in METHODS}
        for i, name in sorted(plan.names.items()) if i}
    result["mr_sm_montage_png"] = _axial_montage(seg_dir / "compare_mr_sm.png", montage_rows, plan.names,
                                                 "example_mr_sm: segmenter input and mask per method")
    result["segment_timings_s"] = timings
    result["all_grid_checks_pass"] = all(v for m in per_method.values() for c in m.values() for v in c["grid"].values())
    result["training_total_s"] = round(result["segmenter"]["train_s_total_all_runs"]
                                       + result["translator"]["train_s_total_all_runs"], 1)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="working folder (resumes what is already there)")
    parser.add_argument("--data", default=None,
                        help="sample data folder (default $MEDGEN_SAMPLE_DATA, else ../shared/data)")
    parser.add_argument("--seg-steps", type=int, default=1600)
    parser.add_argument("--tr-steps", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mlflow", action="store_true", help="also record MLflow runs (off: faster)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    results = run(Path(args.out), _data_dir(args.data), args.seg_steps, args.tr_steps, args.device, args.mlflow)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
