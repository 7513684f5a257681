"""MR bias-field correction with SimpleITK's N4 (optional; off by default because it is slow).

N4 is fitted on a copy shrunk by ``shrink_factor`` (the bias field is smooth, so this loses
little and is ~shrink_factor^3 faster) and the fitted log bias field is then evaluated on the
full-resolution grid and divided out.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from monai.transforms import MapTransform, Transform

from medgen.io.volume import Volume
from medgen.transforms._base import add_step


class N4BiasCorrection(Transform):
    """Divide out a smooth multiplicative bias field estimated by N4.

    Args:
        shrink_factor: fit on a copy downsampled by this factor per axis (1 = full resolution).
        iterations: maximum iterations per fitting level (one entry per level).

    Examples:
        >>> x, y, z = np.meshgrid(*[np.linspace(-1, 1, 24)] * 3, indexing="ij")
        >>> body = (x**2 + y**2 + z**2 < 0.8).astype(np.float32) * 100 + 1
        >>> v = Volume(body * (1 + 0.3 * x), np.eye(4))
        >>> out = N4BiasCorrection(shrink_factor=2, iterations=(20, 20))(v, body > 50)
        >>> inside = body > 50
        >>> bool(out.array[inside].std() / out.array[inside].mean() < v.array[inside].std() / v.array[inside].mean())
        True
    """

    def __init__(self, *, shrink_factor: int = 4, iterations=(50, 50, 30)):
        self.shrink_factor = int(shrink_factor)
        self.iterations = [int(i) for i in iterations]

    def __call__(self, volume: Volume, mask: np.ndarray | None = None) -> Volume:
        array = volume.array.astype(np.float32)
        offset = float(min(0.0, array.min()))  # N4 works on positive intensities
        # SimpleITK arrays are (z, y, x); spacing only matters relatively here, so pass (x, y, z)
        image = sitk.GetImageFromArray(np.transpose(array - offset + 1e-3))
        image.SetSpacing([float(s) for s in volume.spacing])
        mask_img = sitk.GetImageFromArray(np.transpose((mask if mask is not None else array > 0).astype(np.uint8)))
        mask_img.CopyInformation(image)
        factor = max(1, min(self.shrink_factor, *[max(1, s // 8) for s in volume.shape]))
        small = sitk.Shrink(image, [factor] * 3) if factor > 1 else image
        small_mask = sitk.Shrink(mask_img, [factor] * 3) if factor > 1 else mask_img
        corrector = sitk.N4BiasFieldCorrectionImageFilter()
        corrector.SetMaximumNumberOfIterations(self.iterations)
        corrector.Execute(small, small_mask)
        log_bias = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image))
        corrected = (array - offset + 1e-3) / np.exp(np.transpose(log_bias)) + offset - 1e-3
        return volume.with_array(corrected.astype(np.float32))


class N4BiasCorrectiond(MapTransform):
    """Dictionary version of :class:`N4BiasCorrection` (image only, fitted inside ``data['mask']``)."""

    def __init__(self, keys=("image",), *, shrink_factor: int = 4, iterations=(50, 50, 30)):
        super().__init__(keys)
        self.transform = N4BiasCorrection(shrink_factor=shrink_factor, iterations=iterations)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        mask = d["mask"].array > 0 if "mask" in d else None
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], mask)
        add_step(d, {"name": "n4", "shrink_factor": self.transform.shrink_factor,
                     "iterations": self.transform.iterations})
        return d
