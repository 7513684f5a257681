"""Whole-volume renderings of CT anatomy for inspection and for other tools (``medgen synthesize``).

The same generative model the contrast-agnostic segmenter trains on
(:mod:`medgen.transforms.render`), applied to whole volumes: a label map (and optionally its CT)
becomes a class map (organ labels + HU tissue bands), the class map and the label are warped by
one random smooth transform (:mod:`medgen.transforms.random_warp`, nearest neighbour, so the label
stays exact), and the class map is rendered with random contrast, resolution, bias and noise.
The image and label come out on the input's own grid.

Examples:
    >>> import numpy as np
    >>> from medgen.io.volume import Volume
    >>> lab = np.zeros((24, 24, 12), np.uint8); lab[6:18, 6:18, 3:9] = 1
    >>> image, label = render_volume(Volume(lab, np.eye(4)), None, SynthesisConfig(), seed=0, n_label_ids=2)
    >>> image.shape == label.shape == (24, 24, 12), float(image.array.min()) >= -1
    (True, True)
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from medgen.config import StrictModel
from medgen.io.volume import Volume
from medgen.transforms.random_warp import WarpRanges, random_grid, warp_nearest
from medgen.transforms.render import DEFAULT_HU_BANDS, RandContrastRender, RenderConfig, render_classes

__all__ = ["SynthesisConfig", "render_volume", "warp_and_render"]


class SynthesisConfig(StrictModel):
    """How ``medgen synthesize`` renders volumes (configs/synth/*.yaml)."""

    #: HU edges of the tissue classes cut from the CT where it is unlabelled (with --ct)
    hu_bands: list[float] = list(DEFAULT_HU_BANDS)
    #: median filter (voxels) on the CT before it is cut into bands (1 = off; see render_classes)
    class_median: int = Field(3, ge=1)
    render: RenderConfig = RenderConfig()
    rotate_deg: float = Field(10.0, ge=0.0, le=180.0)
    scale: list[float] = [0.9, 1.1]
    elastic_vox: float = Field(2.0, ge=0.0)
    seed: int = 0


def warp_and_render(classes: np.ndarray, label: np.ndarray, grid: torch.Tensor, renderer: RandContrastRender,
                    gen: torch.Generator, *, present=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp a class map and its label with one ``grid`` (nearest neighbour), then render the classes.

    The renderer is re-seeded from ``gen`` first, so the rendering replays with the generator's
    state (a resumed training draws what an uninterrupted one would). ``present``: the classes
    that set the output scale (see :class:`RandContrastRender`). Returns ``(image, label)`` tensors
    on the grid's shape; the image on ``device`` (default CPU).
    """
    warped = warp_nearest(torch.from_numpy(np.stack([classes, label]).astype(np.int64))[None], grid)[0]
    renderer.set_random_state(seed=int(torch.randint(2**31 - 1, (), generator=gen)))
    classes_t = warped[0] if device is None else warped[0].to(device)
    return renderer(classes_t, present=present), warped[1]


def render_volume(label: Volume | None, ct: Volume | None, config: SynthesisConfig, *, seed: int,
                  n_label_ids: int) -> tuple[Volume, Volume]:
    """One random rendering of a case: ``(image in [-1, 1], warped label)`` on the case's grid.

    Args:
        label: the label map (or None: a CT's tissue bands only).
        ct: the CT in HU on the same grid (or None: labels only, background one class).
        config: rendering and warp ranges.
        seed: the rendering's seed (same seed, same output).
        n_label_ids: number of label ids (max id + 1): tissue classes are numbered after them.
    """
    ref = label if label is not None else ct
    classes = render_classes(None if label is None else np.asarray(label.array),
                             None if ct is None else np.asarray(ct.array, np.float32),
                             n_label_ids=n_label_ids, bands=config.hu_bands, median=config.class_median)
    lab = np.zeros(ref.shape, np.int64) if label is None else np.asarray(label.array)
    gen = torch.Generator().manual_seed(int(seed))
    grid = random_grid(tuple(ref.shape), gen, WarpRanges(rotate_deg=config.rotate_deg, scale=tuple(config.scale),
                                                          elastic_vox=config.elastic_vox))
    if ct is not None:  # the darkest HU band is air, numbered after the label ids
        renderer = RandContrastRender.for_tissue_bands(ref.spacing, config.render, air_class=n_label_ids,
                                                       bands=config.hu_bands)
    else:  # labels only: the background (class 0) is the air
        renderer = RandContrastRender(ref.spacing, config.render, dark_classes=[0])
    image, warped_label = warp_and_render(classes, lab, grid, renderer, gen)
    image = image.numpy().astype(np.float32)
    out_label = warped_label.numpy().astype(np.uint8 if n_label_ids <= 256 else np.uint16)
    return (Volume(image, ref.affine.copy(), None, None, {"modality": "MR", "synthetic": "rendered"}),
            Volume(out_label, ref.affine.copy()))
