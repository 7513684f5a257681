"""MR intensity step: robust percentile normalisation to [-1, 1], measured inside the body."""

from __future__ import annotations

import numpy as np
from monai.transforms import MapTransform, Transform

from medgen.errors import InputError
from medgen.io.volume import Volume
from medgen.transforms._base import add_step
from medgen.transforms.intensity import robust_normalize, unit_to_range


class MRNormalize(Transform):
    """Map the ``lower``/``upper`` intensity percentiles (inside ``mask``) onto [-1, 1] and clip.

    Examples:
        >>> v = Volume(np.linspace(0, 100, 101, dtype=np.float32).reshape(1, 1, 101), np.eye(4))
        >>> out, (lo, hi) = MRNormalize(lower=0, upper=100)(v)
        >>> float(out.array.min()), float(out.array.max()), lo, hi
        (-1.0, 1.0, 0.0, 100.0)
    """

    def __init__(self, *, lower: float = 0.5, upper: float = 99.5):
        self.lower = float(lower)
        self.upper = float(upper)

    def __call__(self, volume: Volume, mask: np.ndarray | None = None) -> tuple[Volume, tuple[float, float]]:
        try:
            array, (p_lo, p_hi) = robust_normalize(volume.array, mask, self.lower, self.upper)
        except ValueError as exc:
            raise InputError(f"cannot be normalised: {exc}", path=volume.name,
                             fix="check that the volume is a real MR scan (not constant, not a mask)") from exc
        return volume.with_array(array.astype(np.float32)), (p_lo, p_hi)


class MRNormalized(MapTransform):
    """Dictionary version of :class:`MRNormalize`: percentiles inside ``data['mask']`` when present."""

    def __init__(self, keys=("image",), *, lower: float = 0.5, upper: float = 99.5, use_mask: bool = True):
        super().__init__(keys)
        self.transform = MRNormalize(lower=lower, upper=upper)
        self.use_mask = use_mask

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        mask = d["mask"].array > 0 if (self.use_mask and "mask" in d) else None
        for key in self.key_iterator(d):
            d[key], (p_lo, p_hi) = self.transform(d[key], mask)
        add_step(d, {"name": "mr_normalize", "lower_percentile": self.transform.lower,
                     "upper_percentile": self.transform.upper, "p_lo": p_lo, "p_hi": p_hi,
                     "in_mask": mask is not None})
        return d


def restore_mr_range(array: np.ndarray, p_lo: float, p_hi: float) -> np.ndarray:
    """Undo :class:`MRNormalize` for values inside [-1, 1] (clipped values stay clipped)."""
    return unit_to_range(array, p_lo, p_hi)

