"""Pictures for people: image grids, QC overlays and loss curves, displayed like a radiologist expects.

Display conventions (applied to RAS-reoriented volumes, so any input orientation shows the same):

* axial: viewed from the feet, anterior at the top, the patient's right on the viewer's left;
* coronal: superior at the top, the patient's right on the viewer's left;
* sagittal: superior at the top, anterior on the viewer's left;
* the pixel aspect ratio follows the voxel spacing, so anisotropic scans are not squashed;
* CT uses a fixed HU window (soft tissue by default), MR a robust percentile window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from medgen.io.atomic import atomic_path  # noqa: E402
from medgen.io.geometry import reorient  # noqa: E402
from medgen.io.volume import Volume  # noqa: E402

PLANES = ("axial", "coronal", "sagittal")
CT_SOFT_TISSUE = (-160.0, 240.0)  # window level 40, width 400 HU
CT_WIDE = (-1000.0, 1000.0)


@dataclass
class Panel:
    """One picture in a grid: a 2D image, how to window it, an optional label overlay."""

    image: np.ndarray
    aspect: float = 1.0
    window: tuple[float, float] | None = None
    cmap: str = "gray"
    overlay: np.ndarray | None = None
    title: str = ""


def percentile_window(array: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> tuple[float, float]:
    """A robust display window over the non-background voxels."""
    values = array[array > array.min()] if np.any(array > array.min()) else array.ravel()
    lo, hi = np.percentile(values, [lower, upper]) if values.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1.0)


def plane_slice(volume: Volume, plane: str, index: int | None = None) -> tuple[np.ndarray, float]:
    """A 2D display slice of ``volume`` in ``plane`` and its pixel aspect ratio (height/width).

    Args:
        volume: any orientation; it is reoriented to RAS first (no interpolation).
        plane: ``axial``, ``coronal`` or ``sagittal``.
        index: slice index along the plane's normal in RAS order (default: the middle).
    """
    ras = reorient(volume, "RAS")
    sx, sy, sz = ras.spacing
    arr = ras.array
    if plane == "axial":
        k = arr.shape[2] // 2 if index is None else index
        return arr[::-1, ::-1, k].T, sy / sx  # rows: anterior->posterior, cols: right->left
    if plane == "coronal":
        j = arr.shape[1] // 2 if index is None else index
        return arr[::-1, j, ::-1].T, sz / sx  # rows: superior->inferior, cols: right->left
    if plane == "sagittal":
        i = arr.shape[0] // 2 if index is None else index
        return arr[i, ::-1, ::-1].T, sz / sy  # rows: superior->inferior, cols: anterior->posterior
    raise ValueError(f"unknown plane {plane!r}; use one of {PLANES}")


def label_colormap(n_labels: int = 32) -> ListedColormap:
    """Distinct colours per label id; id 0 is transparent."""
    base = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    colours = np.vstack([[0, 0, 0, 0]] + [base[i % 20] for i in range(n_labels)])
    return ListedColormap(colours)


def volume_panels(volume: Volume, *, window: tuple[float, float] | None = None, overlay: Volume | None = None,
                  planes=PLANES, title: str = "", centre: tuple[int, int, int] | None = None) -> list[Panel]:
    """Three orthogonal panels of a volume (optionally with a label overlay on the same grid).

    Args:
        centre: RAS voxel indices of the slices to show (default: the middle; e.g. the centroid
            of a mask to show where it is).
    """
    if window is None:
        window = percentile_window(volume.array)
    panels = []
    for n, plane in enumerate(planes):
        index = None if centre is None else centre[{"axial": 2, "coronal": 1, "sagittal": 0}[plane]]
        image, aspect = plane_slice(volume, plane, index)
        over = plane_slice(overlay, plane, index)[0] if overlay is not None else None
        panels.append(Panel(image, aspect, window, overlay=over, title=f"{title} {plane}".strip() if n == 0 or title else plane))
    return panels


def save_panels_png(path: str | Path, rows: list[list[Panel]], *, title: str = "", panel_size: float = 3.0,
                    dpi: int = 100) -> Path:
    """Save a grid of panels (one list per row) as a PNG, atomically."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    title_h = 0.2 * (title.count("\n") + 1) + 0.2 if title else 0.0  # inches reserved above the panels
    fig_h = panel_size * n_rows + title_h
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel_size * n_cols, fig_h), squeeze=False)
    cmap_labels = label_colormap()
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(row):
                continue
            p = row[c]
            lo, hi = p.window if p.window is not None else percentile_window(p.image)
            ax.imshow(p.image, cmap=p.cmap, vmin=lo, vmax=hi, aspect=p.aspect, interpolation="nearest")
            if p.overlay is not None:
                ov = np.ma.masked_where(p.overlay == 0, p.overlay)
                ax.imshow(ov, cmap=cmap_labels, vmin=0, vmax=cmap_labels.N - 1, alpha=0.45, aspect=p.aspect,
                          interpolation="nearest")
            if p.title:
                ax.set_title(p.title, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - title_h / fig_h))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return Path(path)


def save_curves_png(path: str | Path, history: list[dict], *, keys: list[str] | None = None, phase: str = "train",
                    title: str = "") -> Path:
    """Plot metric curves from ``metrics.jsonl`` rows (see :func:`medgen.training.loop.read_history`)."""
    rows = [r for r in history if r.get("phase") == phase]
    if keys is None:
        keys = sorted({k for r in rows for k in r if k not in ("step", "phase", "steps_per_s")})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key)
    ax.set_xlabel("step")
    ax.set_title(title or f"{phase} metrics", fontsize=10)
    if keys:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
