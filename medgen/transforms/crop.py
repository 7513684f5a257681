"""Crop to the bounding box of the body mask plus a margin."""

from __future__ import annotations

import numpy as np
from monai.transforms import MapTransform, Transform

from medgen.io.volume import Volume
from medgen.transforms._base import add_step, grid_of


def bounding_box(mask: np.ndarray, margin: tuple[int, int, int] = (0, 0, 0)) -> tuple[list[int], list[int]]:
    """``(start, stop)`` voxel indices of the mask's bounding box grown by ``margin``, clamped to the array.

    Examples:
        >>> m = np.zeros((10, 10, 10), bool); m[4:6, 3:5, 2:3] = True
        >>> bounding_box(m, (1, 1, 5))
        ([3, 2, 0], [7, 6, 8])
    """
    idx = np.nonzero(mask)
    if not idx[0].size:
        return [0, 0, 0], [int(s) for s in mask.shape]
    start = [max(0, int(i.min()) - m) for i, m in zip(idx, margin)]
    stop = [min(s, int(i.max()) + 1 + m) for i, m, s in zip(idx, margin, mask.shape)]
    return start, stop


class CropToBox(Transform):
    """Cut ``volume[start:stop]`` and shift the affine so every voxel keeps its world position.

    Examples:
        >>> v = Volume(np.zeros((10, 10, 10), np.float32), np.eye(4))
        >>> c = CropToBox(start=(2, 0, 0), stop=(5, 10, 10))(v)
        >>> c.shape, float(c.affine[0, 3])
        ((3, 10, 10), 2.0)
    """

    def __init__(self, *, start, stop):
        self.start = [int(s) for s in start]
        self.stop = [int(s) for s in stop]

    def __call__(self, volume: Volume) -> Volume:
        slices = tuple(slice(a, b) for a, b in zip(self.start, self.stop))
        array = np.ascontiguousarray(volume.array[slices])
        affine = volume.affine.copy()
        affine[:3, 3] = volume.affine[:3, :3] @ np.asarray(self.start, float) + volume.affine[:3, 3]
        return Volume(array, affine, volume.source, volume.series_uid, dict(volume.meta))


class CropForegroundd(MapTransform):
    """Crop every key to the bounding box of ``data[source_key]`` (the body mask) plus ``margin_mm``.

    The margin is converted to voxels with the image spacing (rounded up). The box is clamped
    to the volume, so a body touching the field-of-view edge is never padded with made-up voxels.
    """

    def __init__(self, keys=("image", "label", "mask"), *, source_key: str = "mask", margin_mm: float = 10.0,
                 allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.margin_mm = float(margin_mm)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        source: Volume = d[self.source_key]
        margin = tuple(int(np.ceil(self.margin_mm / s - 1e-6)) for s in source.spacing)
        start, stop = bounding_box(source.array > 0, margin)
        crop = CropToBox(start=start, stop=stop)
        for key in self.key_iterator(d):
            d[key] = crop(d[key])
        add_step(d, {"name": "crop", "margin_mm": self.margin_mm, "margin_voxels": list(margin), "start": start,
                     "stop": stop, "grid": grid_of(d["image"])})
        return d
