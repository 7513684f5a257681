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
    """Distinct colours per label id; id 0 is transparent (the colours of :func:`label_colour`)."""
    colours = np.vstack([[0, 0, 0, 0]] + [label_colour(i) for i in range(1, n_labels + 1)])
    return ListedColormap(colours)


def label_colour(label_id: int) -> tuple[float, float, float, float]:
    """The overlay colour (RGBA) of a label id: tab20's colours, cycling every 20 ids, so every id
    has one (TotalSegmentator's ids reach 117)."""
    r, g, b = plt.get_cmap("tab20").colors[(int(label_id) - 1) % 20]
    return float(r), float(g), float(b), 1.0


def label_overlay(labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGBA picture of a 2D label slice in :func:`label_colour` colours (0 stays transparent)."""
    table = np.array([label_colour(i)[:3] for i in range(1, 21)])
    ids = np.asarray(labels).astype(np.int64)
    rgba = np.zeros((*ids.shape, 4))
    inside = ids > 0
    rgba[inside, :3] = table[(ids[inside] - 1) % 20]
    rgba[inside, 3] = alpha
    return rgba


def label_legend(fig, label_names: dict[int, str], *, ncol: int = 5, fontsize: int = 7):
    """A colour legend ``id:name`` of the labels in ``label_names`` (background 0 left out), in id
    order, along the bottom of ``fig``; returns it (or None when there is nothing to show)."""
    from matplotlib.patches import Patch
    handles = [Patch(color=label_colour(i), alpha=0.7, label=f"{i}:{name}") for i, name in sorted(label_names.items())
               if i]
    if not handles:
        return None
    return fig.legend(handles=handles, loc="lower center", ncol=min(ncol, len(handles)), fontsize=fontsize,
                      frameon=False)


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
                    dpi: int = 100, legend: dict[int, str] | None = None) -> Path:
    """Save a grid of panels (one list per row) as a PNG, atomically.

    ``legend``: label id -> name of the overlaid labels, drawn as a colour legend below the panels.
    """
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    title_h = 0.2 * (title.count("\n") + 1) + 0.2 if title else 0.0  # inches reserved above the panels
    ncol = 2 * n_cols
    legend_h = 0.22 * -(-len(legend) // ncol) + 0.1 if legend else 0.0  # inches reserved below
    fig_h = panel_size * n_rows + title_h + legend_h
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel_size * n_cols, fig_h), squeeze=False)
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
                ax.imshow(label_overlay(p.overlay), aspect=p.aspect, interpolation="nearest")
            if p.title:
                ax.set_title(p.title, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    if legend:
        label_legend(fig, legend, ncol=ncol)
    fig.tight_layout(rect=(0, legend_h / fig_h, 1, 1 - title_h / fig_h))
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
