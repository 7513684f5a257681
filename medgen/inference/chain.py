"""The chain: MR -> synthetic CT -> CT segmenter -> label map on the MR's own grid.

::

    MR (file or DICOM series, any orientation)
      -> translator: a trained MR->CT model (synthetic CT in HU on the MR grid),
         or a baseline: "none" (normalised MR) / "histogram" (MR matched to a CT histogram);
         a contrast-agnostic segmenter (trained on renderings, ``medgen.transforms.render``)
         takes the MR itself with "none"
      -> CT segmenter at its own orientation, spacing and HU scaling (sliding windows)
      -> class scores interpolated onto the MR's grid, then arg-max
      -> mask with the MR's exact shape and affine, plus the label names

Each stage is timed, so batch runs and the benchmark can report where the time goes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medgen.errors import InputError, ModelError
from medgen.inference.baselines import BASELINES, histogram_matched_ct, normalised_mr_as_ct, reference_quantiles_from_ct
from medgen.io.volume import Volume
from medgen.inference.agreement import DEFAULT_THRESHOLD, agreement as score, perturbed_prediction
from medgen.io.readers import read_volume

if TYPE_CHECKING:  # annotations only: medgen.models.segmenters sits above medgen.inference
    from medgen.models.segmenters import CTSegmenter

log = logging.getLogger(__name__)

__all__ = ["ChainResult", "load_chain_translator", "segment_mr_volume", "reference_quantiles"]


@dataclass
class ChainResult:
    """The outputs of one MR through the chain.

    Attributes:
        mask: label map on the MR's grid (uint8, or uint16 for > 255 labels).
        sct: the synthetic CT (HU, MR grid) the segmenter saw.
        label_names: id -> name of ``mask``.
        timings: seconds per stage (``translate``, ``segment``).
    """

    mask: Volume
    sct: Volume
    label_names: dict[int, str]
    timings: dict[str, float] = field(default_factory=dict)
    agreement: dict | None = None  # with agreement=True: medgen.inference.agreement.agreement's report


def load_chain_translator(ref):
    """``"none"``, ``"histogram"`` or a loaded translator (run dir, bundle dir, MLflow URI)."""
    if isinstance(ref, str) and ref.lower() in BASELINES:
        return ref.lower()
    from medgen.inference.translate import load_translator
    return load_translator(ref)


def reference_quantiles(segmenter: CTSegmenter, ct_reference: str | Path | Volume | None) -> np.ndarray:
    """The CT reference histogram for the ``histogram`` baseline: a given CT, else the segmenter's own."""
    if ct_reference is not None:
        if not isinstance(ct_reference, Volume):
            ct_reference = read_volume(ct_reference)
        return reference_quantiles_from_ct(ct_reference)
    q = segmenter.extra.get("ct_reference_quantiles")
    if q is None:
        raise InputError("the histogram baseline needs a CT reference histogram, and this segmenter has none",
                         path="--translator histogram",
                         fix="pass --ct-reference CT_FILE (any CT of similar anatomy), or use a segmenter trained "
                             "by medgen (it stores one)")
    return np.asarray(q, np.float64)


def segment_mr_volume(mr: Volume, *, translator, segmenter: CTSegmenter, device="cpu", precision="fp32",
                      ct_reference: str | Path | Volume | None = None, show_progress: bool = False,
                      agreement: bool = False, agreement_threshold: float | None = None) -> ChainResult:
    """Run the chain on one MR volume.

    Args:
        mr: the MR (any orientation and spacing).
        translator: ``"none"``, ``"histogram"``, or a translator (see :func:`load_chain_translator`).
        segmenter: a loaded CT segmenter (:func:`medgen.models.segmenters.load_segmenter`).
        device, precision: where and how the networks run.
        ct_reference: CT (path or Volume) for the histogram baseline; defaults to the segmenter's
            stored training histogram.
        agreement: also run the whole chain on a perturbed copy of the MR
            (:func:`medgen.inference.agreement.perturbed_prediction`) and report how much the two
            masks agree per structure, with a flag for masks not to trust (about twice the time).
        agreement_threshold: the flag's threshold (default
            :data:`medgen.inference.agreement.DEFAULT_THRESHOLD`).

    Returns:
        :class:`ChainResult` whose mask has exactly ``mr``'s shape and affine.
    """
    import torch
    from medgen.runtime import resolve_device, resolve_precision

    dev = resolve_device(device) if isinstance(device, str) else device
    dtype = precision if isinstance(precision, torch.dtype) else resolve_precision(precision, dev)
    timings: dict[str, float] = {}
    sct, labels = _chain_once(mr, translator, segmenter, dev, dtype, ct_reference, show_progress, timings)
    if labels.shape != mr.shape:
        raise ModelError(f"internal error: mask shape {labels.shape} differs from the MR's {mr.shape}")
    names = dict(segmenter.label_names)
    dtype_out = np.uint8 if max(names) < 256 else np.uint16
    mask = Volume(np.asarray(labels.array).astype(dtype_out), mr.affine.copy(), None, mr.series_uid,
                  {"label_names": names, "modality": "SEG"})
    report = None
    if agreement:
        t2 = time.perf_counter()
        second = perturbed_prediction(
            mr, lambda v: _chain_once(v, translator, segmenter, dev, dtype, ct_reference, False, {})[1])
        report = score(mask.array, second, names, threshold=agreement_threshold or DEFAULT_THRESHOLD)
        timings["agreement"] = time.perf_counter() - t2
    return ChainResult(mask=mask, sct=sct, label_names=names, timings=timings, agreement=report)


def _chain_once(mr: Volume, translator, segmenter: CTSegmenter, dev, dtype, ct_reference, show_progress: bool,
                timings: dict) -> tuple[Volume, Volume]:
    """One pass of the chain: (synthetic CT, labels on the MR grid); stage times into ``timings``."""
    import torch
    t0 = time.perf_counter()
    if translator == "none" and segmenter.contrast_agnostic:
        sct = mr  # the segmenter normalises each image itself: the MR goes in as it is
    elif translator == "none":
        sct = normalised_mr_as_ct(mr, segmenter.input_range())
    elif translator == "histogram":
        sct = histogram_matched_ct(mr, reference_quantiles(segmenter, ct_reference))
    elif isinstance(translator, str):
        raise ModelError(f"unknown translator '{translator}'", fix="pass a translator model, 'none' or 'histogram'")
    else:
        from medgen.inference.translate import translate_volume
        names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        sct = translate_volume(mr, translator, device=dev, precision=names.get(dtype, "fp32"),
                               show_progress=show_progress)
    timings["translate"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    labels = segmenter.segment(sct, device=dev, precision=dtype)
    timings["segment"] = time.perf_counter() - t1
    return sct, labels
