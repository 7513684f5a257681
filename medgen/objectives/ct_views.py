"""Extra HU-window views of a CT batch for the CT discriminator (multi-window input).

Why: the translator works in a wide HU window (e.g. [-1000, 1000] -> [-1, 1]) so that air and
bone are representable, but there soft tissue is compressed: fat (-100 HU) and muscle (+50 HU)
differ by 0.075 of a unit range of 2. A discriminator that sees only that view is dominated by
the body outline and bone, and cannot insist on the soft-tissue levels; a synthetic CT with fat
at muscle level then passes. Radiologists read CT through several windows for the same reason.
Giving D_CT the same image through a soft-tissue window as well (extra channels) makes those
contrasts as visible to it as the body outline, and its gradient reaches G through both views.

Examples:
    >>> import torch
    >>> views = WindowedViews(ct_window=(-1000, 1000), windows=[(-200, 200)])
    >>> x = torch.tensor([-1.0, -0.1, 0.0, 0.05, 1.0]).reshape(1, 1, 5)   # -1000, -100, 0, 50, 1000 HU
    >>> views(x)[0, 1].tolist()                                            # the soft-tissue view
    [-1.0, -0.5, 0.0, 0.25, 1.0]
"""

from __future__ import annotations

import torch
from torch import nn

from medgen.transforms.intensity import unit_to_hu

__all__ = ["WindowedViews"]


class WindowedViews(nn.Module):
    """``x`` (translator unit range) -> ``cat([x, view_1, ..., view_n], dim=1)``.

    Args:
        ct_window: the translator's CT window (how its unit range maps to HU).
        windows: ``(lo, hi)`` HU windows; each view maps ``[lo, hi]`` linearly onto [-1, 1] and
            clips outside (so a view has no gradient where it saturates; the first channel,
            the input itself, still has).
    """

    def __init__(self, ct_window, windows):
        super().__init__()
        self.ct_window = tuple(float(w) for w in ct_window)
        self.windows = [(float(lo), float(hi)) for lo, hi in windows]
        for lo, hi in self.windows:
            if not hi > lo:
                raise ValueError(f"a discriminator HU window needs lo < hi, got {[lo, hi]}")

    @property
    def factor(self) -> int:
        """Output channels per input channel."""
        return 1 + len(self.windows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hu = unit_to_hu(x.float(), self.ct_window)
        views = [x] + [((hu - lo) * (2.0 / (hi - lo)) - 1.0).clamp(-1.0, 1.0).to(x.dtype) for lo, hi in self.windows]
        return torch.cat(views, dim=1)
