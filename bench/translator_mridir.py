"""Real-data acceptance experiment: MR -> CT on the MRI-DIR porcine phantom, two routes; prints JSON.

Data (``$MEDGEN_SAMPLE_DATA/mridir_phantom`` or ``../shared/data/mridir_phantom``): a real CT and a
real T2 MR of the same object, the MR rigidly registered onto the CT's 1 mm grid (approximate).

Protocol:

* Slices are axial: the volumes are LPS-stored with array axis 2 = superior (checked below), which
  is RAS axis 2 after medgen's reorientation, the axis the 2.5D translator slices along.
* Two translators, each trained on the upper 70% of slices only:

  - ``cyclegan`` (``translator/cyclegan_25d``): *unpaired*: the MR slab and the CT slab are handed
    to ``medgen train translator`` as two separate inputs, and MR and CT samples are drawn
    independently (no pairing information is used);
  - ``synth`` (``translator/synth_25d``, objective synth): the CT slab alone; G learns from
    random-contrast renderings of the CT's HU tissue classes paired with that CT (no MR
    intensities at all). ``--synth-mr`` adds the MR slab as unpaired MR (CycleGAN terms).
  - ``tissue`` (``segmenter/synth_unet`` with ``synth.target: classes``, exported as a
    tissue-painting translator, :mod:`medgen.models.tissue_translator`): the CT slab alone, no
    labels (its classes are the HU tissue bands); the contrast-agnostic segmenter learns each
    voxel's band from renderings, and the synthetic CT paints each band's mean training HU.

* Translate the lower 30% MR slab with ``translate_volume`` (preprocess -> translate -> invert to
  the 1 mm grid) and compare with the CT slab inside the object mask: CT body (> -500 HU) AND MR
  body, eroded by 2 voxels (misregistration and partial volume at the boundary excluded). MAE
  overall, in bone (CT > 200 HU) and fat (CT < -30 HU); PSNR and SSIM (data range 2000 HU).
* Baselines measured the same way: the constant median CT HU of the training slab (inside its
  object mask), and MR -> CT histogram matching (quantile mapping learnt on the training slabs'
  object voxels; it uses the paired training slabs' value distributions).

Nothing is tuned on the test slab: the model of the last step is used; the test MAE logged
during training is for the learning curve only.

Usage::

    python bench/translator_mridir.py --routes synth cyclegan --synth-steps 1500 --cyclegan-steps 1500 \
        [--out DIR] [--set key=value ...] [--synth-set key=value ...]
    python bench/translator_mridir.py --routes tissue --tissue-steps 3000 [--tissue-set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OVERRIDES = [
    # 1.5 mm isotropic: resampling 1 mm -> 1.5 mm -> 1 mm alone costs ~9 HU MAE (67 in bone), 2x2x3 mm ~16 (119)
    "preprocess.mr.spacing=[1.5,1.5,1.5]", "preprocess.ct.spacing=[1.5,1.5,1.5]",
    # the pork bone reaches ~1450 HU (99th percentile); a wider window than the abdominal default
    "preprocess.ct.ct.window=[-1000,1600]",
    "data.patch_size=[64,64]", "model.features=16", "model.n_blocks=6", "model.disc_features=32",
    # fp32: on CPUs without bf16 instructions (AVX2 only) bf16 autocast runs ~10x slower
    "train.precision=fp32", "train.validate_every=250", "train.checkpoint_every=250", "train.log_every=25",
]


def data_dir() -> Path:
    return Path(os.environ.get("MEDGEN_SAMPLE_DATA", REPO.parent / "shared" / "data")) / "mridir_phantom"


def slab(volume, start: int, stop: int):
    """Slices ``start:stop`` along array axis 2, with the affine shifted accordingly."""
    from medgen.io.volume import Volume
    shift = np.eye(4)
    shift[2, 3] = start
    return Volume(np.ascontiguousarray(volume.array[:, :, start:stop]), volume.affine @ shift, volume.source)


def object_mask(ct: np.ndarray, mr: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    from medgen.data.sampling import body_mask
    return ndimage.binary_erosion(body_mask(ct, threshold=-500.0) & body_mask(mr), iterations=2)


def mae_scores(pred: np.ndarray, ct: np.ndarray, mask: np.ndarray) -> dict:
    """MAE in HU inside the object, in its bone (CT > 200 HU) and in its fat (CT < -30 HU)."""
    from medgen.metrics.image import mae
    bone, fat = mask & (ct > 200), mask & (ct < -30)
    return {"mae_hu": round(mae(pred, ct, mask), 2), "mae_bone_hu": round(mae(pred, ct, bone), 2),
            "mae_fat_hu": round(mae(pred, ct, fat), 2)}


def scores(pred: np.ndarray, ct: np.ndarray, mask: np.ndarray) -> dict:
    """:func:`mae_scores` plus PSNR and SSIM inside the object (data range 2000 HU)."""
    from medgen.metrics.image import psnr, ssim
    return {**mae_scores(pred, ct, mask),
            "psnr_db": round(psnr(pred, ct, mask, data_range=2000.0), 3),
            "ssim": round(ssim(pred, ct, mask, data_range=2000.0), 4)}


def read_pair():
    """The MRI-DIR CT and the MR registered onto its grid (same grid, checked)."""
    from medgen.io.readers import read_volume
    folder = data_dir()
    ct = read_volume(folder / "mridir_porcine_head_ct_1mm.nii.gz")
    mr = read_volume(folder / "mridir_porcine_head_mr_t2_rigid_on_ct_1mm_grid.nii.gz")
    assert ct.same_grid(mr)
    return ct, mr


def split_ranges(ct, train_fraction: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """(train, test) slice ranges along array axis 2: the upper (superior) ``train_fraction`` trains."""
    axis_code = ct.orientation[2]
    assert axis_code in "SI", f"array axis 2 is {axis_code}, not the axial normal"
    depth = ct.shape[2]
    n_train = int(round(depth * train_fraction))
    # "upper" = superior: array axis 2 points superior (S) here, so the upper slices are the last ones
    if axis_code == "S":
        return (depth - n_train, depth), (0, depth - n_train)
    return (0, n_train), (n_train, depth)


def histogram_matching(mr_train, ct_train, mask_mr_train, mask_ct_train, mr_test, mask_mr_test) -> np.ndarray:
    """Quantile mapping MR intensity -> CT HU learnt on the training slabs (object voxels)."""
    q = np.linspace(0, 100, 1001)
    mr_q = np.percentile(mr_train[mask_mr_train], q)
    ct_q = np.percentile(ct_train[mask_ct_train], q)
    out = np.full(mr_test.shape, -1000.0, np.float32)
    out[mask_mr_test] = np.interp(mr_test[mask_mr_test], mr_q, ct_q)
    return out


@dataclass
class Split:
    """The MRI-DIR volumes cut into the training (upper) and test (lower) slabs, with masks."""

    paths: dict
    train_range: tuple
    test_range: tuple
    ct_test: np.ndarray
    test_mask: np.ndarray
    hm: np.ndarray
    result: dict


def prepare(out: Path, train_fraction: float) -> Split:
    """Write the four slabs under ``out``; the baselines' scores (in ``Split.result``)."""
    from medgen.data.sampling import body_mask
    from medgen.io.writers import write_volume

    ct, mr = read_pair()
    train_range, test_range = split_ranges(ct, train_fraction)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, vol, rng in (("mr_train", mr, train_range), ("ct_train", ct, train_range),
                           ("mr_test", mr, test_range), ("ct_test", ct, test_range)):
        paths[name] = out / f"{name}.nii.gz"
        write_volume(slab(vol, *rng), paths[name], overwrite=True)

    mask_full = object_mask(ct.array, mr.array)
    test_mask = mask_full[:, :, test_range[0]:test_range[1]]
    ct_test = ct.array[:, :, test_range[0]:test_range[1]].astype(np.float32)
    mr_test = mr.array[:, :, test_range[0]:test_range[1]].astype(np.float32)
    ct_tr = ct.array[:, :, train_range[0]:train_range[1]].astype(np.float32)
    mr_tr = mr.array[:, :, train_range[0]:train_range[1]].astype(np.float32)
    train_mask = mask_full[:, :, train_range[0]:train_range[1]]

    result: dict = {"data": str(data_dir()), "slice_axis": f"array axis 2 ({ct.orientation}: {ct.orientation[2]}) = axial",
                    "train_slices": list(train_range), "test_slices": list(test_range),
                    "mask": "CT body (>-500 HU) & MR body, eroded 2 voxels",
                    "test_voxels": int(test_mask.sum()), "bone_voxels": int((test_mask & (ct_test > 200)).sum()),
                    "fat_voxels": int((test_mask & (ct_test < -30)).sum())}
    median = float(np.median(ct_tr[train_mask]))
    result["baseline_constant_median"] = {"value_hu": median, **scores(np.full_like(ct_test, median), ct_test, test_mask)}
    hm = histogram_matching(mr_tr, ct_tr, body_mask(mr_tr) & train_mask, train_mask, mr_test, body_mask(mr_test))
    result["baseline_histogram_matching"] = scores(hm, ct_test, test_mask)
    return Split(paths, train_range, test_range, ct_test, test_mask, hm, result)


def run_route(name: str, config_name: str, overrides: list[str], steps: int, split: Split, out: Path, *,
              use_mr: bool, curve: bool) -> dict:
    """Train one translator on the training slabs and score it on the test slab (JSON-ready dict)."""
    import torch

    from medgen.config import load_config
    from medgen.inference.translate import load_translator
    from medgen.io.readers import read_volume
    from medgen.pipelines.train_translator import make_paired_case, train_translator
    from medgen.training.translator import TranslatorConfig

    config = load_config(config_name, TranslatorConfig, default=config_name, overrides=overrides)
    paths = split.paths
    run_dir = out / f"run_{name}"
    start = time.perf_counter()
    # learning curve on the test slab with the same object mask as the final numbers (not used to select anything)
    cases = [make_paired_case("mridir_test", read_volume(paths["mr_test"]), read_volume(paths["ct_test"]), config,
                              torch.device("cpu"), torch.float32, object_mask=split.test_mask)] if curve else []
    bundle = train_translator(config, mr_inputs=[paths["mr_train"]] if use_mr else None,
                              ct_inputs=[paths["ct_train"]], run_dir=run_dir, max_steps=steps,
                              resume=(run_dir / "checkpoints").exists(), device="cpu", mlflow=False,
                              paired_cases=cases)
    train_s = time.perf_counter() - start
    translator = load_translator(bundle)
    variants = (("default", {}, {}), ("no_background_mask", {"mask_background": False}, {}),
                ("centre_channel_only", {}, {"stack_blend": "centre"}))
    result = evaluate(name, translator, split, out, config.inference.model_dump(), variants)
    hist = [r for r in _history(run_dir) if r.get("phase") == "val" and "mae_hu" in r]
    return {**result, "test_mae_curve": [(r["step"], round(r["mae_hu"], 1)) for r in hist],
            "training": {"steps": steps, "seconds": round(train_s, 1), "config": config_name, "overrides": overrides,
                         "inputs": "CT + MR upper slabs (unpaired)" if use_mr else "CT upper slab only"}}


#: the tissue route's segmenter on this data: the translators' 1.5 mm grid, every voxel a tissue band
TISSUE_OVERRIDES = ["synth.target=classes", "data.spacing=[1.5,1.5,1.5]", "data.patch_size=[64,64,32]",
                    "train.precision=fp32",
                    "train.validate_every=500", "train.checkpoint_every=250", "train.log_every=25"]


def run_tissue_route(steps: int, split: Split, out: Path, overrides: list[str]) -> dict:
    """``segmenter/synth_unet`` (``synth.target: classes``) on the CT slab with no labels, exported as a
    tissue-painting translator, scored on the test slab like the translators."""
    from medgen.config import load_config
    from medgen.inference.translate import load_translator
    from medgen.pipelines.train_segmenter import train_segmenter
    from medgen.training.segmenter import SegmenterConfig

    config = load_config(None, SegmenterConfig, default="segmenter/synth_unet", overrides=TISSUE_OVERRIDES + overrides)
    run_dir = out / "run_tissue"
    start = time.perf_counter()
    # no label maps: every voxel's class is its HU tissue band
    train_segmenter(config, images=[split.paths["ct_train"]], labels=None, output=run_dir, max_steps=steps,
                    resume=(run_dir / "checkpoints").exists(), device="cpu", mlflow=False)
    train_s = time.perf_counter() - start
    translator = load_translator(run_dir / "translator")
    result = evaluate("tissue", translator, split, out, dict(translator.settings), (("default", {}, {}),))
    return {**result, "training": {"steps": steps, "seconds": round(train_s, 1), "config": "segmenter/synth_unet",
                                   "overrides": TISSUE_OVERRIDES + overrides, "inputs": "CT upper slab only, no labels"}}


def evaluate(name: str, translator, split: Split, out: Path, settings: dict, variants) -> dict:
    """Translate the MR test slab with each ``(variant, translate kwargs, inference settings)`` and score it
    against the CT test slab; writes the default variant's synthetic CT and picture."""
    from medgen.inference.translate import translate_volume
    from medgen.io.readers import read_volume
    from medgen.io.writers import write_volume
    mr_test_vol = read_volume(split.paths["mr_test"])
    scored = {}
    for variant, kwargs, extra_settings in variants:
        translator.settings = {**settings, **extra_settings}
        t0 = time.perf_counter()
        sct = translate_volume(mr_test_vol, translator, device="cpu", precision="fp32", show_progress=False, **kwargs)
        scored[variant] = {**scores(sct.array, split.ct_test, split.test_mask),
                           "seconds": round(time.perf_counter() - t0, 2)}
        if variant == "default":
            write_volume(sct, out / f"sct_test_{name}.nii.gz", overwrite=True)
            _picture(out / f"mridir_test_{name}.png", mr_test_vol, split.ct_test, sct.array, split.hm)
    base_c = split.result["baseline_constant_median"]["mae_hu"]
    base_h = split.result["baseline_histogram_matching"]["mae_hu"]
    mine = scored["default"]["mae_hu"]
    return {"translator": scored["default"], "variants": scored,
            "improvement": {"vs_constant_hu": round(base_c - mine, 2), "vs_constant_pct": round(100 * (1 - mine / base_c), 1),
                            "vs_histogram_hu": round(base_h - mine, 2),
                            "vs_histogram_pct": round(100 * (1 - mine / base_h), 1)},
            "acceptance": {"mae_below_constant": bool(mine < base_c),
                           "bone_mae_le_300": bool(scored["default"]["mae_bone_hu"] <= 300.0)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/medgen_bench_mridir")
    parser.add_argument("--routes", nargs="+", choices=("synth", "cyclegan", "tissue"), default=["synth", "cyclegan"])
    parser.add_argument("--steps", type=int, default=None, help="steps of every route (else the per-route ones)")
    parser.add_argument("--synth-steps", type=int, default=1500)
    parser.add_argument("--cyclegan-steps", type=int, default=1500)
    parser.add_argument("--config", default="translator/cyclegan_25d", help="the CycleGAN route's config")
    parser.add_argument("--synth-config", default="translator/synth_25d")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every route")
    parser.add_argument("--synth-set", action="append", default=[], help="override for the synth route only")
    parser.add_argument("--tissue-steps", type=int, default=3000)
    parser.add_argument("--tissue-set", action="append", default=[], help="override for the tissue route's segmenter")
    parser.add_argument("--synth-mr", action="store_true",
                        help="synth route: also the MR upper slab as unpaired MR (CycleGAN terms on real MR)")
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is much faster than 2 on a busy 2-core machine: no OpenMP spinning)")
    parser.add_argument("--no-val", action="store_true", help="do not log the test-slab learning curve")
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    out = Path(args.out)
    split = prepare(out, args.train_fraction)
    result = dict(split.result)
    print(json.dumps({"baselines": {k: v for k, v in result.items() if k.startswith("baseline")}}), file=sys.stderr)
    for route in args.routes:
        if route == "tissue":
            result["tissue"] = run_tissue_route(args.steps or args.tissue_steps, split, out, args.tissue_set)
        elif route == "synth":
            steps = args.steps or args.synth_steps
            result["synth"] = run_route("synth", args.synth_config, DEFAULT_OVERRIDES + args.overrides + args.synth_set,
                                        steps, split, out, use_mr=args.synth_mr, curve=not args.no_val)
        else:
            steps = args.steps or args.cyclegan_steps
            result["cyclegan"] = run_route("cyclegan", args.config, DEFAULT_OVERRIDES + args.overrides, steps, split,
                                           out, use_mr=True, curve=not args.no_val)
        print(json.dumps({route: result[route]["translator"]}), file=sys.stderr)
    text = json.dumps(result, indent=1)
    (out / "result.json").write_text(text)
    print(text)
    return 0


def _history(run_dir):
    from medgen.training.loop import read_history
    return read_history(run_dir)


def _picture(path, mr_vol, ct, sct, hm):
    from medgen.viz import Panel, plane_slice, save_panels_png
    rows = []
    for plane in ("axial", "coronal", "sagittal"):
        row = []
        for title, arr, win in (("MR", mr_vol.array, None), ("CT", ct, (-300, 1200)), ("synthetic CT", sct, (-300, 1200)),
                                ("histogram matched", hm, (-300, 1200))):
            img, aspect = plane_slice(mr_vol.with_array(arr), plane)
            row.append(Panel(img, aspect, win, title=f"{title} {plane}"))
        rows.append(row)
    save_panels_png(path, rows, title=f"MRI-DIR lower 30% (test): {Path(path).stem}")


if __name__ == "__main__":
    sys.exit(main())
