"""Reorient a volume to canonical axis codes (a permutation/flip of the array, no interpolation)."""

from __future__ import annotations

from monai.transforms import MapTransform, Transform

from medgen.io.geometry import reorient
from medgen.io.volume import Volume
from medgen.transforms._base import add_step, grid_of

VALID_CODES = ({"L", "R"}, {"P", "A"}, {"I", "S"})


def check_axcodes(codes: str) -> str:
    """Validate axis codes such as ``'RAS'`` or ``'LPS'``; returns them upper-cased."""
    codes = str(codes).upper()
    ok = len(codes) == 3 and all(sum(c in pair for c in codes) == 1 for pair in VALID_CODES)
    if not ok:
        raise ValueError(f"'{codes}' is not a valid orientation: use three letters, one of each of L/R, P/A, I/S "
                         "(e.g. RAS or LPS)")
    return codes


class Reorient(Transform):
    """Permute and flip a volume's axes so they point along ``axcodes`` (default RAS).

    The world position of every voxel is unchanged (the affine absorbs the permutation), so
    this step is exactly invertible. Oblique volumes get the closest axis codes; their
    direction cosines stay oblique.

    Args:
        axcodes: target orientation, e.g. ``"RAS"``.

    Examples:
        >>> import numpy as np
        >>> v = Volume(np.zeros((2, 3, 4), np.float32), np.diag([-1.0, -1.0, 2.0, 1.0]))
        >>> Reorient(axcodes="RAS")(v).orientation
        'RAS'
    """

    def __init__(self, *, axcodes: str = "RAS"):
        self.axcodes = check_axcodes(axcodes)

    def __call__(self, volume: Volume) -> Volume:
        if volume.orientation == self.axcodes:
            return volume
        return reorient(volume, self.axcodes)


class Reorientd(MapTransform):
    """Dictionary version of :class:`Reorient`: the same permutation for image, label and mask."""

    def __init__(self, keys=("image", "label", "mask"), *, axcodes: str = "RAS", allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.transform = Reorient(axcodes=axcodes)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        before = None
        for key in self.key_iterator(d):
            before = before or d[key].orientation
            d[key] = self.transform(d[key])
        ref = d.get("image")
        add_step(d, {"name": "reorient", "from": before, "axcodes": self.transform.axcodes,
                     **({"grid": grid_of(ref)} if ref is not None else {})})
        return d
