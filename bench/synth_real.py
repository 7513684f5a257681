"""Real abdomen, synthesis route: a contrast-agnostic segmenter from two CTs, applied to a real MR.

Uses the public sample data (``$MEDGEN_SAMPLE_DATA``, default ``../shared/data``; every label map
there is a TotalSegmentator *prediction*, not manual ground truth). No MR is used for training.

1. Train ``segmenter/synth_unet`` on the two TotalSegmentator example CTs and their label maps
   (the structures of ``bench/chain_real.py``), i.e. on renderings of their anatomy (labels +
   HU tissue bands) with random contrast, resolution, bias and noise (plus some real CT patches).
2. Its fit on the two training CTs themselves (Dice vs the TotalSegmentator maps), and on three
   whole-volume renderings of each (``fit_dice_on_renderings``): fitting renderings but not the
   real images means a domain gap; fitting neither, that the anatomy was not learned.
3. ``medgen segment-mr --translator none --agreement`` on ``example_mr_sm`` (stored LPS, another
   subject): mask on the MR's exact grid (header and reader checks), QC picture, per-label
   volumes and RAS centroids with anatomical-plausibility checks, the reliability flag, and an
   axial montage to look at.
4. With ``--set synth.target=classes`` the run also exported a tissue-painting translator
   (``RUN/translator``); with ``--ct-segmenter RUN`` (e.g. ``bench/chain_real.py``'s
   ``OUT/segmenter``) the painted chain ``segment-mr --translator RUN/translator --segmenter
   CT_SEGMENTER`` is run and reported the same way (``mr_sm_painted``), with its synthetic CT.
   Tissue classes (``tissue_*``) are left out of the organ statistics.

Usage (1 torch thread)::

    OMP_NUM_THREADS=1 python bench/synth_real.py --out /tmp/synth_real [--steps 800] > /tmp/synth_real.json
    OMP_NUM_THREADS=1 python bench/synth_real.py --out /tmp/synth_real_cls --steps 6000 --set synth.target=classes \
        --ct-segmenter /tmp/chain_real/segmenter
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from chain_real import INCLUDE, _axial_montage, _data_dir, _dice_table, _grid, _label_stats, _plausibility, _same

log = logging.getLogger("bench.synth_real")

OVERRIDES = ["network.channels=[8,16,32,64]",
             "train.precision=fp32", "train.lr=0.004", "train.validate_every=100000", "train.checkpoint_every=100",
             "train.log_every=25"]


def run(out: Path, data: Path, steps: int, overrides: list[str], device: str, ct_segmenter: str | None = None) -> dict:
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
    cfg = load_config(None, SegmenterConfig, default="segmenter/synth_unet", overrides=OVERRIDES + overrides)
    t0 = time.perf_counter()
    if not (run_dir / "bundle" / "medgen.json").exists():
        train_segmenter(cfg, images=ct_images, labels=ct_labels, output=run_dir, label_names=names_ref,
                        include=INCLUDE, max_steps=steps, resume=(run_dir / "checkpoints").exists(), device=device,
                        mlflow=False)
    result["train_s"] = round(time.perf_counter() - t0, 1)
    plan = plan_labels(read_label_names(names_ref), INCLUDE)
    segmenter = load_segmenter(run_dir)
    training_pairs = {"example_ct": (ct_images[0], ct_labels[0]), "example_ct_dicom": (ct_images[1], ct_labels[1])}
    result["fit_dice_on_training_cts"] = _dice_table(segmenter, training_pairs, plan, device)
    result["fit_dice_on_renderings"] = _rendering_fit(segmenter, cfg, training_pairs, plan)

    mr = read_volume(mr_path)
    routes = {"direct": ("none", str(run_dir), "direct (synth segmenter)")}
    if ct_segmenter and (run_dir / "translator" / "medgen.json").exists():
        routes["painted"] = (str(run_dir / "translator"), ct_segmenter, "painted sCT -> CT segmenter")
    rows = [("MR", mr, None, None)]
    for route, (translator, seg, title) in routes.items():
        mask_path = out / "segment" / f"mr_sm_{route}.nii.gz"
        options = ChainOptions(translator=translator, segmenter=seg, device=device, precision="fp32",
                               overwrite=True, agreement=True)
        report = segment_mr([mr_path], mask_path, options, qc="auto",
                            save_sct="auto" if route == "painted" else None)[0]
        mask = read_volume(mask_path, kind="label")
        result["mr_sm" if route == "direct" else f"mr_sm_{route}"] = _mask_report(report, mask, mask_path, mr_path, mr)
        rows.append((title, mr, mask, None))
    result["montage_png"] = _axial_montage(out / "segment" / "compare_mr_sm_routes.png", rows, plan.names,
                                           "example_mr_sm: synthesis routes (no MR used in training)")
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return result


def _rendering_fit(segmenter, cfg, pairs: dict, plan, renderings: int = 3) -> dict:
    """Dice of the network on whole-volume renderings of its own training cases (no warp).

    Tells the two ways this route can fail apart: a network that fits renderings but not the real
    CT (or MR) meets images unlike its renderings; one that fits neither has not learned the anatomy.
    """
    from medgen.inference.segment import segment_array
    from medgen.io.readers import read_volume
    from medgen.metrics.segmentation import per_label_scores
    from medgen.training.segmenter import prepare_case
    from medgen.transforms.render import RandContrastRender

    synth = cfg.synth
    # render_classes numbers the HU bands after the label ids: the first is air
    renderer = RandContrastRender.for_tissue_bands(segmenter.spec.spacing, synth.render, air_class=len(plan.names),
                                                   bands=synth.hu_bands)
    out = {}
    for case_id, (img_path, lab_path) in pairs.items():
        case = prepare_case(case_id, read_volume(img_path), read_volume(lab_path, kind="label"), segmenter.spec, plan,
                            synth=synth)
        present = {plan.names[int(i)] for i in np.unique(case.label) if i and int(i) in plan.names}
        means = []
        for seed in range(renderings):
            renderer.set_random_state(seed=seed)
            image = renderer(torch.from_numpy(case.classes.astype(np.int64))).numpy()
            pred = segment_array(segmenter.network, image, patch_size=segmenter.spec.patch_size, pad_value=-1.0)
            scores = per_label_scores(pred, case.label, pred_names=segmenter.label_names, ref_names=plan.names,
                                      spacing=segmenter.spec.spacing, compute_hd95=False)
            means.append(float(np.mean([float(v["dice"]) for k, v in scores.items() if k in present])))
        out[case_id] = {"mean_present": round(float(np.mean(means)), 3), "per_rendering": [round(m, 3) for m in means]}
    return out


def _mask_report(report, mask, mask_path: Path, mr_path: Path, mr) -> dict:
    """Grid checks, organ volumes / centroids, plausibility and agreement of one route's mask."""
    mr_shape, mr_affine = _grid(mr_path)
    shape, affine = _grid(mask_path)
    names = {int(k): v for k, v in json.loads(mask_path.with_name(mask_path.name.replace(".nii.gz", ".labels.json"))
                                              .read_text())["label_names"].items()}
    organs = {k: v for k, v in names.items() if not v.startswith("tissue_")}
    stats = _label_stats(mask.with_array(np.where(np.isin(mask.array, list(organs)), mask.array, 0)), organs)
    return {"outputs": report.outputs, "agreement": report.agreement,
            "grid": {"header_shape_equal": shape == mr_shape, "header_affine_equal": _same(affine, mr_affine),
                     "reader_grid_equal": mask.shape == mr.shape and _same(mask.affine, mr.affine)},
            "labels": stats, "plausibility": _plausibility(stats),
            "labelled_fraction": round(float(np.mean(np.isin(mask.array, [k for k in organs if k]))), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default=None, help="sample data folder (default: $MEDGEN_SAMPLE_DATA or ../shared/data)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="segmenter override")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ct-segmenter", default=None, metavar="RUN",
                        help="CT segmenter for the painted chain (needs --set synth.target=classes)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    print(json.dumps(run(Path(args.out), _data_dir(args.data), args.steps, args.set, args.device, args.ct_segmenter),
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
