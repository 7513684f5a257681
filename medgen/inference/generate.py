"""Synthetic labelled volumes from a trained anatomy generator.

:class:`AnatomyGenerator` wraps an exported generator bundle: the network, its label channels,
its intensity scale and its label-map bank (the training label maps, stored in the bundle so new
anatomies can be sampled without the training data). :func:`generate_dataset` writes N
``(image, label)`` pairs and the files a segmenter trainer reads::

    OUT/images/<case>.nii.gz   synthetic image (HU for CT), on the label map's grid
    OUT/labels/<case>.nii.gz   its label map (same shape and affine)
    OUT/label_names.json       {"0": "background", "1": ...}
    OUT/datalist.json          MONAI-style {"training": [{"image": ..., "label": ...}], "label_names": ...}

so ``medgen train segmenter --images OUT/images --labels OUT/labels`` (pairs by case id) and
datalist readers both work.

Determinism: case ``i`` of seed ``s`` draws its label map and its noise from
``numpy.random.SeedSequence([s, i])``, so a case does not depend on how many were generated
before it, and the same seed gives the same files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medgen.data.label_image_pairs import IntensityScale, LabelChannels
from medgen.data.label_sampler import LabelMapSampler, LabelSamplerConfig
from medgen.errors import InputError, ModelError, OutputError
from medgen.io.atomic import ensure_writable_dir, write_text_atomic
from medgen.io.geometry import reorient, resample_like, resample_to_spacing
from medgen.io.volume import Volume
from medgen.progress import progress
from medgen.data.inputs import collect_inputs
from medgen.io.readers import read_volume
from medgen.io.writers import write_volume
from medgen.models.bundle import load_bundle, resolve_model
from medgen.runtime import autocast, resolve_device, resolve_precision

log = logging.getLogger(__name__)

__all__ = ["AnatomyGenerator", "generate_dataset", "synthesize_unit", "make_noise"]


def make_noise(shape: Sequence[int], channels: int, seed: int) -> torch.Tensor:
    """The noise field ``z`` (1, C, X, Y, Z) for a whole volume, from its own seeded generator."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((1, int(channels), *[int(s) for s in shape]), generator=gen)


@torch.no_grad()
def synthesize_unit(net: torch.nn.Module, channels: np.ndarray, *, noise_seed: int, patch_size: Sequence[int],
                    overlap: float = 0.25, sw_batch_size: int = 4, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, slice_chunk: int = 16) -> np.ndarray:
    """Run the generator over a whole label-channel volume with a sliding window (unit range).

    Args:
        net: a :class:`~medgen.networks.spade_generator.SPADEGenerator` in eval mode.
        channels: (X, Y, Z) label channel indices (RAS).
        noise_seed: seed of the noise field (one per generated volume).
        patch_size: the window; the training patch size (instance-norm statistics match).
        slice_chunk: 2D/2.5D: slices per forward batch (memory bound).

    Returns:
        float32 (X, Y, Z) in ``[-1, 1]``.
    """
    from monai.inferers import sliding_window_inference

    device = torch.device(device)
    net = net.to(device).eval()
    lab = torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float32))[None, None]
    noise = make_noise(channels.shape, net.noise_channels, noise_seed)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return net(x.to(device)).float()

    if net.spatial_dims == 3:
        roi = tuple(int(p) for p in patch_size)[:3]
        x = torch.cat([lab, noise], 1)
        out = sliding_window_inference(x, roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian",
                                       sw_device=device, device="cpu")
        result = out[0, 0].numpy()
    else:
        roi = tuple(int(p) for p in patch_size)[:2]
        k = net.context_slices
        depth = channels.shape[2]
        result = np.empty(channels.shape, np.float32)
        for z0 in range(0, depth, slice_chunk):
            zs = range(z0, min(depth, z0 + slice_chunk))
            stacks = []
            for z in zs:
                idx = np.clip(np.arange(z - k, z + k + 1), 0, depth - 1)
                stacks.append(torch.cat([lab[0, :, :, :, idx].squeeze(0).permute(2, 0, 1),
                                         noise[0, :, :, :, z]], 0))
            x = torch.stack(stacks)
            out = sliding_window_inference(x, roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian",
                                           sw_device=device, device="cpu")
            result[:, :, zs.start:zs.stop] = out[:, 0].permute(1, 2, 0).numpy()
    return np.clip(result, -1.0, 1.0).astype(np.float32)


def _case_streams(seed: int, index: int) -> tuple[np.random.Generator, int]:
    seq = np.random.SeedSequence([int(seed), int(index)])
    rng = np.random.default_rng(seq)
    noise_seed = int(seq.spawn(1)[0].generate_state(1)[0])
    return rng, noise_seed


class AnatomyGenerator:
    """A loaded generator bundle: label map -> image, and new label maps from its bank.

    Args:
        bundle: folder of an exported generator bundle (see :func:`medgen.models.bundle.resolve_model`).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
    """

    def __init__(self, bundle: str | Path, *, device: str = "auto", precision: str = "fp32"):
        self.spec = load_bundle(resolve_model(bundle), kind="generator")
        extra = self.spec.extra
        try:
            self.channels = LabelChannels(extra["label_ids"])
            self.scale = IntensityScale(extra["modality"], ct_window=extra.get("ct_window", (-1000, 1000)),
                                        mr_scale=extra.get("mr_scale", 1.0))
            self.patch_size = list(extra["patch_size"])
        except KeyError as exc:
            raise ModelError(f"generator bundle lacks '{exc.args[0]}' in medgen.json", path=self.spec.path,
                             fix="re-export it with medgen train generator") from exc
        self.spacing = extra.get("spacing")
        self.overlap = float(extra.get("overlap", 0.25))
        self.sampler_config = LabelSamplerConfig(**extra.get("sampler", {}))
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.net = self.spec.build().to(self.device)
        self._bank: list[tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def label_names(self) -> dict[int, str]:
        return dict(self.spec.label_names)

    @property
    def modality(self) -> str:
        return self.scale.modality

    def bank(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The label-map bank ``(labels, affine)`` read from the bundle (once)."""
        if self._bank is None:
            files = self.spec.extra.get("label_bank", [])
            if not files:
                raise ModelError("has no label-map bank, so it cannot sample new anatomies", path=self.spec.path,
                                 fix="pass label maps with --labels, or re-export the generator")
            self._bank = []
            for name in files:
                vol = read_volume(self.spec.path / name, kind="label")
                self._bank.append((np.rint(vol.array).astype(np.int64), vol.affine))
        return self._bank

    def image_for_channels(self, channels: np.ndarray, noise_seed: int) -> np.ndarray:
        """Real-valued image (HU or MR units) for a label-channel array on the model's grid."""
        unit = synthesize_unit(self.net, channels, noise_seed=noise_seed, patch_size=self.patch_size,
                               overlap=self.overlap, device=self.device, dtype=self.dtype)
        return self.scale.from_unit(unit)

    def image_for_labels(self, label: Volume, *, noise_seed: int = 0,
                         label_names: dict[int, str] | None = None) -> Volume:
        """A synthetic image on ``label``'s own grid (shape, affine, orientation).

        Args:
            label: a label map with the model's ids (or ``label_names`` to match by name).
            label_names: the map's id -> name; ids are then translated to the model's by name.
        """
        array = np.rint(label.array).astype(np.int64)
        if label_names:
            array = self._match_by_name(array, label_names, label.name)
        work = reorient(label.with_array(array), "RAS")
        if self.spacing is not None:
            work = resample_to_spacing(work, tuple(self.spacing), order=0)
        channels = self.channels.encode(work.array, source=label.name)
        image = work.with_array(self.image_for_channels(channels, noise_seed))
        background = float(self.scale.from_unit(np.array(-1.0)))
        image = resample_like(image, label, order=1, cval=background)
        return label.with_array(image.array.astype(np.float32), source=None)

    def _match_by_name(self, array: np.ndarray, names: dict[int, str], source: str) -> np.ndarray:
        by_name = {v.lower(): k for k, v in self.label_names.items()}
        out = np.zeros_like(array)
        missing = []
        for value in np.unique(array):
            name = names.get(int(value), "background" if value == 0 else None)
            if name is None or name.lower() not in by_name:
                if value != 0:
                    missing.append(f"{int(value)}:{name}")
                continue
            out[array == value] = by_name[name.lower()]
        if missing:
            log.warning("%s: labels unknown to the generator become background: %s", source, ", ".join(missing[:10]))
        return out

    def sample_labels(self, rng: np.random.Generator) -> Volume:
        """A new label map (deformed bank map) on the model's grid."""
        sampler = LabelMapSampler(self.bank(), self.sampler_config)
        labels, affine = sampler.sample(rng)
        dtype = np.uint8 if max(self.channels.ids) < 256 else np.uint16
        return Volume(labels.astype(dtype), affine)

    def sample(self, seed: int, index: int = 0) -> tuple[Volume, Volume]:
        """Case ``index`` of seed ``seed``: ``(image, label)`` on the same grid."""
        rng, noise_seed = _case_streams(seed, index)
        label = self.sample_labels(rng)
        channels = self.channels.encode(label.array)
        return label.with_array(self.image_for_channels(channels, noise_seed)), label


def generate_dataset(generator: AnatomyGenerator, output: str | Path, *, n: int | None = None, seed: int = 0,
                     labels: Sequence[str | Path] | None = None, label_names: dict[int, str] | None = None,
                     prefix: str = "synth") -> list[dict]:
    """Write N synthetic ``(image, label)`` pairs, ``label_names.json`` and ``datalist.json``.

    Args:
        generator: the loaded model.
        output: folder (created; existing case files are never overwritten).
        n: number of cases. Without ``labels`` it is required; with ``labels`` it defaults to
            one image per given label map (more cycles through them with new noise).
        seed: the run's seed (case ``i`` uses ``SeedSequence([seed, i])``).
        labels: user label maps (e.g. CT labels for a generator trained on MR) used as they are
            instead of sampling new anatomies; the outputs are on their grids.
        label_names: the user maps' id -> name (matches ids to the model's by name).

    Returns:
        The datalist entries ``[{"image", "label", "case_id", "source"}]`` (paths relative to ``output``).
    """
    output = ensure_writable_dir(output)
    if (output / "datalist.json").exists():
        raise OutputError("already holds generated volumes (datalist.json)", path=output,
                          fix="choose a new output folder; medgen never overwrites generated data")
    cases = collect_inputs(list(labels)) if labels else []
    if labels and not cases:
        raise InputError("no label maps found", path=str(labels[0]), fix="pass label map files or folders")
    if n is None:
        if not cases:
            raise InputError("the number of volumes to generate is missing", fix="pass -n N")
        n = len(cases)
    if n < 1:
        raise InputError(f"-n must be at least 1, got {n}", fix="pass -n N with N >= 1")
    (output / "images").mkdir(exist_ok=True)
    (output / "labels").mkdir(exist_ok=True)
    entries = []
    for i in progress(range(n), total=n, desc="generate", unit="volume"):
        if cases:
            case = cases[i % len(cases)]
            _, noise_seed = _case_streams(seed, i)
            label = read_volume(case.path, kind="label")
            image = generator.image_for_labels(label, noise_seed=noise_seed, label_names=label_names)
            label_out = label.with_array(np.rint(label.array).astype(
                np.uint8 if label.array.max() < 256 else np.uint16))
            case_id = case.case_id if n <= len(cases) else f"{case.case_id}_{i // len(cases):03d}"
            source = str(case.path)
        else:
            image, label_out = generator.sample(seed, i)
            case_id = f"{prefix}_{i:04d}"
            source = "label_bank"
        image_path = write_volume(image, output / "images" / f"{case_id}.nii.gz", dtype=np.float32)
        label_path = write_volume(label_out, output / "labels" / f"{case_id}.nii.gz")
        entries.append({"image": str(image_path.relative_to(output)), "label": str(label_path.relative_to(output)),
                        "case_id": case_id, "source": source})
    names = label_names if (labels and label_names) else generator.label_names
    if labels and not label_names:
        names = generator.label_names
    names_json = {str(k): v for k, v in sorted(names.items())}
    write_text_atomic(output / "label_names.json", json.dumps(names_json, indent=1))
    datalist = {"description": f"synthetic {generator.modality.upper()} volumes generated by medgen (seed {seed})",
                "modality": generator.modality, "label_names": names_json, "seed": seed,
                "training": [{"image": e["image"], "label": e["label"]} for e in entries]}
    write_text_atomic(output / "datalist.json", json.dumps(datalist, indent=1))
    return entries
