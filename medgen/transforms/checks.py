"""Plausibility checks run before preprocessing, so wrong inputs fail with a clear reason.

A constant volume has nothing to normalise. A CT must contain Hounsfield units: air around
-1000 HU and fat around -100 HU, so a "CT" whose lowest value is above ``-200`` is almost
certainly an MR (MR magnitudes are non-negative) or a CT stored without its rescale intercept.
Conversely an MR has no strongly negative intensities, so an "MR" with more than 1% of its
voxels below -500 is almost certainly a CT in HU.
"""

from __future__ import annotations

import numpy as np

from medgen.errors import InputError
from medgen.io.volume import Volume

#: A CT's lowest value must lie below this (air is about -1000 HU, fat about -100 HU).
CT_MAX_MINIMUM_HU = -200.0
#: An MR with more than this fraction of voxels below -500 looks like a CT in HU.
MR_MAX_NEGATIVE_FRACTION = 0.01


def check_not_constant(volume: Volume) -> None:
    """Raise :class:`InputError` for a volume whose voxels all have the same value."""
    lo, hi = float(volume.array.min()), float(volume.array.max())
    if hi <= lo:
        raise InputError(f"is a constant volume (every voxel is {lo:g})", path=volume.name,
                         fix="check the export: the image holds no information")


def check_modality(volume: Volume, modality: str) -> None:
    """Raise :class:`InputError` when the intensities do not fit ``modality`` ('ct' or 'mr')."""
    array = volume.array
    if modality == "ct":
        lowest = float(array.min())
        if lowest > CT_MAX_MINIMUM_HU:
            raise InputError(
                f"looks like MR, not CT: no values below {CT_MAX_MINIMUM_HU:g} HU (lowest {lowest:g}), "
                "but a CT has air at about -1000 HU and fat at about -100 HU", path=volume.name,
                fix="pass it with --modality mr, or check that the CT's rescale slope/intercept were applied "
                    "(or disable the check with --set check_intensities=false)")
    elif modality == "mr":
        negative = float(np.mean(array < -500.0))
        if negative > MR_MAX_NEGATIVE_FRACTION:
            raise InputError(
                f"looks like CT, not MR: {100 * negative:.1f}% of voxels are below -500 (air in HU), "
                "but MR intensities are not strongly negative", path=volume.name,
                fix="pass it with --modality ct (or disable the check with --set check_intensities=false)")
    else:
        raise ValueError(f"unknown modality {modality!r}")
