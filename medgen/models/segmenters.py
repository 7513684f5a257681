"""CT segmenters behind one interface: ``segment(ct_hu) -> label map on the CT's grid``.

Users bring CT segmentation models in several forms; the MR->CT->mask chain must not care which.
:func:`load_segmenter` turns any supported reference into a :class:`CTSegmenter`:

* a **MONAI bundle** folder (``configs/inference.json|yaml`` + ``models/model.pt|model.ts``). The
  network is rebuilt from ``network_def`` *without evaluating code*: ``_target_`` must be an
  allow-listed MONAI network and every argument a literal (``@key`` references to literal values
  are substituted). Bundles that need ``$`` expressions are loaded only with ``trust_bundle=True``
  (``--trust-bundle``), through ``monai.bundle.ConfigParser``. Spacing, orientation and intensity
  scaling come from the bundle's preprocessing transforms (``Spacingd.pixdim``,
  ``Orientationd.axcodes``, ``ScaleIntensityRanged``), the patch size from the inferer's
  ``roi_size``, label names from ``metadata.json`` (``channel_def`` or ``labels``);
* a **TorchScript** file with a YAML/JSON **sidecar** (``model.ts`` + ``model.ts.yaml`` or
  ``model.yaml``/``model.json``) stating spacing, HU scaling, patch size and label names;
* **medgen's own** exported segmenter (run dir, bundle dir or MLflow URI);
* **TotalSegmentator** (``totalsegmentator[:task][:fast]``) through its Python API, when
  installed with its weights.

Every network-based segmenter does the same thing at inference: reorient to its orientation
(RAS by default), resample to its spacing, scale HU to its input range, extend a scan shorter than
one window along the body axis by repeating its end slices (not with air), sliding-window class
scores, interpolated back onto the input CT's exact grid before the arg-max
(:func:`medgen.inference.segment.argmax_on_grid`: boundaries between network voxels, not blocks).
A MONAI bundle does these steps with MONAI's own transforms (``Orientation``, ``Spacing``,
``sliding_window_inference`` with the bundle's blending, ``Invert``), so medgen's mask equals
MONAI's own bundle inference voxel for voxel (:mod:`medgen.models.bundle_transforms`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from medgen.errors import ModelError
from medgen.io.geometry import reorient, resample_like, resample_to_spacing
from medgen.io.volume import Volume
from medgen.models.input_spec import InputSpec
from medgen.inference.segment import argmax_on_grid, extend_along_body_axis, sliding_window_scores
from medgen.models.bundle import load_bundle, resolve_model
from medgen.models.schemas import Sidecar, validate_description
from medgen.runtime import resolve_precision

log = logging.getLogger(__name__)

__all__ = ["InputSpec", "CTSegmenter", "NetworkSegmenter", "TotalSegmentatorSegmenter", "load_segmenter",
           "load_monai_bundle", "load_torchscript", "load_medgen_segmenter", "MONAI_SEGMENTATION_NETWORKS"]

#: MONAI network classes a bundle may name without ``--trust-bundle``.
MONAI_SEGMENTATION_NETWORKS = ("UNet", "BasicUNet", "BasicUNetPlusPlus", "SegResNet", "SegResNetDS", "SegResNetDS2",
                               "DynUNet", "UNETR", "SwinUNETR", "AttentionUnet", "VNet", "HighResNet",
                               "FlexibleUNet", "MedNeXt")

TRUST_FIX = ("pass --trust-bundle if you trust this bundle's author (its config expressions will run as Python), "
             "or export the network as TorchScript with a sidecar")


class CTSegmenter:
    """A CT segmentation model: Hounsfield units in, label map on the same grid out.

    Attributes:
        label_names: ``{id: name}`` of the output label map (0 = background).
        source: where the model came from (for logs and reports).
        extra: model-specific facts, e.g. ``ct_reference_quantiles`` for the histogram baseline.
    """

    label_names: dict[int, str]
    source: str = ""
    extra: dict

    def segment(self, ct_hu: Volume, *, device: str | torch.device = "cpu",
                precision: str | torch.dtype = "fp32") -> Volume:
        """Label map (integer ids of :attr:`label_names`) on ``ct_hu``'s exact grid."""
        raise NotImplementedError

    def input_range(self) -> tuple[float, float]:
        """The HU range the model is sensitive to (used to map MR intensities for baselines)."""
        return (-1000.0, 1000.0)

    @property
    def contrast_agnostic(self) -> bool:
        """True for a model that normalises each image itself (MR of any contrast goes in as it is)."""
        return False


def _dtype(precision, device: torch.device) -> torch.dtype:
    if isinstance(precision, torch.dtype):
        return precision
    return resolve_precision(precision, device)


class NetworkSegmenter(CTSegmenter):
    """A PyTorch / TorchScript network applied with sliding windows at its own spacing.

    ``tissue_ids``: output classes that are not structures (the HU tissue bands a segmenter trained
    with ``synth.target: classes`` also learns, so that it can paint a synthetic CT). Their voxels
    are background in the mask and they are not in :attr:`label_names`, so volumes, agreement and
    DICOM SEG hold the structures only.
    """

    def __init__(self, network: torch.nn.Module, spec: InputSpec, label_names: Mapping, *, source: str = "",
                 extra: dict | None = None, tta: bool = False, tissue_ids=()):
        self.network = network.eval()
        self.spec = spec
        self.tissue_ids = frozenset(int(i) for i in tissue_ids)
        self.label_names = {int(k): str(v) for k, v in label_names.items() if int(k) not in self.tissue_ids}
        self.label_names.setdefault(0, "background")
        self.source = source
        self.extra = dict(extra or {})
        self.tta = tta

    def input_range(self) -> tuple[float, float]:
        return (float(self.spec.a_min), float(self.spec.a_max))

    @property
    def contrast_agnostic(self) -> bool:
        return self.spec.intensity == "percentile"

    @staticmethod
    def prepare_grid(image: Volume, spec: InputSpec) -> Volume:
        """An image reoriented and resampled (linear) onto the network's grid; intensities unchanged."""
        work = reorient(image, spec.orientation)
        work = work.with_array(work.array.astype(np.float32, copy=False))
        if spec.spacing is not None:
            work = resample_to_spacing(work, spec.spacing, order=1)
        return work

    @staticmethod
    def prepare_image(ct_hu: Volume, spec: InputSpec) -> Volume:
        """A CT reoriented, resampled and intensity-scaled as a network with ``spec`` expects.

        Training (:mod:`medgen.training.segmenter`) uses this same function, so training and
        inference inputs cannot drift apart.
        """
        work = NetworkSegmenter.prepare_grid(ct_hu, spec)
        return work.with_array(spec.scale(work.array))

    def prepare(self, ct_hu: Volume) -> Volume:
        """The CT reoriented, resampled and intensity-scaled as this network expects."""
        return self.prepare_image(ct_hu, self.spec)

    @staticmethod
    def window_input(ct_hu: Volume, spec: InputSpec) -> Volume:
        """:meth:`prepare_image`, extended along the body axis to at least one window by repeating
        its end slices (:func:`medgen.inference.segment.extend_along_body_axis`): what the sliding
        windows run on, in ``medgen segment`` and in an exported bundle alike."""
        return extend_along_body_axis(NetworkSegmenter.prepare_image(ct_hu, spec), spec.patch_size)

    def segment(self, ct_hu: Volume, *, device="cpu", precision="fp32") -> Volume:
        device = torch.device(device)
        dtype = _dtype(precision, device)
        work = self.window_input(ct_hu, self.spec)
        self.network.to(device)
        pad = float(self.spec.scale(np.array([-1024.0]))[0])
        scores = sliding_window_scores(self.network, work.array, patch_size=self.spec.patch_size, device=device,
                                       dtype=dtype, overlap=self.spec.overlap, pad_value=pad, tta=self.tta)
        labels = argmax_on_grid(scores, work.affine, ct_hu.affine, ct_hu.shape)
        del scores
        if self.tissue_ids:
            labels[np.isin(labels, sorted(self.tissue_ids))] = 0
        labels = _map_channels_to_ids(labels, self.label_names)
        return Volume(labels, ct_hu.affine.copy(), None, ct_hu.series_uid, {"label_names": dict(self.label_names)})


def _map_channels_to_ids(labels: np.ndarray, names: dict[int, str]) -> np.ndarray:
    """Output channel c is label id c (MONAI convention); checks the network's classes fit the names."""
    top = int(labels.max()) if labels.size else 0
    if top > max(names):
        log.warning("network predicted class %d but only ids up to %d are named", top, max(names))
    return labels


# ---------------------------------------------------------------------------------------------
# (c) medgen's own segmenter bundles
# ---------------------------------------------------------------------------------------------

def load_medgen_segmenter(ref: str | Path) -> NetworkSegmenter:
    """A segmenter exported by ``medgen train segmenter`` (run dir, bundle dir or MLflow URI)."""
    folder = resolve_model(ref)
    spec = load_bundle(folder, kind="segmenter")
    net = spec.build()
    if "input" not in spec.extra:  # (load_bundle validated medgen.json, extra.input included)
        raise ModelError("segmenter bundle has no 'input' description (spacing, intensity scaling)", path=folder,
                         fix="re-export it with medgen train segmenter")
    return NetworkSegmenter(net, InputSpec.from_dict(spec.extra["input"]), spec.label_names, source=str(folder),
                            extra=spec.extra, tissue_ids=tissue_class_ids(spec.label_names, spec.extra))


def tissue_class_ids(label_names: Mapping, extra: Mapping) -> list[int]:
    """The HU tissue-band classes of a medgen segmenter: ``extra.tissue_class_ids`` (written by every
    ``medgen train segmenter``, empty unless ``synth.target: classes``); bundles written before that
    key existed name them ``tissue_<band>`` (:func:`medgen.training.segmenter.training_label_names`)."""
    if "tissue_class_ids" in extra:
        return [int(i) for i in extra["tissue_class_ids"]]
    return sorted(int(k) for k, v in label_names.items() if str(v).startswith("tissue_"))


# ---------------------------------------------------------------------------------------------
# (b) TorchScript + sidecar
# ---------------------------------------------------------------------------------------------

SIDECAR_KEYS = {"spacing", "hu_window", "scaling", "patch_size", "label_names", "orientation", "overlap", "extra"}


def _find_sidecar(model: Path) -> Path | None:
    stem = model.name.split(".")[0]
    for cand in (model.with_name(model.name + ".yaml"), model.with_name(model.name + ".yml"),
                 model.with_name(model.name + ".json"), model.with_name(stem + ".yaml"),
                 model.with_name(stem + ".yml"), model.with_name(stem + ".json")):
        if cand.exists() and cand != model:
            return cand
    return None


def _read_structured(path: Path) -> dict:
    import yaml
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot be read ({exc})", path=path, fix="check the file is valid JSON/YAML") from exc
    if not isinstance(data, dict):
        raise ModelError("must be a mapping", path=path)
    return data


def spec_from_sidecar(data: Mapping, path: Path | str) -> tuple[InputSpec, dict[int, str]]:
    """InputSpec and label names from a sidecar mapping (see :func:`load_torchscript`).

    Validated first by the typed schema :class:`medgen.models.schemas.Sidecar` (spacing > 0, a
    non-empty HU window, 0 <= overlap < 1, ...): one ModelError line naming the sidecar.
    """
    unknown = set(data) - SIDECAR_KEYS
    if unknown:
        raise ModelError(f"unknown sidecar keys {sorted(unknown)}", path=path, fix=f"valid keys: {sorted(SIDECAR_KEYS)}")
    if "label_names" not in data or not isinstance(data["label_names"], Mapping):
        raise ModelError("sidecar has no label_names mapping (id: name)", path=path,
                         fix="add e.g. label_names: {0: background, 1: liver}")
    validate_description(data, Sidecar, path, "sidecar")
    fields: dict = {}
    if data.get("spacing") is not None:
        fields["spacing"] = data["spacing"]
    if "hu_window" in data:
        lo, hi = data["hu_window"]
        fields.update(a_min=float(lo), a_max=float(hi), b_min=-1.0, b_max=1.0, clip=True)
    if "scaling" in data:
        fields.update({k: data["scaling"][k] for k in ("a_min", "a_max", "b_min", "b_max", "clip") if k in data["scaling"]})
    for key in ("patch_size", "orientation", "overlap"):
        if key in data:
            fields[key] = data[key]
    try:
        spec = InputSpec.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"invalid sidecar values ({exc})", path=path) from exc
    return spec, {int(k): str(v) for k, v in data["label_names"].items()}


def load_torchscript(model_path: str | Path, sidecar: str | Path | None = None) -> NetworkSegmenter:
    """A TorchScript segmentation network plus its sidecar.

    Sidecar (YAML or JSON) keys: ``label_names`` (required), ``spacing`` ([x, y, z] mm or null),
    ``hu_window`` ([lo, hi] mapped to [-1, 1]) or ``scaling`` ({a_min, a_max, b_min, b_max, clip}),
    ``patch_size``, ``orientation`` (default RAS), ``overlap``.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError("does not exist", path=model_path, fix="check the model path")
    side = Path(sidecar) if sidecar else _find_sidecar(model_path)
    if side is None or not side.exists():
        raise ModelError("TorchScript model has no sidecar describing its input and labels", path=model_path,
                         fix=f"write {model_path.name}.yaml with spacing, hu_window, patch_size and label_names")
    data = _read_structured(side)
    spec, names = spec_from_sidecar(data, side)
    try:
        net = torch.jit.load(str(model_path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad archives
        raise ModelError(f"is not a loadable TorchScript model ({type(exc).__name__})", path=model_path,
                         fix="export the network with torch.jit.script/trace and torch.jit.save") from exc
    return NetworkSegmenter(net, spec, names, source=str(model_path), extra=dict(data.get("extra", {})))


# ---------------------------------------------------------------------------------------------
# (a) MONAI bundles
# ---------------------------------------------------------------------------------------------

def _bundle_config(folder: Path) -> tuple[dict, Path]:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        path = folder / "configs" / name
        if path.exists():
            return _read_structured(path), path
    raise ModelError("MONAI bundle has no configs/inference.json or inference.yaml", path=folder,
                     fix="pass the bundle's root folder (the one containing configs/ and models/)")


def _needs_code(value) -> bool:
    if isinstance(value, str):
        return value.startswith("$") or value.startswith("%")
    if isinstance(value, Mapping):
        return any(_needs_code(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_needs_code(v) for v in value)
    return False


def _resolve_refs(value, config: Mapping, path: Path, depth: int = 0):
    """Substitute ``@key`` / ``@a::b`` references to literal config values (no code is run)."""
    if depth > 20:
        raise ModelError("config references are nested too deeply", path=path)
    if isinstance(value, str) and value.startswith("@"):
        node = config
        for part in value[1:].replace("#", "::").split("::"):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ModelError(f"config reference {value} does not resolve", path=path)
        if _needs_code(node):
            raise ModelError(f"network_def reference {value} needs a config expression to be evaluated", path=path,
                             fix=TRUST_FIX)
        return _resolve_refs(node, config, path, depth + 1)
    if isinstance(value, Mapping):
        return {k: _resolve_refs(v, config, path, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, config, path, depth + 1) for v in value]
    return value


def _build_untrusted(config: dict, path: Path) -> torch.nn.Module:
    net_def = config.get("network_def")
    if not isinstance(net_def, Mapping):
        raise ModelError("inference config has no network_def mapping", path=path,
                         fix="pass a TorchScript model (models/model.ts) or --trust-bundle for custom bundles")
    if _needs_code(net_def):
        raise ModelError("the bundle's network_def uses config expressions ($...) that would run code", path=path,
                         fix=TRUST_FIX)
    net_def = _resolve_refs(dict(net_def), config, path)
    target = str(net_def.pop("_target_", ""))
    net_def = {k: v for k, v in net_def.items() if not k.startswith("_")}
    name = target.split(".")[-1].split(":")[-1]
    module = target.rsplit(".", 1)[0] if "." in target else ""
    if name not in MONAI_SEGMENTATION_NETWORKS or module not in ("", "monai.networks.nets"):
        raise ModelError(f"network '{target}' is not an allow-listed MONAI network", path=path,
                         fix=f"allowed without trust: {', '.join(MONAI_SEGMENTATION_NETWORKS)}; or {TRUST_FIX}")
    import monai.networks.nets as nets
    try:
        return getattr(nets, name)(**net_def)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"network_def arguments are invalid for {name} ({exc})", path=path) from exc


def _build_trusted(path: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser
    parser = ConfigParser()
    parser.read_config(str(path))
    try:
        return parser.get_parsed_content("network_def", instantiate=True)
    except Exception as exc:  # noqa: BLE001 - arbitrary user code
        raise ModelError(f"network_def could not be built ({type(exc).__name__}: {str(exc)[:200]})", path=path) from exc


def _walk_transforms(value):
    """Yield every mapping with a ``_target_`` anywhere inside a config."""
    if isinstance(value, Mapping):
        if "_target_" in value:
            yield value
        for v in value.values():
            yield from _walk_transforms(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_transforms(v)


def _literal(value, config: Mapping | None = None):
    """``value`` if it is a literal (``@`` references to literals resolved), else None."""
    if isinstance(value, str) and value.startswith("@") and config is not None:
        try:
            value = _resolve_refs(value, config, Path("<config>"))
        except ModelError:
            return None
    return None if _needs_code(value) or (isinstance(value, str) and value.startswith("@")) else value


def spec_from_monai_config(config: dict) -> InputSpec:
    """Spacing, orientation, HU scaling and patch size from a MONAI inference config (literals only)."""
    fields: dict = {}
    section = config.get("preprocessing", config)
    for t in _walk_transforms(section):
        target = str(t["_target_"]).split(".")[-1]
        if target in ("ScaleIntensityRanged", "ScaleIntensityRange"):
            for key in ("a_min", "a_max", "b_min", "b_max", "clip"):
                val = _literal(t.get(key), config)
                if val is not None:
                    fields[key] = val
        elif target in ("Spacingd", "Spacing"):
            pix = _literal(t.get("pixdim"), config)
            if pix is not None:
                fields["spacing"] = [float(p) for p in (pix if isinstance(pix, list) else [pix] * 3)]
        elif target in ("Orientationd", "Orientation"):
            codes = _literal(t.get("axcodes"), config)
            if isinstance(codes, str):
                fields["orientation"] = codes
    for t in _walk_transforms(config.get("inferer", {})):
        roi = _literal(t.get("roi_size"), config)
        if roi is not None:
            fields["patch_size"] = roi
        ov = _literal(t.get("overlap"), config)
        if isinstance(ov, (int, float)):
            fields["overlap"] = float(ov)
    if "patch_size" not in fields:
        roi = _literal(config.get("roi_size") or config.get("patch_size"), config)
        if roi is not None:
            fields["patch_size"] = roi
    return InputSpec.from_dict(fields)


def _label_names_from_metadata(folder: Path) -> dict[int, str]:
    path = folder / "configs" / "metadata.json"
    if not path.exists():
        return {}
    meta = _read_structured(path)
    if isinstance(meta.get("label_names"), Mapping):
        return {int(k): str(v) for k, v in meta["label_names"].items()}
    if isinstance(meta.get("labels"), Mapping):
        return {int(k): str(v) for k, v in meta["labels"].items()}
    outputs = meta.get("network_data_format", {}).get("outputs", {})
    for out in outputs.values():
        chans = out.get("channel_def") if isinstance(out, Mapping) else None
        if isinstance(chans, Mapping) and chans:
            return {int(k): str(v) for k, v in chans.items()}
    return {}


def load_monai_bundle(folder: str | Path, *, trust_bundle: bool = False) -> NetworkSegmenter:
    """A segmenter from a MONAI bundle folder (see the module docstring for what is read)."""
    folder = Path(folder)
    config, cfg_path = _bundle_config(folder)
    names = _label_names_from_metadata(folder)
    if not names:
        raise ModelError("MONAI bundle metadata has no label names (network_data_format.outputs.*.channel_def)",
                         path=folder / "configs" / "metadata.json", fix="add channel_def {\"0\": \"background\", ...}")
    spec = spec_from_monai_config(config)
    ts_path, pt_path = folder / "models" / "model.ts", folder / "models" / "model.pt"
    if ts_path.exists() and not pt_path.exists():
        try:
            net = torch.jit.load(str(ts_path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"TorchScript model cannot be loaded ({type(exc).__name__})", path=ts_path) from exc
        return _zoo_segmenter(net, spec, names, folder, config)
    if not pt_path.exists():
        raise ModelError("MONAI bundle has no models/model.pt or models/model.ts", path=folder,
                         fix="download the bundle's weights (e.g. python -m monai.bundle download ...)")
    net = _build_trusted(cfg_path) if trust_bundle else _build_untrusted(config, cfg_path)
    try:
        state = torch.load(pt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"weights cannot be loaded safely ({type(exc).__name__}: {str(exc)[:160]})", path=pt_path,
                         fix="the file must be a plain state dict (torch.save(model.state_dict()))") from exc
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"weights do not match network_def ({str(exc)[:200]})", path=pt_path) from exc
    return _zoo_segmenter(net, spec, names, folder, config)


def _zoo_segmenter(net, spec: InputSpec, names: dict, folder: Path, config: dict) -> NetworkSegmenter:
    """The bundle's network applied with MONAI's own transforms, as ``monai.bundle`` inference applies it."""
    from medgen.models.bundle_transforms import monai_bundle_segmenter, monai_pipeline_settings
    return monai_bundle_segmenter(net, spec, names, source=str(folder), settings=monai_pipeline_settings(config))


# ---------------------------------------------------------------------------------------------
# (d) TotalSegmentator
# ---------------------------------------------------------------------------------------------

TOTALSEG_FIX = "pip install TotalSegmentator and download its weights (totalseg_download_weights -t total)"


@dataclass
class TotalSegmentatorSegmenter(CTSegmenter):
    """TotalSegmentator through its Python API (``totalsegmentator.python_api.totalsegmentator``)."""

    task: str = "total"
    fast: bool = False
    label_names: dict = field(default_factory=dict)
    source: str = "totalsegmentator"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        try:
            from totalsegmentator.map_to_binary import class_map
            from totalsegmentator.python_api import totalsegmentator  # noqa: F401
        except ImportError as exc:
            raise ModelError("TotalSegmentator is not installed", path="totalsegmentator", fix=TOTALSEG_FIX) from exc
        if self.task not in class_map:
            raise ModelError(f"unknown TotalSegmentator task '{self.task}'", path="totalsegmentator",
                             fix="use e.g. totalsegmentator:total or totalsegmentator:total:fast")
        self.label_names = {0: "background", **{int(k): str(v) for k, v in class_map[self.task].items()}}
        self.source = f"totalsegmentator:{self.task}{':fast' if self.fast else ''}"

    def segment(self, ct_hu: Volume, *, device="cpu", precision="fp32") -> Volume:
        import nibabel as nib
        from totalsegmentator.python_api import totalsegmentator
        img = nib.Nifti1Image(ct_hu.array.astype(np.float32), ct_hu.affine)
        dev = "gpu" if str(device).startswith("cuda") else "cpu"
        try:
            out = totalsegmentator(img, None, task=self.task, fast=self.fast, device=dev, quiet=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"TotalSegmentator failed ({type(exc).__name__}: {str(exc)[:200]})",
                             path="totalsegmentator", fix=TOTALSEG_FIX) from exc
        labels = Volume(np.asarray(out.dataobj).astype(np.uint16), out.affine)
        back = resample_like(labels, ct_hu, order=0)
        return Volume(back.array, ct_hu.affine.copy(), None, ct_hu.series_uid, {"label_names": dict(self.label_names)})


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------

def load_segmenter(ref: str | Path, *, trust_bundle: bool = False, sidecar: str | Path | None = None,
                   tta: bool = False) -> CTSegmenter:
    """Any supported segmenter reference as a :class:`CTSegmenter`.

    Args:
        ref: ``totalsegmentator[:task][:fast]``; a TorchScript file (with sidecar); a medgen run
            dir, bundle dir or MLflow URI; or a MONAI bundle folder.
        trust_bundle: allow a MONAI bundle's config expressions to run (``--trust-bundle``).
        sidecar: explicit sidecar for a TorchScript file.
        tta: test-time augmentation (network segmenters): average with a second window grid
            shifted by half a stride (:func:`medgen.inference.segment.average_with_shifted_grid`).

    Raises:
        ModelError: nothing loadable at ``ref``, with the accepted forms.
    """
    text = str(ref)
    if text.lower().startswith("totalsegmentator"):
        parts = text.split(":")
        return TotalSegmentatorSegmenter(task=parts[1] if len(parts) > 1 and parts[1] else "total",
                                         fast=len(parts) > 2 and parts[2] == "fast")
    if text.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        seg = load_medgen_segmenter(text)
    else:
        path = Path(text)
        if not path.exists():
            raise ModelError("does not exist", path=path,
                             fix="pass a medgen run/bundle folder, a MONAI bundle folder, a TorchScript file with "
                                 "a sidecar, an MLflow URI (models:/name/1) or totalsegmentator")
        if path.is_file():
            seg = load_torchscript(path, sidecar)
        elif (path / "medgen.json").exists() or (path / "bundle" / "medgen.json").exists():
            seg = load_medgen_segmenter(path)
        elif (path / "configs").is_dir():
            seg = load_monai_bundle(path, trust_bundle=trust_bundle)
        else:
            raise ModelError("is not a segmenter (no medgen.json, no MONAI configs/ folder)", path=path,
                             fix="pass a medgen run/bundle folder, a MONAI bundle folder or a TorchScript file")
    if tta and isinstance(seg, NetworkSegmenter):
        seg.tta = True
    return seg


def with_spec(segmenter: NetworkSegmenter, **changes) -> NetworkSegmenter:
    """A copy of a network segmenter with some input settings changed (e.g. a larger overlap)."""
    return NetworkSegmenter(segmenter.network, replace(segmenter.spec, **changes), segmenter.label_names,
                            source=segmenter.source, extra=segmenter.extra, tta=segmenter.tta,
                            tissue_ids=segmenter.tissue_ids)
