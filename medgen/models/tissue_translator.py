"""A contrast-agnostic segmenter that knows every voxel's tissue, exported as an MR -> CT translator.

Why: under random contrast an intensity says nothing about the tissue, so an image-to-image
generator trained on renderings falls back to the median HU wherever it cannot recognise a tissue
by its shape (bone and gas fade), and a tissue-classifying generator trained by the translator
task learns its decisions far worse than the contrast-agnostic segmenter does with the same
network and length (docs/results.md, "Tissue-painting translator"). The segmenter recipe
(``segmenter/synth_unet``: real-CT curriculum, class-centred patches, warps, per-image
percentiles) is what learns anatomy from renderings, so the translator *is* that segmenter: with
``synth.target: classes`` it decides every voxel's render class (organ labels, and the CT's HU
tissue band wherever unlabelled), and the synthetic CT paints each class with its mean HU in the
training CTs, mixed by the class probabilities (soft bulk-density assignment, the classic MR-only
radiotherapy synthetic CT).

:func:`export_tissue_translator` writes an ordinary ``translator`` bundle, so ``medgen translate``
and the ``segment-mr`` chain use it unchanged:

* network :class:`medgen.networks.tissue_generator.TissueGenerator` whose U-Net carries the
  segmenter's weights and whose painting values are the class means in the bundle's CT window;
* the MR recipe reproduces the segmenter's own input preparation (RAS, its spacing, no crop, no
  anti-aliasing, the whole image's percentiles onto [-1, 1]), so the translator sees exactly what
  the segmenter saw in training;
* 3D sliding windows of the segmenter's patch size and overlap; no background masking (air is a
  class the network decides).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from medgen.errors import ModelError
from medgen.models.bundle import BundleSpec, load_bundle, resolve_model, save_bundle
from medgen.models.input_spec import InputSpec
from medgen.networks.tissue_generator import TISSUE_GENERATOR_NAME, TissueGenerator
from medgen.transforms.intensity import hu_to_unit

__all__ = ["AIR_HU", "export_tissue_translator", "painting_window", "tissue_generator_from_segmenter"]

#: painting value of a class no training CT had (the network never learnt to decide it)
AIR_HU = -1000.0


def painting_window(class_mean_hu: dict[int, float]) -> tuple[float, float]:
    """The CT window of the translator: [-1000, 1000] HU, widened to hold every painting value.

    Examples:
        >>> painting_window({0: -1000.0, 5: 40.0, 9: 1210.4})
        (-1000.0, 1211.0)
    """
    values = list(class_mean_hu.values()) or [0.0]
    return float(min(-1000.0, math.floor(min(values)))), float(max(1000.0, math.ceil(max(values))))


def tissue_generator_from_segmenter(segmenter: BundleSpec, class_mean_hu: dict[int, float],
                                    window: tuple[float, float]) -> tuple[TissueGenerator, dict]:
    """The segmenter's U-Net inside a :class:`TissueGenerator` painting ``class_mean_hu``; and its kwargs.

    Raises:
        ModelError: the segmenter is not a 3D single-channel MONAI U-Net (nothing else can be wrapped).
    """
    net = segmenter.network
    kwargs = dict(net.get("kwargs", {}))
    if net.get("name") != "monai.UNet" or kwargs.get("spatial_dims") != 3 or kwargs.get("in_channels") != 1:
        raise ModelError(f"is a {net.get('name')} segmenter; only a 3D single-channel monai.UNet can be exported as "
                         "a tissue-painting translator", path=segmenter.path,
                         fix="train it with network.name: unet (segmenter/synth_unet)")
    n_classes = int(kwargs["out_channels"])
    gen_kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "n_classes": n_classes,
                  "channels": list(kwargs["channels"]), "strides": list(kwargs["strides"]),
                  "num_res_units": int(kwargs.get("num_res_units", 1))}
    generator = TissueGenerator(**gen_kwargs)
    generator.unet.load_state_dict(segmenter.build().state_dict())
    hu = np.array([class_mean_hu.get(k, AIR_HU) for k in range(n_classes)], np.float32)
    generator.set_class_values(torch.from_numpy(hu_to_unit(hu, window).astype(np.float32)))
    return generator.eval(), gen_kwargs


def export_tissue_translator(segmenter_ref: str | Path, folder: str | Path,
                             class_mean_hu: dict[int, float] | None = None) -> Path:
    """Write the segmenter ``segmenter_ref`` as a tissue-painting ``translator`` bundle in ``folder``.

    Args:
        segmenter_ref: run folder, bundle folder or MLflow URI of a contrast-agnostic segmenter
            (``intensity: percentile``; trained with ``synth.target: classes`` to know every tissue).
        class_mean_hu: class id -> painting HU; default: the bundle's ``extra.class_mean_hu``
            (written by ``medgen train segmenter`` on renderings).

    Raises:
        ModelError: not a contrast-agnostic U-Net segmenter, or no painting values known.
    """
    spec = load_bundle(resolve_model(segmenter_ref), kind="segmenter")
    inp = InputSpec.from_dict(spec.extra.get("input", {}))
    if inp.intensity != "percentile":
        raise ModelError("is a CT-window segmenter; a translator needs one trained on renderings "
                         "(data.intensity: percentile)", path=spec.path, fix="train it with -c segmenter/synth_unet")
    if class_mean_hu is None:
        class_mean_hu = {int(k): float(v) for k, v in spec.extra.get("class_mean_hu", {}).items()}
    if not class_mean_hu:
        raise ModelError("records no mean HU per class (extra.class_mean_hu)", path=spec.path,
                         fix="train it with synth.enabled: true (segmenter/synth_unet)")
    window = painting_window(class_mean_hu)
    generator, kwargs = tissue_generator_from_segmenter(spec, class_mean_hu, window)
    preprocess = {"modality": "mr", "orientation": inp.orientation,
                  "spacing": None if inp.spacing is None else list(inp.spacing), "antialias": False,
                  "crop": {"enabled": False}, "mr": {"n4": False, "lower_percentile": inp.percentiles[0],
                                                      "upper_percentile": inp.percentiles[1],
                                                      "percentiles_in_mask": False}}
    patch = list(inp.patch_size)
    names = {k: spec.label_names.get(k, f"class_{k}") for k in range(generator.n_classes)}
    extra = {"spatial_dims": 3, "context": 1, "ct_window": list(window), "patch_size": patch,
             "slice_axis": "RAS axis 2 (axial)",
             "inference": {"window_size": patch, "overlap": inp.overlap, "mask_background": False},
             "painted_classes": {str(k): {"name": names[k], "hu": float(class_mean_hu.get(k, AIR_HU))}
                                 for k in names},
             "source_segmenter": str(spec.path)}
    metadata = {
        "task": "MR to CT translation (synthetic CT)",
        "description": ("Tissue-painting translator: a contrast-agnostic segmenter decides each voxel's tissue class "
                        "and each class is painted with its mean training-CT HU. Apply with `medgen translate`."),
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                                 "spatial_shape": patch, "dtype": "float32", "value_range": [-1, 1]}},
            "outputs": {"pred": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": patch, "dtype": "float32", "value_range": [-1, 1],
                                 "hounsfield_window": list(window)}}},
    }
    bundle = BundleSpec(kind="translator", network={"name": TISSUE_GENERATOR_NAME, "kwargs": kwargs},
                        preprocess=preprocess, extra=extra, metadata=metadata)
    return save_bundle(folder, bundle, generator)
