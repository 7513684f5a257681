"""CT intensity step: clip to a HU window and scale to [-1, 1] (restored by ``unit_to_hu``)."""

from __future__ import annotations

import numpy as np
from monai.transforms import MapTransform, Transform

from medgen.io.volume import Volume
from medgen.transforms._base import add_step
from medgen.transforms.intensity import check_knots, hu_to_unit


class CTWindow(Transform):
    """Clip HU to ``window`` and map it onto [-1, 1] (linearly, or piecewise through more knots).

    Args:
        window: ``(lo, hi)`` in HU, or more strictly increasing HU knots.

    Examples:
        >>> v = Volume(np.array([-1200.0, 0.0, 500.0, 1500.0], np.float32).reshape(1, 1, 4), np.eye(4))
        >>> CTWindow(window=(-1000, 1000))(v).array.ravel().tolist()
        [-1.0, 0.0, 0.5, 1.0]
    """

    def __init__(self, *, window=(-1000.0, 1000.0)):
        self.window = check_knots(window)

    def __call__(self, volume: Volume) -> Volume:
        return volume.with_array(hu_to_unit(volume.array.astype(np.float32, copy=False), self.window))


class CTWindowd(MapTransform):
    """Dictionary version of :class:`CTWindow` (image only); records the window."""

    def __init__(self, keys=("image",), *, window=(-1000.0, 1000.0)):
        super().__init__(keys)
        self.transform = CTWindow(window=window)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            array = d[key].array
            clipped = float(np.mean((array < self.transform.window[0]) | (array > self.transform.window[-1])))
            d[key] = self.transform(d[key])
        add_step(d, {"name": "ct_window", "window": list(self.transform.window), "fraction_clipped": round(clipped, 6)})
        return d
