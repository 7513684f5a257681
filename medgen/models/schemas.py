"""Typed schemas for model descriptions: ``medgen.json`` of a bundle and a TorchScript sidecar.

A model description is data like a config, so it is validated the same way (pydantic, unknown
keys and NaN/Inf refused, one ``PATH: what is wrong. Fix: ...`` line): a negative or zero voxel
spacing, a zero-width HU window, a sliding-window overlap of 1, a network argument the network
does not take, or a missing key would otherwise give garbage masks or a raw traceback later.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, ValidationError, field_validator, model_validator

from medgen.config import Overlap, PositiveFloat, PositiveInt, StrictModel, validate
from medgen.errors import ConfigError, ModelError

Spacing = tuple[PositiveFloat, PositiveFloat, PositiveFloat]
Patch = tuple[PositiveInt, PositiveInt, PositiveInt]


def _check_range(lo: float, hi: float, what: str) -> None:
    if not hi > lo:
        raise ValueError(f"{what} [{lo:g}, {hi:g}] is empty or reversed: the upper value must be above the lower")


def _axcodes(value: str) -> str:
    from medgen.transforms.reorient import check_axcodes
    return check_axcodes(value)


class InputSection(StrictModel):
    """How a segmenter's input is prepared (``extra.input`` of a segmenter's ``medgen.json``)."""

    spacing: Spacing | None = None
    a_min: float = -1000.0
    a_max: float = 1000.0
    b_min: float = -1.0
    b_max: float = 1.0
    clip: bool = True
    patch_size: Patch = (96, 96, 96)
    orientation: str = "RAS"
    overlap: Overlap = 0.25
    intensity: Literal["window", "percentile"] = "window"
    percentiles: tuple[float, float] = (0.5, 99.5)

    _orientation = field_validator("orientation")(classmethod(lambda cls, v: _axcodes(v)))

    @model_validator(mode="after")
    def _check(self):
        _check_range(self.a_min, self.a_max, "HU window (a_min, a_max)")
        if self.b_min == self.b_max:
            raise ValueError("output range (b_min, b_max) has zero width")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles {list(self.percentiles)} must satisfy 0 <= lower < upper <= 100")
        return self


class NetworkSection(StrictModel):
    """``network`` of ``medgen.json``: a registered network name and its constructor arguments."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_arguments(self):
        accepted = network_arguments(self.name)
        if accepted is not None:
            unknown = sorted(set(self.kwargs) - accepted)
            if unknown:
                raise ValueError(f"network '{self.name}' takes no argument(s) {unknown}; it takes {sorted(accepted)}")
        return self


class MedgenJson(StrictModel):
    """A bundle's ``medgen.json`` (written by :func:`medgen.models.bundle.save_bundle`)."""

    kind: Literal["translator", "segmenter", "generator"]
    network: NetworkSection
    preprocess: dict[str, Any] = Field(default_factory=dict)
    label_names: dict[int, str] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _by_kind(self):
        """Values the kind's loader uses (their presence is checked by the loader, naming the bundle)."""
        if self.kind == "segmenter" and "input" in self.extra:
            try:
                InputSection.model_validate(self.extra["input"])
            except ValidationError as exc:  # say where inside medgen.json
                err = exc.errors()[0]
                where = ".".join(["extra", "input", *(str(p) for p in err["loc"])])
                raise ValueError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None
        if self.kind == "translator" and "ct_window" in self.extra:
            window = self.extra["ct_window"]
            if not (isinstance(window, (list, tuple)) and len(window) >= 2
                    and all(isinstance(w, (int, float)) and math.isfinite(w) for w in window)):
                raise ValueError(f"extra.ct_window must be a list of HU values, got {window!r}")
            _check_range(float(window[0]), float(window[-1]), "extra.ct_window")
        if self.kind == "translator":
            inference = self.extra.get("inference") or {}
            if "overlap" in inference and not 0 <= float(inference["overlap"]) < 1:
                raise ValueError(f"extra.inference.overlap must be in [0, 1), got {inference['overlap']}")
        return self


class SidecarScaling(StrictModel):
    a_min: float
    a_max: float
    b_min: float = -1.0
    b_max: float = 1.0
    clip: bool = True

    @model_validator(mode="after")
    def _check(self):
        _check_range(self.a_min, self.a_max, "scaling (a_min, a_max)")
        if self.b_min == self.b_max:
            raise ValueError("scaling (b_min, b_max) has zero width")
        return self


class Sidecar(StrictModel):
    """The YAML/JSON sidecar of a TorchScript segmenter (``model.ts.yaml``)."""

    label_names: dict[int, str] = Field(min_length=1)
    spacing: Spacing | None = None
    hu_window: tuple[float, float] | None = None
    scaling: SidecarScaling | None = None
    patch_size: PositiveInt | Patch = (96, 96, 96)
    orientation: str = "RAS"
    overlap: Overlap = 0.25
    extra: dict[str, Any] = Field(default_factory=dict)

    _orientation = field_validator("orientation")(classmethod(lambda cls, v: _axcodes(v)))

    @model_validator(mode="after")
    def _check(self):
        if self.hu_window is not None:
            _check_range(*self.hu_window, "hu_window")
        if self.hu_window is not None and self.scaling is not None:
            raise ValueError("give hu_window or scaling, not both")
        return self


def network_arguments(name: str) -> set[str] | None:
    """The constructor argument names of a registered network (None: it takes ``**kwargs`` or is unknown)."""
    from medgen.networks.registry import network_class
    try:
        cls = network_class(name)
    except ModelError:
        return None
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL}


def validate_description(data: Mapping, schema: type[StrictModel], path: str | Path, what: str):
    """Validate a model description; a problem becomes one :class:`ModelError` line naming ``path``."""
    try:
        return validate(dict(data), schema, str(path))
    except ConfigError as exc:
        message = exc.message.replace("invalid config", f"invalid {what}", 1)
        raise ModelError(message, path=path, fix=f"correct the {what} (or re-export the model)") from None
