"""QC picture of a chain run: the heading (title + label legend) must stay inside the picture."""

from __future__ import annotations

import numpy as np

from medgen.inference.qc import QC_LINE_CHARS, qc_heading, save_chain_qc
from medgen.io.volume import Volume

NAMES = {0: "background", 1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right", 5: "stomach", 6: "pancreas",
         7: "aorta", 8: "inferior_vena_cava", 9: "vertebrae", 10: "autochthon", 11: "iliopsoas"}


def test_qc_heading_wraps_long_label_lists():
    heading = qc_heading("example_mr_sm: translator -> segmenter", list(range(1, 12)), NAMES)
    lines = heading.split("\n")
    assert lines[0] == "example_mr_sm: translator -> segmenter"
    assert len(lines) >= 3  # 11 labels do not fit one line
    assert all(len(line) <= QC_LINE_CHARS for line in lines)
    for i in range(1, 12):
        assert f"{i}:{NAMES[i]}" in heading  # no entry is broken or lost
    assert qc_heading("", [], NAMES) == "no labels found"


def test_qc_picture_heading_is_not_clipped(tmp_path, monkeypatch):
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
    top_of_panels = max(ax.get_window_extent(renderer).y1 for ax in fig.axes)
    assert box.y0 >= top_of_panels - 1  # the heading does not cover the panels
