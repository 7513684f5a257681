"""Paired (image, label map) data for anatomy generators: loading, label channels, intensities, patches.

* :func:`load_pairs` reads image/label files (paired by :func:`medgen.data.inputs.pair_inputs`), reorients
  both to RAS (so slice-wise 2D/2.5D models always slice axially), optionally resamples to a
  training spacing and puts each label map on its image's grid through world coordinates.
* :class:`LabelChannels` maps arbitrary label ids (FreeSurfer ids go up to 5xx) to contiguous
  channel indices ``0..L-1`` and back; index 0 is background.
* :class:`IntensityScale` maps CT (HU, through the CT window of
  :mod:`medgen.transforms.intensity`) or MR (arbitrary units, divided by a robust maximum) to the
  generator's unit range ``[-1, 1]`` and back.
* :class:`PatchSampler` draws training batches: 3D patches, 2D slices or 2.5D slice stacks,
  centred on foreground with a set probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medgen.errors import InputError
from medgen.io.geometry import reorient, resample_like, resample_to_spacing
from medgen.io.readers import read_volume
from medgen.io.volume import Volume

from medgen.transforms.intensity import hu_to_unit, unit_to_hu


@dataclass(frozen=True)
class Pair:
    """One training case: image and label map on the same RAS grid."""

    case_id: str
    image: Volume
    label: Volume


class LabelChannels:
    """Label ids <-> contiguous channel indices (channel 0 = id 0 = background).

    Examples:
        >>> ch = LabelChannels([0, 2, 41])
        >>> ch.encode(np.array([0, 41, 2])).tolist(), ch.decode(np.array([2, 1])).tolist()
        ([0, 2, 1], [41, 2])
    """

    def __init__(self, ids: Sequence[int]):
        ids = sorted({int(i) for i in ids} | {0})
        self.ids = ids
        self._lut = {v: i for i, v in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, labels: np.ndarray, *, source: str | None = None) -> np.ndarray:
        """Label ids -> channel indices (uint8 or uint16). Raises InputError for unknown ids."""
        values = np.unique(labels)
        unknown = [int(v) for v in values if int(v) not in self._lut]
        if unknown:
            raise InputError(f"has label ids the generator was not trained with: {unknown[:12]}", path=source,
                             fix="relabel the map to the model's label ids (see the bundle's label names), "
                                 "or pass --label-names to match labels by name")
        lut = np.zeros(int(values.max()) + 1, np.uint16)
        for v in values:
            lut[int(v)] = self._lut[int(v)]
        out = lut[labels.astype(np.int64)]
        return out.astype(np.uint8) if len(self.ids) <= 256 else out

    def decode(self, channels: np.ndarray) -> np.ndarray:
        """Channel indices -> label ids (smallest unsigned dtype that holds them)."""
        dtype = np.uint8 if max(self.ids) < 256 else np.uint16
        return np.asarray(self.ids, dtype)[channels.astype(np.int64)]


class IntensityScale:
    """Image intensities <-> the generator's unit range.

    Args:
        modality: ``"ct"`` (HU through the CT window) or ``"mr"`` (divided by ``mr_scale``,
            the typical robust maximum of the training MR volumes).
        ct_window: HU mapped to -1 and +1.
        mr_scale: MR value mapped to +1 (0 maps to -1).
    """

    def __init__(self, modality: str, *, ct_window: Sequence[float] = (-1000.0, 1000.0), mr_scale: float = 1.0):
        if modality not in ("ct", "mr"):
            raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
        self.modality = modality
        self.ct_window = (float(ct_window[0]), float(ct_window[1]))
        self.mr_scale = float(mr_scale)

    def to_unit(self, array: np.ndarray, *, own_scale: float | None = None) -> np.ndarray:
        """Real intensities -> unit range. MR uses ``own_scale`` (the volume's robust maximum) if given."""
        if self.modality == "ct":
            return np.asarray(hu_to_unit(array, self.ct_window), np.float32)
        scale = own_scale if own_scale is not None else self.mr_scale
        return (2.0 * np.clip(array / scale, 0.0, 1.0) - 1.0).astype(np.float32)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """Unit range -> HU (CT) or MR units (clamped to the unit range first)."""
        unit = np.clip(unit, -1.0, 1.0)
        if self.modality == "ct":
            return np.asarray(unit_to_hu(unit, self.ct_window), np.float32)
        return ((unit + 1.0) / 2.0 * self.mr_scale).astype(np.float32)

    def as_dict(self) -> dict:
        return {"modality": self.modality, "ct_window": list(self.ct_window), "mr_scale": self.mr_scale}


def mr_robust_max(array: np.ndarray, percentile: float = 99.5) -> float:
    """The ``percentile`` of an MR volume's non-zero voxels (its intensity scale)."""
    values = array[array > 0]
    return float(np.percentile(values, percentile)) if values.size else 1.0


def prepare_pair(case_id: str, image: Volume, label: Volume, *, spacing: Sequence[float] | None = None) -> Pair:
    """Reorient to RAS, resample to ``spacing`` (if given) and put the label on the image grid."""
    image = reorient(image, "RAS")
    if spacing is not None:
        image = resample_to_spacing(image, tuple(spacing), order=1)
    if not label.same_grid(image):
        label = resample_like(label, image, order=0, cval=0)
    return Pair(case_id, image.with_array(image.array.astype(np.float32)), label.with_array(
        np.rint(label.array).astype(np.int64)))


def load_pairs(cases: Sequence, *, spacing: Sequence[float] | None = None) -> list[Pair]:
    """Read and prepare training pairs (see :func:`prepare_pair`).

    Args:
        cases: ``(image, label)`` case pairs from :func:`medgen.data.inputs.pair_inputs`.
    """
    pairs = []
    for img_case, lbl_case in cases:
        image = read_volume(img_case.path, kind="image")
        label = read_volume(lbl_case.path, kind="label")
        pairs.append(prepare_pair(img_case.case_id, image, label, spacing=spacing))
    return pairs


def per_label_means(channels: Sequence[np.ndarray], units: Sequence[np.ndarray], num_labels: int) -> np.ndarray:
    """Mean unit intensity of each label channel over all training volumes (0 where absent)."""
    sums = np.zeros(num_labels)
    counts = np.zeros(num_labels)
    for ch, un in zip(channels, units):
        sums += np.bincount(ch.ravel(), weights=un.ravel().astype(np.float64), minlength=num_labels)[:num_labels]
        counts += np.bincount(ch.ravel(), minlength=num_labels)[:num_labels]
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def _crop_or_pad(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """``array[start:start+size]`` along the first len(size) axes, padded with ``fill`` outside."""
    out = np.full(tuple(size) + array.shape[len(size):], fill, array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape):
        a, b = max(s, 0), min(s + n, dim)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - s, a - s + max(0, b - a)))
    out[tuple(dst)] = array[tuple(src)]
    return out


class PatchSampler:
    """Random training batches of label-index channels and unit images.

    Args:
        channels: per case, label channel indices (X, Y, Z).
        units: per case, the image in the unit range, same shape.
        spatial_dims: 3 (patches) or 2 (axial slices; 2.5D with ``context_slices``).
        patch_size: (X, Y, Z) for 3D, (X, Y) for 2D.
        context_slices: 2.5D: neighbouring label slices on each side.
        foreground_prob: chance that a patch is centred on a labelled voxel.
        background_value: unit value used where a patch leaves the volume.
        seed: the sampler's own RNG seed (add the rank under DDP).
    """

    def __init__(self, channels: Sequence[np.ndarray], units: Sequence[np.ndarray], *, spatial_dims: int,
                 patch_size: Sequence[int], context_slices: int = 0, foreground_prob: float = 0.9,
                 background_value: float = -1.0, seed: int = 0):
        self.channels, self.units = list(channels), list(units)
        self.spatial_dims = spatial_dims
        self.patch = tuple(int(p) for p in patch_size)[: 3 if spatial_dims == 3 else 2]
        self.context = int(context_slices)
        self.fg_prob = float(foreground_prob)
        self.background = float(background_value)
        self.rng = np.random.default_rng(seed)
        self._fg = [np.argwhere(c > 0) for c in self.channels]

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def _centre(self, case: int) -> np.ndarray:
        fg = self._fg[case]
        if len(fg) and self.rng.random() < self.fg_prob:
            return fg[self.rng.integers(len(fg))]
        return np.array([self.rng.integers(n) for n in self.channels[case].shape])

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels, images)``: labels ``(B, 2k+1, *P)`` float channel indices, images ``(B, 1, *P)``."""
        labels, images = [], []
        for _ in range(size):
            case = int(self.rng.integers(len(self.channels)))
            centre = self._centre(case)
            ch, un = self.channels[case], self.units[case]
            if self.spatial_dims == 3:
                start = [int(c) - p // 2 for c, p in zip(centre, self.patch)]
                labels.append(_crop_or_pad(ch, start, self.patch, 0)[None].astype(np.float32))
                images.append(_crop_or_pad(un, start, self.patch, self.background)[None])
            else:
                start = [int(c) - p // 2 for c, p in zip(centre[:2], self.patch)]
                z = int(centre[2])
                zs = np.clip(np.arange(z - self.context, z + self.context + 1), 0, ch.shape[2] - 1)
                stack = _crop_or_pad(ch[:, :, zs], start, self.patch, 0)  # (X, Y, 2k+1)
                labels.append(np.moveaxis(stack, -1, 0).astype(np.float32))
                images.append(_crop_or_pad(un[:, :, z], start, self.patch, self.background)[None])
        return torch.from_numpy(np.stack(labels)), torch.from_numpy(np.stack(images))
