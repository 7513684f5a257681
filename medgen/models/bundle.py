"""medgen's model bundles: MONAI bundle layout plus medgen's own description.

Layout written by every trainer (``RUN_DIR/bundle/``)::

    configs/metadata.json    MONAI bundle metadata (version, network_data_format, label names)
    configs/inference.json   a MONAI bundle config MONAI's own runner executes (segmenter and
                             translator: ``python -m monai.bundle run --config_file ... --input_image
                             CT.nii.gz --output_dir OUT``, see :func:`monai_inference_config`);
                             medgen itself never evaluates it
    models/model.pt          the network's state dict (loaded with weights_only=True)
    medgen.json              what medgen needs to rebuild and apply the model: kind, network name
                             and arguments, preprocessing recipe, label names, extra settings

:func:`resolve_model` accepts a run dir, a bundle dir or an MLflow URI (``models:/name/1``,
``runs:/<id>/bundle``) so every command takes the same ``-m MODEL`` forms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from medgen import __version__
from medgen.errors import ModelError
from medgen.io.atomic import write_text_atomic
from medgen.networks.registry import NETWORKS, build_network
from medgen.models.input_spec import InputSpec
from medgen.models.schemas import MedgenJson, validate_description
from medgen.tracking import download_model

MEDGEN_JSON = "medgen.json"


@dataclass
class BundleSpec:
    """Everything medgen records about an exported model.

    Attributes:
        kind: ``translator``, ``segmenter`` or ``generator``.
        network: ``{"name": registered network name, "kwargs": constructor arguments}``.
        preprocess: the preprocessing recipe the model expects (a config dict).
        label_names: ``{id: name}`` for segmenters/generators.
        extra: anything else the kind needs (e.g. 2.5D context, HU scaling, patch size).
        metadata: MONAI ``metadata.json`` fields (network_data_format, description...).
    """

    kind: str
    network: dict
    preprocess: dict = field(default_factory=dict)
    label_names: dict[int, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    path: Path | None = None

    def build(self) -> torch.nn.Module:
        """The network with its weights (rebuilt from the allow-list; weights_only loading)."""
        if self.path is None:
            raise ModelError("bundle has no folder to load weights from")
        net = build_network(self.network["name"], dict(self.network.get("kwargs", {})), source=str(self.path))
        weights = self.path / "models" / "model.pt"
        if not weights.exists():
            raise ModelError("has no models/model.pt", path=self.path, fix="re-export the model with medgen")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"weights cannot be loaded safely ({type(exc).__name__}: {str(exc)[:160]})",
                             path=weights, fix="re-export the model with medgen") from exc
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"weights do not match the described network ({str(exc)[:200]})", path=weights,
                             fix="the bundle is inconsistent; re-export it") from exc
        return net.eval()


def save_bundle(folder: str | Path, spec: BundleSpec, network: torch.nn.Module) -> Path:
    """Write ``spec`` and ``network``'s weights as a bundle folder (each file atomically)."""
    folder = Path(folder)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    tmp = folder / "models" / ".model.pt.tmp"
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, tmp)
    tmp.replace(folder / "models" / "model.pt")
    metadata = {
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by medgen"},
        "monai_version": _monai_version(),
        "pytorch_version": torch.__version__.split("+")[0],
        "medgen_version": __version__,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "name": f"medgen {spec.kind}",
        **spec.metadata,
    }
    if spec.label_names:
        metadata.setdefault("label_names", {str(k): v for k, v in spec.label_names.items()})
    write_text_atomic(folder / "configs" / "metadata.json", json.dumps(metadata, indent=2))
    inference = monai_inference_config(spec)
    write_text_atomic(folder / "configs" / "inference.json", json.dumps(inference, indent=2))
    desc = {"kind": spec.kind, "network": spec.network, "preprocess": spec.preprocess,
            "label_names": {str(k): v for k, v in spec.label_names.items()}, "extra": spec.extra}
    write_text_atomic(folder / MEDGEN_JSON, json.dumps(desc, indent=2))
    return folder


def network_target(name: str) -> str:
    """The importable ``module.Class`` of a registered network name (for a MONAI ``_target_``)."""
    return NETWORKS.get(name, name).replace(":", ".")


def monai_inference_config(spec: BundleSpec) -> dict:
    """``configs/inference.json`` that ``monai.bundle`` runs to apply the model to ``input_image``.

    The network's ``_target_`` is importable (MONAI's or medgen's class); weights load from
    ``models/model.pt``. Segmenter: ``LoadImaged`` -> medgen's preprocessing
    (:class:`~medgen.models.bundle_transforms.PrepareSegmenterInputd`) -> MONAI
    ``SlidingWindowInferer`` (Gaussian blending of softmax scores, like ``medgen segment``) ->
    scores interpolated onto the input grid and arg-max'd
    (:class:`~medgen.models.bundle_transforms.ScoresOnSourceGridd`) -> ``SaveImaged`` (``<name>_seg.nii.gz``); plain
    config expressions (no pytorch-ignite engine needed). Translator: ``LoadImaged`` ->
    :class:`~medgen.models.bundle_transforms.Translated` -> ``SaveImaged`` (``<name>_sct.nii.gz``).
    Other kinds get the network description only.
    """
    net = {"_target_": network_target(spec.network["name"]), **spec.network.get("kwargs", {})}
    base = {
        "imports": ["$import numpy", "$import torch", "$import medgen.models.bundle_transforms"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "input_image": "",
        "output_dir": "$@bundle_root + '/eval'",
        "network_def": net,
        "load_weights": "$@network_def.load_state_dict(torch.load(@bundle_root + '/models/model.pt', "
                        "map_location='cpu', weights_only=True))",
        "loader": {"_target_": "LoadImaged", "keys": "image", "image_only": True},
    }
    if spec.kind == "segmenter" and "input" in spec.extra:
        inp = InputSpec.from_dict(spec.extra["input"])
        pad = float(inp.scale(np.array([-1024.0]))[0])
        return {**base,
                "network": "$torch.nn.Sequential(@network_def, torch.nn.Softmax(dim=1)).to(@device).eval()",
                "preprocessing": {"_target_": "Compose", "transforms": [
                    "@loader",
                    {"_target_": "medgen.models.bundle_transforms.PrepareSegmenterInputd", "keys": "image",
                     "input_spec": inp.to_dict()}]},
                "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(inp.patch_size), "sw_batch_size": 2,
                            "overlap": inp.overlap, "mode": "gaussian", "padding_mode": "constant", "cval": pad},
                "postprocessing": {"_target_": "Compose", "transforms": [
                    {"_target_": "medgen.models.bundle_transforms.ScoresOnSourceGridd", "keys": "pred"},
                    {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                     "output_dtype": "$numpy.uint8" if max(spec.label_names, default=0) < 256 else "$numpy.uint16",
                     "resample": False, "separate_folder": False, "print_log": False}]},
                "prepared": "$@preprocessing({'image': @input_image})",
                # no_grad around the inference only: a global set_grad_enabled(False) would leak into
                # the caller's process when the bundle is run in-process with ConfigParser
                "scores": "$torch.no_grad()(@inferer)(@prepared['image'][None].to(@device), @network)[0].cpu()",
                "initialize": ["$@load_weights"],
                "run": ["$@postprocessing({**@prepared, 'pred': @scores})"]}
    if spec.kind == "translator":
        return {**base,
                "network": "$@network_def.to(@device).eval()",
                "translate": {"_target_": "medgen.models.bundle_transforms.Translated", "keys": "image",
                              "network": "@network", "bundle_root": "@bundle_root", "device": "@device"},
                "saver": {"_target_": "SaveImaged", "keys": "image", "output_dir": "@output_dir",
                          "output_postfix": "sct", "output_dtype": "$numpy.int16", "resample": False,
                          "separate_folder": False, "print_log": False},
                "initialize": ["$@load_weights"],
                "run": ["$@saver(@translate(@loader({'image': @input_image})))"]}
    return {"network_def": net, "_comment": "network description; apply with medgen"}


def _monai_version() -> str:
    import monai
    return monai.__version__


def load_bundle(folder: str | Path, kind: str | None = None) -> BundleSpec:
    """Read a medgen bundle's description (weights are loaded by :meth:`BundleSpec.build`)."""
    folder = Path(folder)
    desc_path = folder / MEDGEN_JSON
    if not desc_path.exists():
        raise ModelError("is not a medgen bundle (no medgen.json)", path=folder,
                         fix="pass a run folder or bundle exported by medgen train")
    try:
        desc = json.loads(desc_path.read_text())
        metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"bundle description cannot be read ({exc})", path=folder, fix="re-export the model") from exc
    if not isinstance(desc, dict):
        raise ModelError("is not a JSON object", path=desc_path, fix="re-export the model")
    if kind is not None and desc.get("kind") != kind:
        raise ModelError(f"is a {desc.get('kind')} bundle, but a {kind} is needed here", path=folder,
                         fix=f"pass a {kind} model")
    validate_description(desc, MedgenJson, desc_path, "medgen.json")  # typed, like a config
    return BundleSpec(kind=desc["kind"], network=desc["network"], preprocess=desc.get("preprocess", {}),
                      label_names={int(k): v for k, v in desc.get("label_names", {}).items()},
                      extra=desc.get("extra", {}), metadata=metadata, path=folder)


def resolve_model(ref: str | Path) -> Path:
    """A local bundle folder for a run dir, bundle dir or MLflow URI.

    Raises:
        ModelError: nothing usable at ``ref``, naming it and the accepted forms.
    """
    text = str(ref)
    if text.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        try:
            path = download_model(text)
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types
            raise ModelError(f"cannot be downloaded from MLflow ({str(exc)[:200]})", path=text,
                             fix="check the URI and MLFLOW_TRACKING_URI") from exc
        return path if (path / MEDGEN_JSON).exists() else path / "bundle"
    path = Path(ref)
    if not path.exists():
        raise ModelError("does not exist", path=path,
                         fix="pass a run folder, a bundle folder or an MLflow URI such as models:/name/1")
    if (path / MEDGEN_JSON).exists():
        return path
    if (path / "bundle" / MEDGEN_JSON).exists():
        return path / "bundle"
    raise ModelError("is not a medgen run or bundle folder (no medgen.json)", path=path,
                     fix="pass RUN_DIR or RUN_DIR/bundle written by medgen train, or an MLflow model URI")
