"""What a segmentation network expects as input: grid, orientation, intensity mapping, patch.

:class:`InputSpec` is the contract between training (which prepares patches with it), the
bundle's ``medgen.json`` (which stores it) and inference (which prepares a scan with it). It lives
in its own module, below :mod:`medgen.models.bundle` and :mod:`medgen.models.segmenters`, so that
both can use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """What a network expects as input.

    Attributes:
        spacing: voxel size (mm) along the reoriented axes; ``None`` keeps the input spacing.
        a_min, a_max, b_min, b_max, clip: HU ``[a_min, a_max]`` map linearly to ``[b_min, b_max]``
            (MONAI ``ScaleIntensityRange`` semantics).
        intensity: ``"window"`` (the fixed HU window above: a CT segmenter) or ``"percentile"``
            (each image's own ``percentiles`` map onto ``[b_min, b_max]``: a contrast-agnostic
            segmenter that takes MR of any contrast, or CT, as it comes).
        percentiles: lower and upper percentile of the ``"percentile"`` mapping.
        patch_size: sliding-window size in voxels.
        orientation: axis codes the network was trained in.
        overlap: sliding-window overlap.
    """

    spacing: tuple[float, float, float] | None = None
    a_min: float = -1000.0
    a_max: float = 1000.0
    b_min: float = -1.0
    b_max: float = 1.0
    clip: bool = True
    patch_size: tuple[int, int, int] = (96, 96, 96)
    orientation: str = "RAS"
    overlap: float = 0.25
    intensity: str = "window"
    percentiles: tuple[float, float] = (0.5, 99.5)

    def scale(self, hu: np.ndarray) -> np.ndarray:
        """Image (HU, or any MR for ``intensity="percentile"``) -> network input range."""
        if self.intensity == "percentile":
            values = np.asarray(hu, np.float32)
            lo, hi = (float(v) for v in np.percentile(values, list(self.percentiles)))
            hi = hi if hi > lo else lo + 1.0
            out = np.clip((values - lo) / (hi - lo), 0.0, 1.0) * (self.b_max - self.b_min) + self.b_min
            return out.astype(np.float32, copy=False)
        out = (np.asarray(hu, np.float32) - self.a_min) / (self.a_max - self.a_min)
        out = out * (self.b_max - self.b_min) + self.b_min
        if self.clip:
            out = np.clip(out, min(self.b_min, self.b_max), max(self.b_min, self.b_max))
        return out.astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        return {"spacing": None if self.spacing is None else list(self.spacing), "a_min": self.a_min,
                "a_max": self.a_max, "b_min": self.b_min, "b_max": self.b_max, "clip": self.clip,
                "patch_size": list(self.patch_size), "orientation": self.orientation, "overlap": self.overlap,
                "intensity": self.intensity, "percentiles": list(self.percentiles)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "InputSpec":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if known.get("spacing") is not None:
            known["spacing"] = tuple(float(s) for s in known["spacing"])
        if "patch_size" in known:
            ps = known["patch_size"]
            known["patch_size"] = tuple(int(p) for p in (ps if isinstance(ps, (list, tuple)) else [ps] * 3))
        if "percentiles" in known:
            known["percentiles"] = tuple(float(p) for p in known["percentiles"])
        return cls(**known)
