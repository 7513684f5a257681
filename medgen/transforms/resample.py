"""Resample a volume to a target voxel spacing (same field of view and axis directions)."""

from __future__ import annotations

import numpy as np
from monai.transforms import MapTransform, Transform
from scipy import ndimage

from medgen.io.geometry import grid_for_spacing, resample_to_grid
from medgen.io.volume import Volume
from medgen.transforms._base import add_step, grid_of, interpolation_order


class ResampleToSpacing(Transform):
    """Resample to ``spacing`` mm, keeping the field-of-view centre and the axis directions.

    Resampling happens through world coordinates (:func:`medgen.io.geometry.resample_to_grid`),
    so the result can be mapped back onto the source grid with the recorded affines.

    Args:
        spacing: target voxel size (mm) along the array axes, or None to keep the spacing.
        order: 1 (trilinear) for images, 0 (nearest neighbour) for label maps.
        antialias: when downsampling an image, first smooth each axis with a Gaussian of
            sigma = (factor - 1) / 2 source voxels (as scikit-image's ``resize`` does), so
            fine noise and edges do not alias into the coarser grid. Ignored for ``order=0``.

    Examples:
        >>> import numpy as np
        >>> v = Volume(np.zeros((10, 10, 4), np.float32), np.diag([1.0, 1.0, 3.0, 1.0]))
        >>> ResampleToSpacing(spacing=(2.0, 2.0, 3.0))(v).shape
        (5, 5, 4)
    """

    def __init__(self, *, spacing: tuple[float, float, float] | None, order: int = 1, antialias: bool = True):
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.order = order
        self.antialias = antialias

    def target_grid(self, volume: Volume) -> tuple[np.ndarray, tuple[int, int, int]]:
        """The (affine, shape) this transform resamples ``volume`` onto."""
        if self.spacing is None or np.allclose(volume.spacing, self.spacing, rtol=1e-5):
            return volume.affine, volume.shape
        return grid_for_spacing(volume, self.spacing)

    def __call__(self, volume: Volume, grid: tuple[np.ndarray, tuple[int, int, int]] | None = None) -> Volume:
        affine, shape = grid if grid is not None else self.target_grid(volume)
        if shape == volume.shape and np.allclose(affine, volume.affine, atol=1e-6):
            return volume
        if self.antialias and self.order > 0:
            new_spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
            sigma = [max(0.0, (n / o - 1.0) / 2.0) for n, o in zip(new_spacing, volume.spacing)]
            if max(sigma) > 0.05:
                smooth = ndimage.gaussian_filter(volume.array.astype(np.float32, copy=False), sigma, mode="nearest")
                volume = volume.with_array(smooth)
        return resample_to_grid(volume, affine, shape, order=self.order)


class ResampleToSpacingd(MapTransform):
    """Dictionary version of :class:`ResampleToSpacing`: the image's target grid for every key.

    Images are interpolated linearly, ``label``/``mask`` by nearest neighbour.
    """

    def __init__(self, keys=("image", "label", "mask"), *, spacing, antialias: bool = True,
                 allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.spacing = spacing
        self.antialias = antialias

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        grid = ResampleToSpacing(spacing=self.spacing).target_grid(d["image"])
        for key in self.key_iterator(d):
            transform = ResampleToSpacing(spacing=self.spacing, order=interpolation_order(key), antialias=self.antialias)
            d[key] = transform(d[key], grid)
        add_step(d, {"name": "resample", "spacing": None if self.spacing is None else [float(s) for s in self.spacing],
                     "antialias": self.antialias, "grid": grid_of(d["image"])})
        return d
