"""What the MRI-DIR bar leaves room for: error floors of ideal translators; prints JSON.

The MRI-DIR acceptance (``bench/translator_mridir.py``: MAE inside the object, bone MAE <= 300 HU
on the lower 30 % slab) compares a synthetic CT with a CT the MR was only rigidly, approximately
registered to. Before reading a translator's bone error as "it cannot find bone", this measures,
on the same slab, mask and scores, the error of translators that are perfect but for one thing:

* ``shift_Kmm``: the true CT moved by K voxels (1 mm) along each axis in turn, both directions
  (mean of the six): what a residual misregistration of K mm alone costs;
* ``blur_sigma_Smm``: the true CT under a Gaussian blur of S mm: what a translator that gets every
  tissue right but paints it unsharply costs;
* ``oracle_band_painting``: every voxel classified into its true HU tissue band (the bands of
  :func:`medgen.transforms.render.tissue_classes`, after the 3-voxel median the route uses) and
  painted with that band's mean HU on the training slab: the best a tissue-painting translator
  (``--routes tissue``) can do; ``oracle_band_painting_1.5mm``: the same through the route's
  1.5 mm working grid (linear down- and up-sampling).

Usage::

    python bench/mridir_ceilings.py          # under a minute of CPU
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import translator_mridir as mridir  # noqa: E402  (the acceptance bench's data, split, mask and scores)

METRICS = ("mae_hu", "mae_bone_hu", "mae_fat_hu")  # mridir.mae_scores' keys
TRAIN_FRACTION = 0.7  # translator_mridir's default split


def _through_grid(image: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Linear resampling from the 1 mm grid to ``spacing_mm`` and back (the route's working grid)."""
    small = ndimage.zoom(image, 1.0 / spacing_mm, order=1)
    back = ndimage.zoom(small, np.array(image.shape) / np.array(small.shape), order=1)
    return back[tuple(slice(0, n) for n in image.shape)]


def ceilings() -> dict:
    from medgen.transforms.render import tissue_classes

    ct, mr = mridir.read_pair()
    train, test = (slice(*r) for r in mridir.split_ranges(ct, TRAIN_FRACTION))
    hu = ct.array.astype(np.float32)
    mask = mridir.object_mask(ct.array, mr.array)[:, :, test]
    truth = hu[:, :, test]

    result: dict = {"test_voxels": int(mask.sum()), "bone_voxels": int((mask & (truth > 200)).sum())}
    for k in (1, 2, 3):
        runs = [mridir.mae_scores(np.roll(hu, s, axis=axis)[:, :, test], truth, mask)
                for axis in range(3) for s in (k, -k)]
        result[f"shift_{k}mm"] = {m: round(float(np.mean([r[m] for r in runs])), 2) for m in METRICS}
    for sigma in (0.75, 1.5, 3.0):
        result[f"blur_sigma_{sigma}mm"] = mridir.mae_scores(ndimage.gaussian_filter(hu, sigma)[:, :, test], truth, mask)

    bands = tissue_classes(ndimage.median_filter(hu, size=3))
    lut = np.zeros(int(bands.max()) + 1, np.float32)
    for band in np.unique(bands[:, :, train]):
        lut[band] = hu[:, :, train][bands[:, :, train] == band].mean()
    painted = lut[bands]
    result["band_mean_hu"] = {int(b): round(float(lut[b]), 1) for b in np.unique(bands[:, :, train])}
    result["oracle_band_painting"] = mridir.mae_scores(painted[:, :, test], truth, mask)
    result["oracle_band_painting_1.5mm"] = mridir.mae_scores(_through_grid(painted, 1.5)[:, :, test], truth, mask)
    return result


if __name__ == "__main__":
    print(json.dumps(ceilings(), indent=1))
