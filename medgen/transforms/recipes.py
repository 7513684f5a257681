"""Per-modality preprocessing recipes (MONAI ``Compose`` of medgen transforms) and their inverse.

A recipe turns a source volume (any orientation, any spacing, HU or MR intensities) into the
network's view of it::

    Reorientd (RAS) -> ResampleToSpacingd -> BodyMaskd -> CropForegroundd
        -> CT: CTWindowd (HU window -> [-1, 1])
        -> MR: [N4BiasCorrectiond] -> MRNormalized (body percentiles -> [-1, 1])

and returns a JSON-serialisable *record* of every step's parameters (source grid, target grid,
crop box, intensity mapping). :func:`invert` maps any volume on the preprocessed grid (an
image, a synthetic CT, a predicted label map) back onto the exact source grid (shape and affine)
with one world-coordinate resampling, and :func:`invert_intensity` restores HU (CT, exact inside
the window) or the MR percentile range.

Configs live in ``configs/preprocess/{ct,mr}.yaml`` (see the comments there for the defaults).

Examples:
    >>> import numpy as np
    >>> from medgen.io.volume import Volume
    >>> hu = np.full((20, 20, 10), -1000.0, np.float32); hu[5:15, 5:15, 2:8] = 40.0
    >>> ct = Volume(hu, np.diag([-2.0, -2.0, 3.0, 1.0]))          # stored LPS
    >>> cfg = PreprocessConfig(modality="ct", spacing=None)
    >>> result = preprocess(ct, cfg)
    >>> result.image.orientation, round(float(result.image.array.max()), 4)
    ('RAS', 0.04)
    >>> back = invert(result.image, result.record, restore_intensity=True)
    >>> back.same_grid(ct), float(np.abs(back.array - hu).max()) < 1e-3
    (True, True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from medgen.config import StrictModel, config_hash, load_config
from medgen.errors import ConfigError, InputError, MedgenError
from medgen.io.geometry import resample_to_grid
from medgen.io.volume import Volume
from medgen.transforms._base import grid_of
from medgen.transforms.checks import check_modality, check_not_constant
from medgen.transforms.intensity import check_knots, unit_to_hu, unit_to_range
from medgen.transforms.reorient import Reorientd, check_axcodes
from medgen.transforms.body_mask import BodyMaskd
from medgen.transforms.crop import CropForegroundd
from medgen.transforms.ct_window import CTWindowd
from medgen.transforms.mr_normalize import MRNormalized
from medgen.transforms.n4 import N4BiasCorrectiond
from medgen.transforms.resample import ResampleToSpacingd

log = logging.getLogger(__name__)

RECORD_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Config schema
# ----------------------------------------------------------------------------------------------

class CropConfig(StrictModel):
    """Crop to the body mask's bounding box plus a margin."""

    enabled: bool = True
    margin_mm: float = Field(10.0, ge=0)


class MaskConfig(StrictModel):
    """Body (foreground) mask; see :mod:`medgen.transforms.body_mask`."""

    ct_threshold_hu: float = -500.0
    mr_smoothing_mm: float = Field(2.0, ge=0)
    mr_otsu_scale: float = Field(0.75, gt=0)
    min_component_fraction: float = Field(0.01, ge=0, le=1)
    fill_holes: bool = True


class CTConfig(StrictModel):
    """CT intensity mapping: HU ``window`` (lo, hi) -> [-1, 1] linearly, or through more HU knots
    (strictly increasing, mapped onto evenly spaced points of [-1, 1]; see
    :func:`medgen.transforms.intensity.hu_to_unit`)."""

    window: tuple[float, ...] = (-1000.0, 1000.0)

    @field_validator("window")
    @classmethod
    def _ordered(cls, value):
        return check_knots(value)


class MRConfig(StrictModel):
    """MR intensity mapping: optional N4, then percentiles (inside the body mask) -> [-1, 1]."""

    n4: bool = False
    n4_shrink_factor: int = Field(4, ge=1)
    n4_iterations: list[int] = Field(default_factory=lambda: [50, 50, 30])
    lower_percentile: float = Field(0.5, ge=0, le=100)
    upper_percentile: float = Field(99.5, ge=0, le=100)
    percentiles_in_mask: bool = True

    @model_validator(mode="after")
    def _ordered(self):
        if not self.upper_percentile > self.lower_percentile:
            raise ValueError("upper_percentile must be greater than lower_percentile")
        return self


class PreprocessConfig(StrictModel):
    """Everything a preprocessing recipe does; shipped as ``preprocess/ct`` and ``preprocess/mr``."""

    modality: Literal["ct", "mr"]
    orientation: str = "RAS"
    spacing: tuple[float, float, float] | None = (2.0, 2.0, 3.0)
    antialias: bool = True
    crop: CropConfig = Field(default_factory=CropConfig)
    mask: MaskConfig = Field(default_factory=MaskConfig)
    ct: CTConfig = Field(default_factory=CTConfig)
    mr: MRConfig = Field(default_factory=MRConfig)
    check_intensities: bool = True
    output_dtype: Literal["float32", "float16"] = "float32"
    write_body_mask: bool = True

    @field_validator("orientation")
    @classmethod
    def _axcodes(cls, value):
        return check_axcodes(value)

    @field_validator("spacing")
    @classmethod
    def _positive(cls, value):
        if value is not None and min(value) <= 0:
            raise ValueError("spacing values must be positive (mm)")
        return value


def load_preprocess_config(ref: str | Path | None = None, modality: str | None = None,
                           overrides: list[str] | tuple[str, ...] = ()) -> PreprocessConfig:
    """Load a preprocessing config (path or shipped name), apply ``--set`` overrides, validate.

    Args:
        ref: YAML path or shipped name; None means ``preprocess/<modality>`` (``ct`` if neither).
        modality: ``"ct"``/``"mr"``; must agree with the config's own ``modality``.
        overrides: ``key.sub=value`` strings.

    Raises:
        ConfigError: unknown key, wrong type, or a config whose modality differs from ``modality``.
    """
    if modality is not None and modality not in ("ct", "mr"):
        raise ConfigError(f"unknown modality '{modality}'", path="--modality", fix="use ct or mr")
    config = load_config(ref, PreprocessConfig, default=f"preprocess/{modality or 'ct'}", overrides=list(overrides))
    if modality is not None and config.modality != modality:
        raise ConfigError(f"is a config for modality '{config.modality}', but modality '{modality}' was requested",
                          path=ref, fix=f"use -c preprocess/{modality}, or --modality {config.modality}")
    return config


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------

@dataclass
class PreprocessResult:
    """What :func:`preprocess` returns.

    Attributes:
        image: RAS, target spacing, cropped, intensities in [-1, 1].
        label: the label map on the same grid (nearest neighbour), if one was given.
        record: JSON-serialisable parameters of every step (save it beside the output).
        body_mask: uint8 body mask on the same grid.
    """

    image: Volume
    label: Volume | None
    record: dict
    body_mask: Volume


def build_recipe(config: PreprocessConfig):
    """The MONAI ``Compose`` for ``config`` (dictionary transforms over Volumes)."""
    from monai.transforms import Compose


    m = config.mask
    steps = [
        Reorientd(axcodes=config.orientation),
        ResampleToSpacingd(spacing=config.spacing, antialias=config.antialias),
        BodyMaskd(modality=config.modality, ct_threshold_hu=m.ct_threshold_hu, mr_smoothing_mm=m.mr_smoothing_mm,
                  mr_otsu_scale=m.mr_otsu_scale, min_component_fraction=m.min_component_fraction,
                  fill_holes=m.fill_holes),
    ]
    if config.crop.enabled:
        steps.append(CropForegroundd(margin_mm=config.crop.margin_mm))
    if config.modality == "ct":
        steps.append(CTWindowd(window=config.ct.window))
    else:
        if config.mr.n4:
            steps.append(N4BiasCorrectiond(shrink_factor=config.mr.n4_shrink_factor, iterations=config.mr.n4_iterations))
        steps.append(MRNormalized(lower=config.mr.lower_percentile, upper=config.mr.upper_percentile,
                                  use_mask=config.mr.percentiles_in_mask))
    return Compose(steps, log_stats=False)


def _unwrap(exc: BaseException) -> BaseException:
    """MONAI wraps transform errors in RuntimeError('applying transform ...'); find ours."""
    seen = exc
    while seen is not None:
        if isinstance(seen, MedgenError):
            return seen
        seen = seen.__cause__
    return exc


def preprocess(volume: Volume, config: PreprocessConfig, label: Volume | None = None) -> PreprocessResult:
    """Run the modality's recipe on ``volume`` (and ``label`` on the same grid).

    Raises:
        InputError: constant volume, intensities implausible for the modality (e.g. an MR
            passed as CT), a label map on another grid, or no body found.
    """
    check_not_constant(volume)
    if config.check_intensities:
        check_modality(volume, config.modality)
    if label is not None and not volume.same_grid(label):
        raise InputError(f"label grid (shape {label.shape}, spacing {_fmt(label.spacing)}, {label.orientation}) does "
                         f"not match the image grid (shape {volume.shape}, spacing {_fmt(volume.spacing)}, "
                         f"{volume.orientation}) of {volume.name}", path=label.name,
                         fix="pass the label map that was created on this image's grid (or resample it first)")
    data = {"image": volume, "record": {"steps": []}}
    if label is not None:
        data["label"] = label
    try:
        out = build_recipe(config)(data)
    except RuntimeError as exc:
        raise _unwrap(exc) from None
    image = out["image"]
    image = image.with_array(image.array.astype(config.output_dtype, copy=False))
    out_label = out.get("label")
    record = {
        "medgen_record": RECORD_VERSION,
        "modality": config.modality,
        "config": config.model_dump(mode="json"),
        "config_hash": config_hash(config),
        "source": {"path": volume.source, "series_uid": volume.series_uid, **grid_of(volume)},
        "steps": out["record"]["steps"],
        "output": grid_of(image),
        "intensity": _intensity_record(config, out["record"]["steps"]),
    }
    if out_label is not None:
        record["label"] = {"path": label.source, "dtype": str(out_label.array.dtype)}
    return PreprocessResult(image=image, label=out_label, record=record, body_mask=out["mask"])


def _fmt(values) -> str:
    return "x".join(f"{v:g}" for v in values)


def _intensity_record(config: PreprocessConfig, steps: list[dict]) -> dict:
    if config.modality == "ct":
        return {"kind": "ct_window", "window": list(config.ct.window), "unit_range": [-1.0, 1.0]}
    norm = next(s for s in steps if s["name"] == "mr_normalize")
    return {"kind": "mr_percentile", "lower_percentile": norm["lower_percentile"],
            "upper_percentile": norm["upper_percentile"], "p_lo": norm["p_lo"], "p_hi": norm["p_hi"],
            "n4": any(s["name"] == "n4" for s in steps), "unit_range": [-1.0, 1.0]}


# ----------------------------------------------------------------------------------------------
# Inverse
# ----------------------------------------------------------------------------------------------

def source_grid(record: dict) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``(affine, shape)`` of the source volume a record was made from."""
    src = record["source"]
    return np.asarray(src["affine"], np.float64), tuple(int(s) for s in src["shape"])


def output_grid(record: dict) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``(affine, shape)`` of the preprocessed volume."""
    out = record["output"]
    return np.asarray(out["affine"], np.float64), tuple(int(s) for s in out["shape"])


def invert_intensity(volume, record: dict, *, clip: bool = False):
    """Undo the intensity mapping: [-1, 1] -> HU (CT, exact inside the window) or MR range.

    Accepts a :class:`Volume` (returns a Volume) or an array/tensor (returns the same type).
    For MR the result is in the (bias-corrected, if N4 ran) source intensity scale; values that
    were clipped at the percentiles stay clipped.
    """
    intensity = record["intensity"]
    array = volume.array if isinstance(volume, Volume) else volume
    if intensity["kind"] == "ct_window":
        restored = unit_to_hu(array, tuple(intensity["window"]), clip=clip)
    else:
        restored = unit_to_range(array, intensity["p_lo"], intensity["p_hi"], clip=clip)
    if isinstance(volume, Volume):
        return volume.with_array(np.asarray(restored, np.float32))
    return restored


def invert(volume: Volume, record: dict, *, order: int = 1, cval: float | None = None,
           restore_intensity: bool = False) -> Volume:
    """Map a volume on (or anywhere around) the preprocessed grid back onto the source grid.

    One resampling through world coordinates, so reorientation, resampling and cropping are
    undone together; the result has exactly the source shape and affine. When the two grids
    differ only by a permutation/flip and an integer shift (no resampling configured), voxels
    are copied exactly instead of interpolated.

    Args:
        volume: e.g. ``PreprocessResult.image``, a synthetic CT or a predicted label map.
        record: the record :func:`preprocess` returned (or its JSON sidecar, loaded).
        order: 1 (linear) for images, 0 (nearest neighbour) for label maps and masks.
        cval: value outside the preprocessed field of view (default 0 for labels, else the
            volume's minimum, i.e. air/background).
        restore_intensity: also undo the intensity mapping (:func:`invert_intensity`), giving HU
            for CT. Only for images (``order=1``).

    Returns:
        A :class:`Volume` on the source grid (source path and series UID from the record).
    """
    if restore_intensity:
        if order == 0:
            raise ValueError("restore_intensity is for images; label maps have no intensity mapping")
        volume = invert_intensity(volume, record)
    affine, shape = source_grid(record)
    if cval is None:
        cval = 0.0 if order == 0 else float(volume.array.min())
    exact = _index_map(volume, affine, shape, cval)
    out = exact if exact is not None else resample_to_grid(volume, affine, shape, order=order, cval=cval)
    src = record["source"]
    return Volume(out.array, affine.copy(), src.get("path"), src.get("series_uid"), dict(volume.meta))


def _index_map(volume: Volume, affine: np.ndarray, shape: tuple[int, int, int], cval: float) -> Volume | None:
    """Exact copy when target voxels map onto source voxels by a signed permutation + integer shift."""
    matrix = np.linalg.inv(volume.affine) @ affine  # target index -> volume index
    rot, offset = matrix[:3, :3], matrix[:3, 3]
    if not (np.allclose(np.abs(rot).sum(axis=0), 1, atol=1e-6) and np.allclose(rot, np.round(rot), atol=1e-6)
            and np.allclose(offset, np.round(offset), atol=1e-4)):
        return None
    rot, offset = np.round(rot).astype(int), np.round(offset).astype(int)
    perm = [int(np.argmax(np.abs(rot[:, a]))) for a in range(3)]  # target axis a <- volume axis perm[a]
    if sorted(perm) != [0, 1, 2]:
        return None
    source = np.transpose(volume.array, perm)
    index, valid = [], []
    for a in range(3):
        idx = rot[perm[a], a] * np.arange(shape[a]) + offset[perm[a]]
        ok = (idx >= 0) & (idx < source.shape[a])
        index.append(np.clip(idx, 0, source.shape[a] - 1))
        valid.append(ok)
    out = source[np.ix_(*index)].copy()
    inside = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
    out[~inside] = cval
    return Volume(np.ascontiguousarray(out), affine.copy(), volume.source, volume.series_uid, dict(volume.meta))
