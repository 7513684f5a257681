"""Random 2D slices, 2.5D slice stacks and 3D patches from in-memory volumes, biased to the body.

Used by the translator (one sampler per modality: MR and CT are drawn *independently*, which is
what unpaired training means) and shareable by other trainers.

Conventions:

* Volumes are preprocessed arrays in RAS voxel order, so axis 2 runs inferior -> superior and a
  "slice" is an axial plane ``array[:, :, z]``. (Axial because that is how CT and MR are
  acquired and where in-plane resolution is best; the MRI-DIR pair, for example, is 1 mm
  in-plane and reconstructed axially.)
* 2D / 2.5D samples are ``(context, X, Y)`` tensors: ``context`` adjacent axial slices as channels
  (edge slices are repeated at the volume's ends, exactly as inference does); 3D samples are
  ``(1, X, Y, Z)``.
* Patches are cropped around a centre voxel chosen inside the body mask with probability
  ``foreground_prob`` (else anywhere); regions outside the volume are filled with ``fill``
  (-1, i.e. air / background in the unit range).
* ``intensity_balance`` (0..1) tempers how body centres are drawn: voxels are grouped into
  equal-width intensity bins and a bin holding ``n`` voxels is drawn with probability
  proportional to ``n ** (1 - intensity_balance)``. 0 draws voxels uniformly (rare tissue is
  rarely seen: bone is ~1-2% of a soft-tissue CT); 1 draws every occupied bin equally often;
  0.5 is the usual tempered compromise (as in class-balanced sampling with a temperature). It
  needs no labels, treats both modalities alike, and lets the discriminators and generators
  see rare tissue (bone, gas, fat septa) often enough to learn it.
* All randomness comes from the sampler's own ``torch.Generator``; its state is in
  :meth:`VolumeSampler.state_dict`, so a resumed run draws exactly the samples an uninterrupted
  run would have drawn. Distributed ranks use ``seed + rank``.

Training volumes are held in memory (float32 preprocessed volumes: a few MB each), which is fine
for translator training sets of tens of volumes; larger sets should be cropped/down-sampled by
preprocessing first.

Examples:
    >>> import numpy as np
    >>> vol = np.full((40, 40, 10), -1.0, np.float32); vol[10:30, 10:30, :] = 0.5
    >>> s = VolumeSampler([vol], patch_size=(16, 16), context=3, seed=0)
    >>> batch = s.sample(4)
    >>> tuple(batch.image.shape), tuple(batch.mask.shape)
    ((4, 3, 16, 16), (4, 3, 16, 16))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

__all__ = ["Batch", "VolumeSampler", "body_mask", "stack_indices"]


def body_mask(array: np.ndarray, *, threshold: float | None = None) -> np.ndarray:
    """A boolean body (object) mask of a volume in any intensity range.

    The threshold defaults to Otsu's between background and tissue; holes are filled slice by
    slice (dark tissue inside the body -- bone on MR, gas and fat on CT -- stays inside) and only
    the largest connected object is kept, which drops the scanner table and noise specks.
    """
    array = np.asarray(array, dtype=np.float32)
    if threshold is None:
        from medgen.transforms.body_mask import otsu_threshold
        finite = array[np.isfinite(array)]
        if finite.size == 0 or finite.min() == finite.max():
            return np.zeros(array.shape, bool)
        threshold = otsu_threshold(finite[:: max(1, finite.size // 2_000_000)])
    mask = array > threshold
    mask = ndimage.binary_opening(mask, iterations=1) if mask.any() else mask
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return mask


def stack_indices(z: int, depth: int, context: int) -> np.ndarray:
    """Slice indices of the ``context``-slice stack centred on ``z`` (ends repeated)."""
    half = context // 2
    return np.clip(np.arange(z - half, z - half + context), 0, depth - 1)


@dataclass
class Batch:
    """A batch of samples: ``image`` in the volume's units and the body ``mask`` (0/1 floats)."""

    image: torch.Tensor
    mask: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(self.image.to(device, non_blocking=True), self.mask.to(device, non_blocking=True))


class VolumeSampler:
    """Draw random slices / stacks / patches from a list of volumes.

    Args:
        volumes: 3D float arrays (RAS voxel order), e.g. preprocessed MRs in [-1, 1].
        masks: body masks of the same shapes (default: :func:`body_mask` of each volume).
        spatial_dims: 2 (slices / 2.5D stacks) or 3 (patches).
        patch_size: in-plane ``(X, Y)`` for 2D, ``(X, Y, Z)`` for 3D.
        context: adjacent slices per 2D sample (1 = 2D, k = 2.5D); must be 1 for 3D.
        foreground_prob: probability that a patch is centred inside the body mask.
        flip_axes: spatial axes (0 = left-right, 1 = anterior-posterior) randomly flipped with p=0.5.
        gamma_range: random gamma on ``(x + 1) / 2`` (intensity augmentation; ``None`` disables),
            meant for MR, never for CT (whose intensities are physical units).
        fill: value outside the volume (air / background).
        intensity_balance: 0..1, tempering of body-centre sampling towards rare intensities
            (see the module docstring); 0 = uniform over body voxels.
        intensity_bins: equal-width bins between the body's 0.5th and 99.5th percentiles.
        seed: seed of the sampler's own generator.
    """

    def __init__(self, volumes: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None, *,
                 spatial_dims: int = 2, patch_size: Sequence[int] = (128, 128), context: int = 1,
                 foreground_prob: float = 0.9, flip_axes: Sequence[int] = (), gamma_range: Sequence[float] | None = None,
                 fill: float = -1.0, intensity_balance: float = 0.0, intensity_bins: int = 32, seed: int = 0):
        if not volumes:
            raise ValueError("no volumes to sample from")
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        if len(patch_size) != spatial_dims:
            raise ValueError(f"patch_size needs {spatial_dims} values for spatial_dims={spatial_dims}, got {patch_size}")
        if spatial_dims == 3 and context != 1:
            raise ValueError("context slices apply to 2D sampling only")
        self.volumes = [np.ascontiguousarray(v, dtype=np.float32) for v in volumes]
        self.masks = [np.asarray(m, bool) for m in masks] if masks is not None else [body_mask(v) for v in self.volumes]
        for v, m in zip(self.volumes, self.masks):
            if v.ndim != 3 or v.shape != m.shape:
                raise ValueError(f"volume {v.shape} and mask {m.shape} must be 3D and of the same shape")
        self.spatial_dims = spatial_dims
        self.patch_size = tuple(int(p) for p in patch_size)
        self.context = int(context)
        self.foreground_prob = float(foreground_prob)
        self.flip_axes = tuple(flip_axes)
        self.gamma_range = tuple(gamma_range) if gamma_range else None
        self.fill = float(fill)
        if not 0.0 <= intensity_balance <= 1.0:
            raise ValueError(f"intensity_balance must be in [0, 1], got {intensity_balance}")
        self.intensity_balance = float(intensity_balance)
        # voxel indices inside each body mask (sub-sampled to bound memory on big volumes)
        self._fg, self._fg_cdf = [], []
        for v, m in zip(self.volumes, self.masks):
            idx = np.flatnonzero(m)
            stride = max(1, idx.size // 1_000_000)
            idx = idx[::stride]
            self._fg.append(idx)
            self._fg_cdf.append(_balanced_cdf(v.ravel()[idx], self.intensity_balance, intensity_bins)
                                if self.intensity_balance > 0 and idx.size else None)
        self.generator = torch.Generator().manual_seed(int(seed))

    # -- randomness (all from self.generator) -------------------------------------------------
    def _randint(self, high: int) -> int:
        return int(torch.randint(0, max(1, high), (), generator=self.generator).item())

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator).item())

    def _centre(self, index: int) -> tuple[int, int, int]:
        shape = self.volumes[index].shape
        fg = self._fg[index]
        if fg.size and self._rand() < self.foreground_prob:
            cdf = self._fg_cdf[index]
            pick = self._randint(fg.size) if cdf is None else min(int(np.searchsorted(cdf, self._rand(), side="right")), fg.size - 1)
            return tuple(int(c) for c in np.unravel_index(fg[pick], shape))
        return tuple(self._randint(s) for s in shape)

    # -- extraction ---------------------------------------------------------------------------
    def _crop(self, array: np.ndarray, centre: tuple[int, int, int], fill: float) -> np.ndarray:
        if self.spatial_dims == 2:
            z = stack_indices(centre[2], array.shape[2], self.context)
            size = self.patch_size + (self.context,)
            slab = array[:, :, z]
            return np.moveaxis(_crop_padded(slab, (centre[0], centre[1], self.context // 2), size, fill), 2, 0)
        return _crop_padded(array, centre, self.patch_size, fill)[None]

    def sample(self, batch_size: int) -> Batch:
        """``batch_size`` samples (volumes chosen uniformly, centres biased to the body)."""
        images, masks = [], []
        for _ in range(batch_size):
            index = self._randint(len(self.volumes))
            centre = self._centre(index)
            image = self._crop(self.volumes[index], centre, self.fill)
            mask = self._crop(self.masks[index].astype(np.float32), centre, 0.0)
            for axis in self.flip_axes:
                if self._rand() < 0.5:
                    image = np.flip(image, axis + 1)
                    mask = np.flip(mask, axis + 1)
            if self.gamma_range is not None:
                lo, hi = np.log(self.gamma_range[0]), np.log(self.gamma_range[1])
                gamma = float(np.exp(lo + (hi - lo) * self._rand()))
                image = np.clip((image + 1.0) / 2.0, 0, 1) ** gamma * 2.0 - 1.0
            images.append(np.ascontiguousarray(image, dtype=np.float32))
            masks.append(np.ascontiguousarray(mask, dtype=np.float32))
        return Batch(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)))

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])


def _balanced_cdf(values: np.ndarray, balance: float, n_bins: int) -> np.ndarray:
    """Cumulative sampling probabilities of ``values`` so that a bin of ``n`` voxels is drawn ∝ ``n ** (1 - balance)``.

    Each voxel's weight is ``n_bin ** -balance`` (the bin's share spread evenly over its voxels).
    Bins are equal-width between the 0.5th and 99.5th percentiles; outliers join the end bins.
    """
    lo, hi = np.percentile(values, [0.5, 99.5])
    if not hi > lo:
        return np.linspace(1.0 / values.size, 1.0, values.size)
    bins = np.clip(((values - lo) / (hi - lo) * n_bins).astype(np.int64), 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins).astype(np.float64)
    weights = counts[bins] ** -balance
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _crop_padded(array: np.ndarray, centre: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """The ``size`` box centred on ``centre`` (``size // 2`` before it), padded with ``fill``."""
    out = np.full(tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for c, s, n in zip(centre, size, array.shape):
        lo = int(c) - s // 2
        a, b = max(lo, 0), min(lo + s, n)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[tuple(dst)] = array[tuple(src)]
    return out
