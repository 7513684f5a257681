"""Quality-control picture of one chain run: MR | synthetic CT | mask on the MR, three planes.

Rows are the MR, the synthetic CT (soft-tissue window) and the MR with the mask overlaid;
columns are axial, coronal and sagittal slices through the mask's centre of mass (so the
segmented organs are in view), displayed in radiological convention with the voxel aspect ratio
(:mod:`medgen.viz`). The title names the case; a colour legend below lists the ids and names of
the labels present (every id has its own colour, :func:`medgen.viz.label_colour`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medgen.io.geometry import reorient
from medgen.io.volume import Volume

QC_LINE_CHARS = 90  # heading characters a line (three 3-inch panels at 10 pt)


def mask_centre(mask: Volume) -> tuple[int, int, int] | None:
    """RAS voxel indices of the mask's centre of mass (None for an empty mask)."""
    ras = reorient(mask, "RAS")
    idx = np.argwhere(ras.array > 0)
    if idx.size == 0:
        return None
    centre = np.median(idx, axis=0).astype(int)
    return tuple(int(c) for c in centre)


def save_chain_qc(path: str | Path, mr: Volume, sct: Volume | None, mask: Volume, label_names: dict[int, str], *,
                  title: str = "") -> Path:
    """Write the QC PNG (atomically) and return its path."""
    from medgen.viz import CT_SOFT_TISSUE, save_panels_png, volume_panels

    centre = mask_centre(mask)
    rows = [volume_panels(mr, title="MR", centre=centre)]
    if sct is not None:
        rows.append(volume_panels(sct, window=CT_SOFT_TISSUE, title="synthetic CT", centre=centre))
    rows.append(volume_panels(mr, overlay=mask, title="mask on MR", centre=centre))
    present = [int(i) for i in np.unique(mask.array) if i != 0]
    legend = {i: str(label_names.get(i, i)) for i in present}
    heading = qc_heading(title, present)
    return save_panels_png(path, rows, title=heading, legend=legend)


def qc_heading(title: str, present: list[int], *, width: int = QC_LINE_CHARS) -> str:
    """The QC picture's heading: the title wrapped to ``width`` characters a line (so it stays
    inside the picture), or "no labels found" under it when the mask is empty."""
    import textwrap
    lines = textwrap.wrap(title, width=width, break_long_words=False, break_on_hyphens=False) if title else []
    if not present:
        lines.append("no labels found")
    return "\n".join(lines)
