"""Exact (rendered MR-like image, real CT) training pairs for the synthesis-supervised translator.

An unpaired translator never sees which CT value belongs to which MR voxel. Rendering gives that
pairing for free: a CT's class map (its organ labels and/or HU tissue bands,
:func:`medgen.transforms.render.render_classes`) is rendered into an image of random MR-like
contrast (:class:`medgen.transforms.render.RandContrastRender`), and the CT it came from is the
exact target, voxel for voxel.

One sample:

1. a centre is drawn exactly as :class:`medgen.data.sampling.VolumeSampler` draws CT centres
   (body bias, optional intensity balance);
2. a 3D *block* around it is cut from the class map, the CT and the body mask: the sample plus
   ``margin`` voxels on each side, so blur and the simulated thick slices (down- and up-sampling
   along a random axis) see real neighbours instead of padding;
3. the block's classes are rendered with parameters drawn for this sample; the output scale is
   set by every class present in the *whole case's* body (``present``), so a block is normalised
   as the whole MR would be at inference (the darkest class mean -> -1, the brightest -> +1,
   which is what the MR recipe's body-percentile normalisation does to a real scan);
4. the same random flips (and, with ``warp``, one random smooth warp of the block: rotation,
   scaling, elastic) are applied to the image, the CT and the mask, and the sample (a 2.5D
   stack of ``context`` axial slices, or a 3D patch) is cut from the block's centre.

All randomness comes from the sampler's torch generator (the renderer is re-seeded from it for
every sample), so :meth:`SynthPairSampler.state_dict` alone makes a resumed run draw the samples
an uninterrupted one would have drawn.

Examples:
    >>> import numpy as np
    >>> from medgen.transforms.render import render_classes
    >>> ct = np.full((40, 40, 12), -1.0, np.float32); ct[8:32, 8:32, :] = 0.05; ct[16:24, 16:24, :] = 0.6
    >>> classes = render_classes(None, ct * 1000.0, n_label_ids=0)
    >>> s = SynthPairSampler([ct], [classes], spacing=(2, 2, 3), patch_size=(16, 16), context=3, seed=0)
    >>> pair = s.sample(2)
    >>> tuple(pair.image.shape), tuple(pair.target.shape), bool(pair.image.abs().max() <= 1)
    ((2, 3, 16, 16), (2, 3, 16, 16), True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medgen.data.sampling import VolumeSampler, _crop_padded
from medgen.transforms.random_warp import WarpRanges, random_grid, warp_nearest
from medgen.transforms.render import RandContrastRender, RenderConfig, cortical_bands
from medgen.data.mr_physics import physics_means

__all__ = ["SynthPair", "SynthPairSampler"]


@dataclass
class SynthPair:
    """A batch of exact pairs: ``image`` (rendered, [-1, 1]), ``target`` (the CT, unit range),
    ``mask`` (CT body, 0/1) and ``classes`` (the rendered class ids), all in the sampler's layout."""

    image: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    classes: torch.Tensor

    def to(self, device) -> "SynthPair":
        return SynthPair(*(t.to(device, non_blocking=True) for t in (self.image, self.target, self.mask, self.classes)))


class SynthPairSampler(VolumeSampler):
    """Draw rendered-image / CT pairs from CT volumes and their class maps.

    Args:
        volumes: CTs in the translator's unit range (RAS voxel order).
        classes: one integer class map per CT, same shapes (see ``render_classes``).
        masks: body masks (default: computed from the CTs).
        spacing: voxel size in mm (the renderer expresses blur and resolution in mm).
        render: the renderer's parameter ranges.
        dark_classes: class ids rendered dark most of the time (air); the first is the darkest HU
            band's, and with ``hu_bands`` the cortical-bone band after it renders dark as often as
            ``render.bone_dark_prob`` says.
        margin: voxels rendered around each sample on each side, per axis (x, y, z).
        device: where rendering runs (the class blocks are moved there; outputs come back to CPU).
        **kwargs: :class:`VolumeSampler` options (``spatial_dims``, ``patch_size``, ``context``,
            ``foreground_prob``, ``flip_axes``, ``intensity_balance``, ``seed``). No gamma: the
            renderer draws its own.
    """

    def __init__(self, volumes: Sequence[np.ndarray], classes: Sequence[np.ndarray],
                 masks: Sequence[np.ndarray] | None = None, *, spacing: Sequence[float],
                 render: RenderConfig | None = None, dark_classes: Sequence[int] = (),
                 margin: Sequence[int] = (8, 8, 8), device: torch.device | str = "cpu",
                 hu_bands: Sequence[float] | None = None, physics_prob: float = 0.0,
                 warp: WarpRanges | None = None, **kwargs):
        if kwargs.get("gamma_range"):
            raise ValueError("the renderer draws its own gamma; gamma_range is for real MR samplers")
        super().__init__(volumes, masks, **kwargs)
        if len(classes) != len(self.volumes):
            raise ValueError(f"{len(classes)} class maps for {len(self.volumes)} CTs")
        self.classes = [np.ascontiguousarray(c, dtype=np.int16) for c in classes]
        for c, v in zip(self.classes, self.volumes):
            if c.shape != v.shape:
                raise ValueError(f"class map {c.shape} and CT {v.shape} must have the same shape")
        if len(margin) != 3 or min(margin) < 0:
            raise ValueError(f"margin needs 3 non-negative voxel counts, got {margin}")
        self.margin = tuple(int(m) for m in margin)
        self.device = torch.device(device)
        # the class of air: what lies outside the CT (the renderer renders it dark); the band
        # classes are numbered from it on, so cortical bone's band is air's class + its band index
        self.fill_class = int(dark_classes[0]) if len(dark_classes) else 0
        void = [self.fill_class + b for b in cortical_bands(hu_bands)] if hu_bands is not None and dark_classes else []
        self.renderer = RandContrastRender(spacing, render, dark_classes=dark_classes, void_classes=void)
        # classes inside each case's body set the rendering's output scale (as the whole scan would)
        self.present = [sorted(int(k) for k in np.unique(c[m])) or [0] for c, m in zip(self.classes, self.masks)]
        # the physical contrast prior (medgen.data.mr_physics) for the HU-band classes, drawn for
        # a share of the samples; the band classes are numbered from the air class on
        if physics_prob > 0 and hu_bands is None:
            raise ValueError("physics_prob needs the hu_bands the classes were cut with")
        self.hu_bands = list(hu_bands) if hu_bands is not None else None
        self.physics_prob = float(physics_prob)
        self.warp = warp

    def _render(self, classes: torch.Tensor, present: list[int]) -> torch.Tensor:
        """One rendering: the renderer's own random draw, or (``physics_prob``) its draw with the
        band classes' means replaced by a random spin-echo acquisition's."""
        seed = self._randint(2**31 - 1)
        physics = self.physics_prob > 0 and self._rand() < self.physics_prob
        self.renderer.set_random_state(seed=seed)
        if not physics:
            return self.renderer(classes, present=present)
        n_classes = max(int(classes.max()), max(present)) + 1
        self.renderer.randomize(n_classes)
        means = physics_means(self.hu_bands, self.renderer.R)
        bands = np.arange(self.fill_class, min(self.fill_class + len(means), n_classes))
        self.renderer.params["means"][bands] = means[: len(bands)]
        return self.renderer(classes, randomize=False, present=present)

    def _block_size(self) -> tuple[int, int, int]:
        inner = self.patch_size + (self.context,) if self.spatial_dims == 2 else self.patch_size
        return tuple(s + 2 * m for s, m in zip(inner, self.margin))

    def _inner(self, block: np.ndarray) -> np.ndarray:
        """The sample cut from a block's centre, in the sampler's layout ((k, X, Y) or (1, X, Y, Z))."""
        mx, my, mz = self.margin
        X, Y, Z = block.shape
        inner = block[mx:X - mx, my:Y - my, mz:Z - mz]
        return np.moveaxis(inner, 2, 0) if self.spatial_dims == 2 else inner[None]

    def _warp(self, blocks: list[np.ndarray]) -> list[np.ndarray]:
        """One random smooth warp of a block's class map, CT and body mask together: classes and
        mask by nearest neighbour (they stay exact ids / 0-1), the CT linearly; the pair stays exact."""
        grid = random_grid(blocks[0].shape, self.generator, self.warp)
        classes, mask = warp_nearest(torch.from_numpy(np.stack([blocks[0], blocks[2]]).astype(np.int64))[None], grid)[0]
        ct = F.grid_sample(torch.from_numpy(np.ascontiguousarray(blocks[1], dtype=np.float32))[None, None], grid, mode="bilinear",
                           padding_mode="border", align_corners=False)[0, 0]
        return [classes.numpy().astype(blocks[0].dtype), ct.numpy(), mask.numpy().astype(np.float32)]

    def sample(self, batch_size: int) -> SynthPair:  # type: ignore[override]
        """``batch_size`` exact pairs, each rendered with its own random parameters."""
        size = self._block_size()
        images, targets, masks, classes = [], [], [], []
        for _ in range(batch_size):
            index = self._randint(len(self.volumes))
            centre = self._centre(index)
            blocks = [_crop_padded(self.classes[index], centre, size, self.fill_class),
                      _crop_padded(self.volumes[index], centre, size, self.fill),
                      _crop_padded(self.masks[index].astype(np.float32), centre, size, 0.0)]
            for axis in self.flip_axes:
                if self._rand() < 0.5:
                    blocks = [np.flip(b, axis) for b in blocks]
            if self.warp is not None:
                blocks = self._warp(blocks)
            cls = torch.from_numpy(np.ascontiguousarray(blocks[0])).to(self.device)
            rendered = self._render(cls, self.present[index]).cpu().numpy()
            for out, block in zip((images, targets, masks, classes), (rendered, *blocks[1:], blocks[0])):
                out.append(np.ascontiguousarray(self._inner(block)))
        as_tensor = lambda items: torch.from_numpy(np.stack(items))  # noqa: E731
        return SynthPair(as_tensor(images).float(), as_tensor(targets).float(), as_tensor(masks).float(),
                         as_tensor(classes).long())
