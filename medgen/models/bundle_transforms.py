"""MONAI dictionary transforms that let MONAI's own bundle runner apply medgen's models.

A medgen bundle's ``configs/inference.json`` (written by :func:`medgen.models.bundle.monai_inference_config`)
is a normal MONAI bundle config: ``LoadImaged`` -> these transforms / MONAI's
``SlidingWindowInferer`` -> ``SaveImaged``, run by ``monai.bundle.ConfigParser`` or
``python -m monai.bundle run``. The geometry steps are medgen's own functions (the ones
``medgen segment`` / ``medgen translate`` use), so MONAI's run gives the same mask / synthetic CT
as medgen's, voxel for voxel, instead of a near copy from similar-but-different MONAI resamplers.

* :class:`PrepareSegmenterInputd`: image -> the segmenter's orientation, spacing and intensity
  scaling, extended along the body axis to one window (:meth:`medgen.models.segmenters.NetworkSegmenter.window_input`);
  remembers the source grid;
* :class:`ScoresOnSourceGridd`: class scores -> labels on the source grid (scores interpolated,
  then arg-max: :func:`medgen.inference.segment.argmax_on_grid`, as ``medgen segment`` does);
* :class:`LabelsOnSourceGridd`: arg-max'd labels -> the source grid (nearest neighbour; what
  bundles exported before :class:`ScoresOnSourceGridd` name, kept so they still run);
* :class:`Translated`: MR -> synthetic CT in HU on the MR's grid with a MONAI-built network and the
  bundle's ``medgen.json`` (:func:`medgen.inference.translate.translate_volume`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medgen.io.geometry import resample_like
from medgen.io.volume import Volume
from medgen.inference.segment import argmax_on_grid, average_with_shifted_grid, tta_shift
from medgen.inference.translate import Translator, translate_volume
from medgen.models.input_spec import InputSpec
from medgen.models.segmenters import NetworkSegmenter, _dtype, _literal, _walk_transforms
from medgen.runtime import autocast

__all__ = ["PrepareSegmenterInputd", "ScoresOnSourceGridd", "LabelsOnSourceGridd", "Translated"]

SOURCE_KEY = "medgen_source_grid"


def _volume(image) -> Volume:
    """A channel-less MONAI image (MetaTensor with a RAS affine) as a medgen Volume."""
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    return Volume(array, np.asarray(image.affine, np.float64))


def _meta_tensor(volume: Volume, like, channel: bool = True) -> MetaTensor:
    array = torch.as_tensor(np.ascontiguousarray(volume.array))
    out = MetaTensor(array[None] if channel else array, affine=torch.as_tensor(volume.affine))
    if isinstance(like, MetaTensor) and "filename_or_obj" in like.meta:
        out.meta["filename_or_obj"] = like.meta["filename_or_obj"]
    return out


class PrepareSegmenterInputd(MapTransform):
    """Reorient, resample, scale and extend ``keys`` as a medgen segmenter with ``input_spec`` expects
    (:meth:`~medgen.models.segmenters.NetworkSegmenter.window_input`)."""

    def __init__(self, keys, input_spec: dict, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spec = InputSpec.from_dict(input_spec)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            source = _volume(d[key])
            d[SOURCE_KEY] = {"affine": source.affine, "shape": np.asarray(source.shape),
                             "filename": d[key].meta.get("filename_or_obj") if isinstance(d[key], MetaTensor) else None}
            d[key] = _meta_tensor(NetworkSegmenter.window_input(source, self.spec), d[key])
        return d


def _source_grid(data: dict) -> tuple[np.ndarray, tuple[int, ...]]:
    """The (affine, shape) :class:`PrepareSegmenterInputd` remembered."""
    grid = data[SOURCE_KEY]
    affine = np.asarray(torch.as_tensor(grid["affine"]).cpu(), np.float64).reshape(4, 4)
    shape = tuple(int(s) for s in np.asarray(torch.as_tensor(grid["shape"]).cpu()).reshape(-1))
    return affine, shape


class ScoresOnSourceGridd(MapTransform):
    """Class scores in ``keys`` (``(C, *network grid)``) -> a label map on the grid remembered by
    :class:`PrepareSegmenterInputd`: scores interpolated onto it, then arg-max, as uint8 / uint16."""

    def __init__(self, keys, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data):
        d = dict(data)
        affine, shape = _source_grid(d)
        for key in self.key_iterator(d):
            scores = d[key]
            network_affine = np.asarray(torch.as_tensor(scores.affine).cpu(), np.float64)
            labels = argmax_on_grid(torch.as_tensor(scores).float().cpu().numpy(), network_affine, affine, shape)
            d[key] = _meta_tensor(Volume(labels, affine), None)
            if d[SOURCE_KEY].get("filename"):
                d[key].meta["filename_or_obj"] = d[SOURCE_KEY]["filename"]
        return d


class LabelsOnSourceGridd(MapTransform):
    """Map label maps in ``keys`` (on the network's grid) back onto the grid remembered by
    :class:`PrepareSegmenterInputd`, by nearest neighbour, as uint8 / uint16."""

    def __init__(self, keys, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data):
        d = dict(data)
        grid = d[SOURCE_KEY]
        affine, shape = _source_grid(d)
        for key in self.key_iterator(d):
            labels = _volume(d[key])
            reference = Volume(np.zeros(shape, np.uint8), affine)
            back = resample_like(labels.with_array(np.rint(labels.array).astype(np.int32)), reference, order=0, cval=0)
            top = int(back.array.max(initial=0))
            d[key] = _meta_tensor(back.with_array(back.array.astype(np.uint8 if top < 256 else np.uint16)), None)
            if grid.get("filename"):
                d[key].meta["filename_or_obj"] = grid["filename"]
        return d


class Translated(MapTransform):
    """MR -> synthetic CT (HU, the MR's grid) with ``network`` and the bundle's ``medgen.json``."""

    def __init__(self, keys, network: torch.nn.Module, bundle_root: str, device="cpu", precision: str = "fp32",
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        desc = json.loads((Path(bundle_root) / "medgen.json").read_text())
        extra = desc["extra"]
        self.translator = Translator(network=network.eval(), spatial_dims=int(extra["spatial_dims"]),
                                     context=int(extra["context"]),
                                     ct_window=tuple(float(w) for w in extra["ct_window"]),
                                     preprocess=dict(desc["preprocess"]), settings=dict(extra.get("inference", {})),
                                     source=str(bundle_root))
        self.device, self.precision = torch.device(device), precision

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            sct = translate_volume(_volume(d[key]), self.translator, device=self.device, precision=self.precision,
                                   show_progress=False)
            d[key] = _meta_tensor(sct.with_array(np.rint(sct.array).astype(np.int16)), d[key])
        return d


# ---------------------------------------------------------------------------------------------
# the other direction: MONAI Model-Zoo bundles applied by medgen exactly as MONAI applies them
# ---------------------------------------------------------------------------------------------

def monai_pipeline_settings(config: dict) -> dict:
    """Literal settings of a MONAI bundle's pipeline that change its output beyond :class:`InputSpec`:
    the ``Spacingd`` interpolation mode and the inferer's blending ``mode`` and padding ``cval``
    (MONAI's defaults where the bundle does not say, or says it with an expression)."""
    out = {"spacing_mode": "bilinear", "sw_mode": "constant", "cval": 0.0}
    for t in _walk_transforms(config.get("preprocessing", config)):
        if str(t["_target_"]).split(".")[-1] in ("Spacingd", "Spacing"):
            mode = _literal(t.get("mode"), config)
            if isinstance(mode, str):
                out["spacing_mode"] = mode
    for t in _walk_transforms(config.get("inferer", {})):
        mode, cval = _literal(t.get("mode"), config), _literal(t.get("cval"), config)
        if isinstance(mode, str):
            out["sw_mode"] = mode
        if isinstance(cval, (int, float)):
            out["cval"] = float(cval)
    return out


def monai_bundle_segmenter(network, spec, label_names, *, source: str, settings: dict):
    """A :class:`~medgen.models.segmenters.NetworkSegmenter` that applies a MONAI bundle's network the way
    MONAI's own bundle inference does (see :class:`MonaiPipelineSegmenter`)."""
    class MonaiPipelineSegmenter(NetworkSegmenter):
        """MONAI's ``Orientation`` -> ``Spacing`` -> HU scaling -> ``sliding_window_inference`` on
        logits with the bundle's blending -> arg-max -> MONAI's ``Invert`` (nearest) back onto the
        input grid: the same mask as ``monai.bundle`` inference of the same bundle, voxel for voxel,
        rather than medgen's own (centre-preserving) resampler, which differs by sub-voxel shifts."""

        def segment(self, ct_hu: Volume, *, device="cpu", precision="fp32") -> Volume:
            from monai.inferers import sliding_window_inference
            from monai.transforms import Compose, Invert, Orientation, Spacing

            device = torch.device(device)
            dtype = _dtype(precision, device)
            steps = [Orientation(axcodes=self.spec.orientation)]
            if self.spec.spacing is not None:
                steps.append(Spacing(pixdim=self.spec.spacing, mode=settings["spacing_mode"]))
            pre = Compose(steps)
            image = MetaTensor(torch.from_numpy(np.ascontiguousarray(ct_hu.array, np.float32))[None],
                               affine=torch.as_tensor(ct_hu.affine, dtype=torch.float64))
            work = pre(image)
            x = torch.from_numpy(self.spec.scale(np.asarray(work[0])))[None, None]
            self.network.to(device)

            def infer(volume):
                with torch.no_grad(), autocast(device, dtype):
                    return sliding_window_inference(volume.to(device), tuple(self.spec.patch_size), 2, self.network,
                                                    overlap=self.spec.overlap, mode=settings["sw_mode"],
                                                    padding_mode="constant", cval=settings["cval"],
                                                    device=torch.device("cpu")).float()

            with torch.no_grad():
                if self.tta:
                    logits = average_with_shifted_grid(infer, x, tta_shift(self.spec.patch_size, self.spec.overlap),
                                                       settings["cval"])
                else:
                    logits = infer(x)
            labels = MetaTensor(torch.argmax(logits[0], dim=0, keepdim=True).float(), affine=work.affine,
                                applied_operations=work.applied_operations)
            back = np.rint(np.asarray(Invert(transform=pre, nearest_interp=True)(labels))[0]).astype(np.int64)
            if back.shape != ct_hu.shape:  # defensive: MONAI restores the original shape
                back = resample_like(Volume(back, np.asarray(work.affine, np.float64)), ct_hu, order=0, cval=0).array
            dtype_out = np.uint8 if max(self.label_names) < 256 else np.uint16
            return Volume(back.astype(dtype_out), ct_hu.affine.copy(), None, ct_hu.series_uid,
                          {"label_names": dict(self.label_names)})

    return MonaiPipelineSegmenter(network, spec, label_names, source=source)
