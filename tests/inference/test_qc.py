"""QC picture of a chain run: heading and colour legend stay inside the picture, colours follow the ids."""

from __future__ import annotations

import numpy as np

from medgen.inference.qc import QC_LINE_CHARS, qc_heading, save_chain_qc
from medgen.io.volume import Volume
from medgen.viz import label_colour, label_overlay

NAMES = {0: "background", 1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right", 5: "stomach", 6: "pancreas",
         7: "aorta", 8: "inferior_vena_cava", 9: "vertebrae", 10: "autochthon", 11: "iliopsoas"}


def test_qc_heading_wraps_long_titles_and_says_when_nothing_was_found():
    title = "a very long case name " * 8 + ": translator -> segmenter"
    lines = qc_heading(title, [1, 2]).split("\n")
    assert len(lines) >= 2 and all(len(line) <= QC_LINE_CHARS for line in lines)
    assert " ".join(lines) == " ".join(title.split())
    assert qc_heading("case", []) == "case\nno labels found"


def test_every_label_id_has_its_own_overlay_colour():
    # ids beyond 32 used to saturate to one colour; tab20 cycles every 20 ids
    assert label_colour(33) != label_colour(34)
    assert label_colour(1) == label_colour(21)
    rgba = label_overlay(np.array([[0, 1], [33, 117]]), alpha=0.5)
    assert rgba[0, 0, 3] == 0 and (rgba[[0, 1, 1], [1, 0, 1], 3] == 0.5).all()
    np.testing.assert_allclose(rgba[1, 0, :3], label_colour(33)[:3])
    np.testing.assert_allclose(rgba[1, 1, :3], label_colour(117)[:3])


def test_qc_picture_has_heading_and_colour_legend_inside(tmp_path, monkeypatch):
    import medgen.viz as viz
    figures = []
    real_close = viz.plt.close
    monkeypatch.setattr(viz.plt, "close", lambda fig=None: (figures.append(fig), real_close(fig)))
    rng = np.random.default_rng(0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    mr = Volume(rng.random((24, 20, 8)).astype(np.float32) * 100, affine)
    mask = Volume((np.arange(24 * 20 * 8).reshape(24, 20, 8) % 12).astype(np.uint8), affine)
    path = save_chain_qc(tmp_path / "qc.png", mr, None, mask, NAMES, title="case: translator -> segmenter")
    assert path.stat().st_size > 1000
    fig = figures[-1]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    panels = [ax.get_window_extent(renderer) for ax in fig.axes]
    assert box.y0 >= max(p.y1 for p in panels) - 1  # the heading does not cover the panels
    [legend] = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == [f"{i}:{NAMES[i]}" for i in range(1, 12)]  # every present label, in id order
    for i, handle in enumerate(legend.legend_handles, start=1):
        np.testing.assert_allclose(handle.get_facecolor()[:3], label_colour(i)[:3])
    lbox = legend.get_window_extent(renderer)
    assert lbox.x0 >= 0 and lbox.x1 <= fig.bbox.x1 and lbox.y0 >= 0
    assert lbox.y1 <= min(p.y0 for p in panels) + 1  # below the panels, not over them
