"""Progress bars that respect ``-q`` (quiet) and non-interactive output."""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0):
    """A tqdm bar on stderr, hidden when logging is quieter than INFO (``-q``)."""
    quiet = logging.getLogger("medgen").getEffectiveLevel() > logging.INFO
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=quiet,
                file=sys.stderr, dynamic_ncols=True, leave=False)
