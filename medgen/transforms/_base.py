"""Plumbing shared by medgen's dictionary transforms (MONAI ``MapTransform`` subclasses).

The preprocessing data item is a dict::

    {"image": Volume, "label": Volume (optional), "mask": Volume (after BodyMaskd),
     "record": {"steps": [...]}}

Array transforms (``Reorient``, ``ResampleToSpacing``...) do the work on one :class:`Volume`;
the dictionary versions (``...d``) route keys and append one JSON-serialisable step to
``record["steps"]`` so every operation can be undone or audited later.
"""

from __future__ import annotations

import numpy as np

from medgen.io.volume import Volume

#: Keys holding label-like volumes (nearest-neighbour interpolation, integer dtype).
NEAREST_KEYS = ("label", "mask")


def grid_of(volume: Volume) -> dict:
    """The grid of a volume as JSON-friendly lists."""
    return {"shape": [int(s) for s in volume.shape], "affine": np.asarray(volume.affine, float).tolist(),
            "spacing": [round(float(s), 6) for s in volume.spacing], "orientation": volume.orientation}


def add_step(data: dict, step: dict) -> None:
    """Append a step to ``data['record']['steps']`` (creating the record if needed)."""
    data.setdefault("record", {}).setdefault("steps", []).append(step)


def interpolation_order(key: str) -> int:
    """0 (nearest) for label/mask keys, 1 (linear) for images."""
    return 0 if key in NEAREST_KEYS else 1
