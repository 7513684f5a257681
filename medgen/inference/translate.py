"""Apply a trained MR -> CT translator to whole volumes: synthetic CT in HU on the MR's own grid.

The chain (each step invertible, so the output lands exactly on the input grid)::

    MR (any orientation/spacing)
      -> preprocess with the bundle's MR recipe (RAS, target spacing, body crop, [-1, 1])
      -> translate in that space                       (translate_preprocessed)
           2D / 2.5D: batches of axial slice stacks; each slice's predictions from the
                      overlapping stacks are blended (stack_blend="mean") or the centre
                      channel is taken ("centre") -> slice-consistent output
           3D:        overlapping windows with Gaussian blending (MONAI sliding_window_inference);
                      a scan shorter than the window along the body axis is extended by repeating
                      its end slices, as ``medgen segment`` extends it (not padded with air)
      -> [-1, 1] -> HU through the CT window the translator was trained with
      -> background outside the MR body mask set to air (optional, the bundle says)
      -> invert back onto the MR's source grid; outside the preprocessed field of view: -1000 HU

Memory: besides the input and output volumes, 2D inference holds one batch of
``batch_slices`` stacks and 3D inference one window batch, so peak memory grows with the volume
size only through the volumes themselves.

Examples:
    >>> import numpy as np, torch
    >>> from medgen.networks.resnet_generator import ResnetGenerator
    >>> net = ResnetGenerator(spatial_dims=2, in_channels=3, out_channels=3, features=4, n_blocks=1).eval()
    >>> out = translate_array(net, np.zeros((20, 18, 5), np.float32), spatial_dims=2, context=3)
    >>> out.shape, out.dtype
    ((20, 18, 5), dtype('float32'))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medgen.errors import InputError, ModelError
from medgen.inference.segment import body_axis, repeat_end_slices
from medgen.io.volume import Volume
from medgen.progress import progress
from medgen.runtime import autocast, resolve_device, resolve_precision
from medgen.models.bundle import MEDGEN_JSON, load_bundle, resolve_model
from medgen.transforms.intensity import unit_to_hu

log = logging.getLogger(__name__)

__all__ = ["Translator", "load_translator", "translate_array", "translate_preprocessed", "translate_volume",
           "TranslationResult", "translate_result", "sct_on_source_grid"]

AIR_HU = -1000.0


@dataclass
class Translator:
    """A loaded translator: G (MR -> CT) plus everything needed to apply it.

    Attributes:
        network: G in eval mode.
        spatial_dims: 2 (2D / 2.5D) or 3.
        context: slices per 2D stack (1 = 2D).
        ct_window: HU window of the network's output range [-1, 1].
        preprocess: the MR preprocessing config (a dict for ``PreprocessConfig``).
        settings: inference settings (stack_blend, mask_background, batch_slices, window_size, overlap).
        source: where it was loaded from.
    """

    network: torch.nn.Module
    spatial_dims: int
    context: int
    ct_window: tuple[float, ...]
    preprocess: dict
    settings: dict = field(default_factory=dict)
    source: str | None = None


def load_translator(model: str | Path | Translator) -> Translator:
    """A :class:`Translator` from a run dir, bundle dir, MLflow URI, or an already loaded one.

    Raises:
        ModelError: not a translator bundle, or its description is incomplete.
    """
    if isinstance(model, Translator):
        return model
    folder = resolve_model(model)
    painted = folder.parent / "translator"
    if load_bundle(folder).kind == "segmenter" and (painted / MEDGEN_JSON).exists():
        raise ModelError("is a segmenter; its run also exported a tissue-painting translator", path=folder,
                         fix=f"pass {painted} as the translator")
    spec = load_bundle(folder, kind="translator")
    extra = spec.extra
    missing = [k for k in ("spatial_dims", "context", "ct_window") if k not in extra]
    if missing or not spec.preprocess:
        raise ModelError(f"translator bundle lacks {', '.join(missing) or 'its preprocess recipe'}", path=folder,
                         fix="re-export it with medgen train translator")
    return Translator(network=spec.build(), spatial_dims=int(extra["spatial_dims"]), context=int(extra["context"]),
                      ct_window=tuple(float(w) for w in extra["ct_window"]), preprocess=dict(spec.preprocess),
                      settings=dict(extra.get("inference", {})), source=str(folder))


def _pad_to_multiple(x: torch.Tensor, multiple: int, dims: int, value: float = -1.0) -> tuple[torch.Tensor, list]:
    sizes = x.shape[-dims:]
    pads = []
    for s in reversed(sizes):
        extra = (-s) % multiple
        pads += [extra // 2, extra - extra // 2]
    if any(pads):
        x = torch.nn.functional.pad(x, pads, value=value)
    return x, pads


def _unpad(x: torch.Tensor, pads: list, dims: int) -> torch.Tensor:
    index = [slice(None)] * (x.ndim - dims)
    for d in range(dims):
        lo, hi = pads[2 * (dims - 1 - d)], pads[2 * (dims - 1 - d) + 1]
        index.append(slice(lo, x.shape[x.ndim - dims + d] - hi))
    return x[tuple(index)]


def _stack_weights(context: int, blend: str) -> np.ndarray:
    """Weight of each channel position of a 2.5D output when blending overlapping stacks."""
    if context == 1 or blend == "centre":
        w = np.zeros(context)
        w[context // 2] = 1.0
        return w
    half = context // 2
    return 1.0 - np.abs(np.arange(context) - half) / (half + 1)  # triangular, centre heaviest


@torch.no_grad()
def translate_array(network: torch.nn.Module, image: np.ndarray, *, spatial_dims: int, context: int = 1,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, batch_slices: int = 8,
                    stack_blend: str = "mean", window_size=None, overlap: float = 0.5,
                    show_progress: bool = True) -> np.ndarray:
    """Translate a preprocessed volume (RAS, [-1, 1]) with ``network``; returns [-1, 1] float32.

    Args:
        network: G; its inputs must be multiples of ``network.size_multiple`` (padding is added).
        image: (X, Y, Z) array; axis 2 is the slice (axial) axis.
        spatial_dims, context: how the network was trained (2 + k slices, or 3).
        batch_slices: slice stacks per forward pass (2D), the memory bound.
        stack_blend: ``mean`` blends the overlapping 2.5D stacks' predictions of each slice
            (triangular weights), ``centre`` takes only the centre channel.
        window_size, overlap: 3D sliding-window size (default: the whole volume if small, else
            96 per axis) and overlap fraction.
    """
    device = torch.device(device)
    network = network.to(device).eval()
    multiple = int(getattr(network, "size_multiple", 1))
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise InputError(f"expected a 3D volume, got shape {image.shape}")
    if spatial_dims == 3:
        return _translate_3d(network, image, device, dtype, window_size, overlap, multiple, show_progress)
    X, Y, Z = image.shape
    weights = _stack_weights(context, stack_blend)
    half = context // 2
    out = np.zeros((X, Y, Z), np.float32)
    total = np.zeros(Z, np.float64)
    vol = torch.from_numpy(image)
    bar = progress(total=Z, desc="translate", unit="slice") if show_progress else None
    for start in range(0, Z, batch_slices):
        centres = np.arange(start, min(Z, start + batch_slices))
        index = np.clip(centres[:, None] + np.arange(-half, half + 1)[None, :], 0, Z - 1)  # (B, k)
        batch = vol[:, :, torch.from_numpy(index.reshape(-1))].reshape(X, Y, len(centres), context)
        batch = batch.permute(2, 3, 0, 1).contiguous().to(device)  # (B, k, X, Y)
        batch, pads = _pad_to_multiple(batch, multiple, 2)
        with autocast(device, dtype):
            pred = network(batch)
        pred = _unpad(pred.float(), pads, 2).cpu().numpy()  # (B, k, X, Y)
        for b in range(len(centres)):
            for j in range(context):
                if weights[j] > 0:
                    z = index[b, j]
                    out[:, :, z] += weights[j] * pred[b, j]
                    total[z] += weights[j]
        if bar is not None:
            bar.update(len(centres))
    if bar is not None:
        bar.close()
    out /= np.maximum(total, 1e-12)[None, None, :].astype(np.float32)
    return out


def _translate_3d(network, image, device, dtype, window_size, overlap, multiple, show_progress) -> np.ndarray:
    from monai.inferers import sliding_window_inference
    if window_size is None:
        window_size = [min(96, s) for s in image.shape]
    roi = [max(multiple, int(np.ceil(w / multiple)) * multiple) for w in window_size]
    x = torch.from_numpy(image)[None, None]
    # pad to at least the window and to a multiple, with air
    x, pads = _pad_to_multiple(x, multiple, 3)

    def predictor(patch):
        with autocast(device, dtype):
            out = network(patch.to(device)).float()
        return out.clone() if out.data_ptr() == patch.data_ptr() else out  # MONAI scales outputs in place

    out = sliding_window_inference(x, roi_size=roi, sw_batch_size=1, predictor=predictor, overlap=overlap,
                                   mode="gaussian", padding_mode="constant", cval=-1.0, sw_device=device,
                                   device=torch.device("cpu"), progress=show_progress)
    return _unpad(out, pads, 3)[0, 0].numpy().astype(np.float32)


@dataclass
class TranslationResult:
    """Synthetic CT in the preprocessed space (unit range and HU), with the MR's record and mask."""

    sct_unit: Volume
    sct_hu: Volume
    record: dict
    body_mask: Volume


def translate_preprocessed(mr: Volume, model: str | Path | Translator, *, device: str | torch.device = "auto",
                           precision: str = "auto", show_progress: bool = True,
                           mask_background: bool | None = None) -> TranslationResult:
    """Preprocess ``mr`` with the translator's recipe and translate it, staying in that space.

    Useful when the next step works on the preprocessed grid too (e.g. a CT segmenter that
    wants isotropic voxels); :func:`translate_volume` brings the result back to the MR grid.
    """
    from medgen.transforms.recipes import PreprocessConfig, preprocess
    translator = load_translator(model)
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = resolve_precision(precision, device)
    result = preprocess(mr, PreprocessConfig.model_validate(translator.preprocess))
    return translate_result(translator, result, device=device, dtype=dtype, show_progress=show_progress,
                            mask_background=mask_background)


def translate_result(translator: Translator, result, *, device: torch.device, dtype: torch.dtype,
                     show_progress: bool = True, mask_background: bool | None = None) -> TranslationResult:
    """Translate an already preprocessed MR (a ``PreprocessResult`` of the translator's recipe)."""
    s = translator.settings
    image, axis, before = result.image.array, body_axis(result.image.affine), None
    if translator.spatial_dims == 3 and s.get("window_size"):
        # a scan shorter than the window along the body goes on, not into air (as medgen segment extends it)
        image, before = repeat_end_slices(image, axis, int(s["window_size"][axis]))
    unit = translate_array(translator.network, image, spatial_dims=translator.spatial_dims,
                           context=translator.context, device=device, dtype=dtype,
                           batch_slices=int(s.get("batch_slices", 8)), stack_blend=s.get("stack_blend", "mean"),
                           window_size=s.get("window_size"), overlap=float(s.get("overlap", 0.5)),
                           show_progress=show_progress)
    if before is not None:
        unit = np.take(unit, np.arange(before, before + result.image.shape[axis]), axis=axis)
    unit = np.clip(unit, -1.0, 1.0)
    if mask_background is None:
        mask_background = bool(s.get("mask_background", True))
    if mask_background:
        unit[np.asarray(result.body_mask.array) == 0] = -1.0
    hu = np.asarray(unit_to_hu(unit, translator.ct_window), np.float32)
    return TranslationResult(sct_unit=result.image.with_array(unit), sct_hu=result.image.with_array(hu),
                             record=result.record, body_mask=result.body_mask)


def sct_on_source_grid(translator: Translator, result, *, device: torch.device, dtype: torch.dtype,
                       show_progress: bool = False, mask_background: bool | None = None) -> Volume:
    """Translate a preprocessed MR and map the synthetic CT (HU) back onto the MR's source grid."""
    from medgen.transforms.recipes import invert
    out = translate_result(translator, result, device=device, dtype=dtype, show_progress=show_progress,
                           mask_background=mask_background)
    return invert(out.sct_hu, out.record, order=1, cval=AIR_HU)


def translate_volume(mr: Volume, model: str | Path | Translator, *, device: str | torch.device = "auto",
                     precision: str = "auto", show_progress: bool = True,
                     mask_background: bool | None = None) -> Volume:
    """Synthetic CT in HU on exactly ``mr``'s grid (shape and affine); air (-1000 HU) outside.

    Args:
        mr: the MR volume (any orientation and spacing; e.g. from :func:`medgen.io.readers.read_volume`).
        model: a run dir, bundle dir, MLflow URI, or a :class:`Translator` from :func:`load_translator`
            (load once when translating many volumes).
        device: ``auto``, ``cpu``, ``cuda`` or a torch device.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (GPU).
        mask_background: set voxels outside the MR body mask to air (default: the bundle's setting).

    Examples:
        A sketch (needs a trained model)::

            sct = translate_volume(read_volume("mr.nii.gz"), "runs/translator")
            write_volume(sct, "sct.nii.gz")
    """
    from medgen.transforms.recipes import invert
    result = translate_preprocessed(mr, model, device=device, precision=precision, show_progress=show_progress,
                                    mask_background=mask_background)
    out = invert(result.sct_hu, result.record, order=1, cval=AIR_HU)
    if out.shape != mr.shape:
        raise ModelError(f"internal error: synthetic CT shape {out.shape} differs from the MR's {mr.shape}")
    return Volume(out.array.astype(np.float32), mr.affine.copy(), mr.source, mr.series_uid,
                  {**mr.meta, "modality": "CT", "synthetic": True})
