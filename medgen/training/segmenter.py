"""Training a CT segmenter: config schema, label handling, patch sampling, augmentation, the task.

The segmenter is meant to run on *synthetic* CT produced from MR, which is never a perfect CT:
intensities drift, contrast differs, textures are smoother or noisier. So training applies heavy
intensity augmentation (gamma, contrast, brightness shift, random monotone intensity remapping,
smooth bias field, Gaussian blur, noise) to real CT patches, which makes the model rely on shape
and relative contrast rather than exact HU values.

With ``synth.enabled`` the segmenter is *contrast-agnostic*: most patches are not the CT at all
but renderings of its anatomy with random contrast, resolution, bias and noise
(:mod:`medgen.transforms.render`; classes are the organ labels plus tissue bands cut from the
CT's HU), warped on the fly (:mod:`medgen.transforms.random_warp`), and every image (rendering,
CT or, at inference, MR) is normalised by its own percentiles (``data.intensity: percentile``).
Such a model runs on MR of any contrast directly, or on synthetic CT.

Patches are sampled class-balanced: most patches are centred on a voxel of a randomly chosen
present class (small organs such as the aorta would otherwise almost never be seen), the rest
anywhere. Synthetic cases (from an anatomy generator) may train next to real ones; the share of
patches drawn from the real cases is ``data.real_fraction`` (:class:`CaseSampler`), so a few real
scans are not drowned by many synthetic ones. Every image is prepared exactly as
:meth:`medgen.models.segmenters.NetworkSegmenter.prepare` prepares it at inference (reorient to
RAS, resample to the configured spacing, HU window to [-1, 1]), so training and inference cannot
drift apart.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from medgen.config import Overlap, PositiveFloat, PositiveInt, StrictModel
from medgen.errors import InputError
from medgen.io.geometry import reorient, resample_like
from medgen.io.volume import Volume
from medgen.models.input_spec import InputSpec
from medgen.inference.segment import body_axis, repeat_end_slices
from medgen.models.segmenters import NetworkSegmenter
from medgen.runtime import autocast
from medgen import distributed
from medgen.data.synthesis import warp_and_render
from medgen.transforms.random_warp import WarpRanges, random_grid
from medgen.transforms.render import (DEFAULT_HU_BANDS, RandContrastRender, RenderConfig, add_structures, gaussian_blur,
                                     median_smoothed, render_classes,
                                     tissue_band_names)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

class NetworkConfig(StrictModel):
    name: Literal["unet", "segresnet"] = "unet"
    channels: list[int] = [16, 32, 64, 128]
    strides: list[int] = [2, 2, 2]
    num_res_units: int = 1
    init_filters: int = 16
    dropout: float = 0.0


class DataConfig(StrictModel):
    spacing: list[PositiveFloat] | None = [3.0, 3.0, 3.0]
    hu_window: list[float] = [-300.0, 400.0]
    #: ``hu_window``: CT in HU through the fixed window; ``percentile``: every image's own 0.5 and
    #: 99.5 percentiles onto [-1, 1] (a contrast-agnostic segmenter: MR of any contrast, or CT)
    intensity: Literal["hu_window", "percentile"] = "hu_window"
    patch_size: list[PositiveInt] = [64, 64, 32]
    batch_size: PositiveInt = 2
    foreground_fraction: float = 0.8
    val_cases: int = 0
    #: share of training patches drawn from the real cases (``--images``) when synthetic cases
    #: (``--synthetic-images``) are also given; ``None`` draws every case equally often. Pooling
    #: 2 real cases with 16 synthetic ones shows the real anatomy only 11% of the time; a fixed
    #: share (e.g. 0.5) keeps the real data in the mix whatever the synthetic set's size.
    real_fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    #: share of patches (real and rendered) cut to a thin scan along the body axis: a random run
    #: of slices kept and its end slices repeated over the rest of the patch, which is how
    #: inference extends a scan shorter than one window (:func:`thin_scan`)
    thin_scan_prob: float = Field(default=0.0, ge=0.0, le=1.0)


class AugmentConfig(StrictModel):
    prob: float = 0.4
    gamma: list[float] = [0.6, 1.6]
    contrast: list[float] = [0.7, 1.3]
    shift: float = 0.1
    remap_strength: float = 0.15
    bias_field: float = 0.3
    blur_sigma: list[float] = [0.0, 1.0]
    noise_std: list[float] = [0.0, 0.06]
    scale: list[float] = [0.9, 1.1]
    #: per-label intensity shift (SynthSeg-style domain randomisation): each labelled structure of a
    #: patch moves by its own uniform shift in +-``label_shift`` of the [-1, 1] input range (0 = off),
    #: so the model leans on shape and context, not on exact tissue values (synthetic CT's errors)
    label_shift: float = Field(default=0.3, ge=0.0, le=1.0)


class SynthConfig(StrictModel):
    """Training on renderings of the CT's anatomy (contrast-agnostic segmenter)."""

    enabled: bool = False
    #: share of patches that are the real (percentile-normalised, augmented) CT instead of a rendering
    real_fraction: float = Field(0.1, ge=0.0, le=1.0)
    #: curriculum: over this share of the steps the share of real-CT patches falls linearly from 1
    #: to ``real_fraction``, so the network first learns the anatomy from the CT, then contrast
    #: invariance from the renderings (0 = renderings from the first step)
    warmup: float = Field(0.0, ge=0.0, lt=1.0)
    #: HU edges of the tissue classes cut from each CT for the unlabelled voxels
    hu_bands: list[float] = list(DEFAULT_HU_BANDS)
    #: median filter (voxels) on the CT before it is cut into bands, so CT noise does not speckle a
    #: tissue into two classes (1 = off; :func:`medgen.transforms.render.render_classes`)
    class_median: int = Field(3, ge=1)
    #: structures of the label maps that the network is not trained on (left out by ``--include``:
    #: bowel, lungs, muscles, ...): ``own_class`` draws each with its own random contrast, as each
    #: has its own in MR (SynthSeg's *generation labels*: more classes to render than to segment);
    #: ``hu_bands`` treats them as unlabelled tissue (the CT's HU band)
    other_structures: Literal["own_class", "hu_bands"] = "own_class"
    #: what the network learns to predict: ``labels`` (the organ labels; background is one class)
    #: or ``classes`` (the whole render class map: organ labels, and the CT's HU tissue band wherever
    #: unlabelled, named ``tissue_<band>``). A ``classes`` model knows every voxel's tissue, so its run
    #: also exports a tissue-painting MR -> CT translator (``RUN/translator``,
    #: :mod:`medgen.models.tissue_translator`)
    target: Literal["labels", "classes"] = "labels"
    render: RenderConfig = RenderConfig()
    rotate_deg: float = Field(15.0, ge=0.0, le=180.0)
    scale: list[float] = [0.85, 1.15]
    elastic_vox: float = Field(2.0, ge=0.0)

    @property
    def learns_classes(self) -> bool:
        """The network learns the whole render class map (renderings on, ``target: classes``)."""
        return self.enabled and self.target == "classes"


class TrainConfig(StrictModel):
    steps: PositiveInt = 2000
    lr: PositiveFloat = 2e-3
    weight_decay: float = 1e-5
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    log_every: PositiveInt = 20
    validate_every: PositiveInt = 250
    checkpoint_every: PositiveInt = 250
    init_from: str | None = Field(None, description=(
        "a medgen segmenter (run folder, bundle folder or MLflow URI) whose weights start the training: "
        "fine-tuning, e.g. pre-train on synthetic volumes and fine-tune on the few real ones; "
        "same network settings and label ids required"))


class ExportConfig(StrictModel):
    registered_name: str = "medgen-segmenter"
    overlap: Overlap = 0.25


class SegmenterConfig(StrictModel):
    """``configs/segmenter/*.yaml``: the defaults are those of the shipped ``segmenter/ct_unet``."""

    moved_keys: ClassVar[dict[str, str]] = {"seed": "train.seed"}

    network: NetworkConfig = NetworkConfig()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    synth: SynthConfig = SynthConfig()

    @model_validator(mode="after")
    def _tissue_translator_exportable(self):
        """``synth.target: classes`` exports a tissue-painting translator: refuse what cannot be one, before training."""
        if self.synth.learns_classes:
            if self.network.name != "unet":
                raise ValueError("synth.target classes needs network.name unet (its export as a translator wraps a "
                                 "MONAI UNet)")
            if self.data.intensity != "percentile":
                raise ValueError("synth.target classes needs data.intensity percentile (a translator reads MR of any "
                                 "contrast)")
        return self


def input_spec(config: SegmenterConfig) -> InputSpec:
    """How images are prepared for this segmenter (shared by training and inference)."""
    lo, hi = config.data.hu_window
    return InputSpec(spacing=None if config.data.spacing is None else tuple(config.data.spacing),
                     a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True,
                     patch_size=tuple(config.data.patch_size), overlap=config.export.overlap,
                     intensity="percentile" if config.data.intensity == "percentile" else "window")


def load_initial_weights(net: torch.nn.Module, ref: str) -> None:
    """Copy the weights of the medgen segmenter ``ref`` into ``net`` (fine-tuning start).

    The bundle is rebuilt from its allow-listed description and its weights are loaded with
    ``weights_only=True`` (:mod:`medgen.models.bundle`). A checkpoint left by ``--resume`` still
    wins: the training loop restores it after this.
    """
    from medgen.errors import ModelError
    from medgen.models.bundle import load_bundle, resolve_model
    spec = load_bundle(resolve_model(ref), kind="segmenter")
    source = spec.build().state_dict()
    target = net.state_dict()
    mismatched = sorted(k for k in target if k not in source or source[k].shape != target[k].shape)
    if mismatched or set(source) - set(target):
        raise ModelError(f"cannot start from it: its network differs ({len(mismatched)} tensors differ in name or "
                         f"shape, e.g. {mismatched[:2]})", path=spec.path,
                         fix="use the same network settings and label ids as that model (its config.yaml), or drop "
                             "train.init_from")
    net.load_state_dict(source)
    log.info("initial weights from %s", spec.path)


def build_network(config: SegmenterConfig, n_classes: int) -> tuple[torch.nn.Module, dict]:
    """The MONAI network and its bundle description (registered name + kwargs)."""
    from medgen.networks.registry import build_network as build
    n = config.network
    if n.name == "unet":
        kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": n_classes, "channels": list(n.channels),
                  "strides": list(n.strides), "num_res_units": n.num_res_units, "dropout": n.dropout}
        name = "monai.UNet"
    else:
        kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": n_classes, "init_filters": n.init_filters,
                  "dropout_prob": n.dropout or None}
        name = "monai.SegResNet"
    return build(name, kwargs), {"name": name, "kwargs": kwargs}


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelPlan:
    """How source label ids become training classes.

    Attributes:
        source_names: id -> name in the label files.
        names: class id -> name of the trained model (consecutive, 0 = background).
        lut: source id -> class id lookup table (ids not kept map to 0).
    """

    source_names: dict[int, str]
    names: dict[int, str]
    lut: np.ndarray

    def apply(self, labels: np.ndarray, path: str) -> np.ndarray:
        ids = np.unique(labels)
        unknown = [int(i) for i in ids if int(i) not in self.source_names and int(i) != 0]
        if unknown or (ids.size and (ids.min() < 0 or ids.max() >= len(self.lut))):
            raise InputError(f"has label ids {unknown[:10]} that the label-name file does not name", path=path,
                             fix="pass --label-names with a name for every id in the label maps")
        return self.lut[labels.astype(np.int64)].astype(np.uint8)

    def untrained(self, labels: np.ndarray) -> np.ndarray:
        """The named structures of ``labels`` that the plan leaves out, numbered ``1..K`` (0 elsewhere).

        The numbering follows the source ids, so it is the same in every case of a label-name file.
        Call after :meth:`apply` (which checks the ids).

        Examples:
            >>> plan = plan_labels({0: "background", 1: "liver", 2: "colon", 3: "lung"}, ["liver"])
            >>> plan.untrained(np.array([0, 1, 2, 3])).tolist()
            [0, 0, 1, 2]
        """
        left_out = [k for k in sorted(self.source_names) if k != 0 and self.lut[k] == 0]
        table = np.zeros(len(self.lut), np.uint16)
        table[left_out] = np.arange(1, len(left_out) + 1)
        return table[labels.astype(np.int64)]


def plan_labels(source_names: dict[int, str], include: list[str] | None) -> LabelPlan:
    """Keep every named label, or only ``include`` (names, ``glob`` patterns, ``new=pattern|pattern``).

    Examples:
        >>> plan = plan_labels({0: "background", 1: "liver", 2: "L1", 3: "L2"}, ["liver", "spine=L*"])
        >>> plan.names, plan.lut.tolist()
        ({0: 'background', 1: 'liver', 2: 'spine'}, [0, 1, 2, 2])
    """
    top = max(source_names) if source_names else 0
    lut = np.zeros(top + 1, np.uint8)
    names = {0: "background"}
    by_name = {v: k for k, v in source_names.items() if k != 0}
    if not include:
        for new, (sid, name) in enumerate(sorted((k, v) for k, v in source_names.items() if k != 0), start=1):
            lut[sid] = new
            names[new] = name
        if len(names) > 255:
            raise InputError(f"{len(names)} classes are too many for one segmenter", fix="use --include")
        return LabelPlan(dict(source_names), names, lut)
    for item in include:
        new_name, _, patterns = item.partition("=")
        patterns = patterns or new_name
        matched = [by_name[n] for n in by_name if any(fnmatch.fnmatchcase(n, p.strip()) for p in patterns.split("|"))]
        if not matched:
            raise InputError(f"--include '{item}' matches no label name", path="--include",
                             fix="available names: " + ", ".join(sorted(by_name)[:60]))
        cid = len(names)
        names[cid] = new_name.strip()
        for sid in matched:
            lut[sid] = cid
    return LabelPlan(dict(source_names), names, lut)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

@dataclass
class PreparedCase:
    case_id: str
    image: np.ndarray  # network input range, RAS at the model spacing
    label: np.ndarray  # training target (class ids), same grid
    synthetic: bool = False  # from a generator (--synthetic-images), not a real scan
    classes: np.ndarray | None = None  # rendering classes (labels + HU tissue bands), same grid
    hu_sums: np.ndarray | None = None  # per target class: sum of the CT's HU (class_mean_hu), training only
    hu_counts: np.ndarray | None = None  # per target class: voxel count
    # array axis along the body (superior-inferior): beyond the scan there, patches repeat its end
    # slices (the anatomy goes on), as inference extends a short scan; None: air on every side
    body_axis: int | None = None


def training_label_names(plan: LabelPlan, synth: SynthConfig) -> dict[int, str]:
    """Class id -> name of the trained model: the label plan's, plus ``tissue_<band>`` per HU band
    when the network learns the whole render class map (``synth.target: classes``).

    Examples:
        >>> plan = plan_labels({0: "background", 1: "liver"}, None)
        >>> training_label_names(plan, SynthConfig(enabled=True, target="classes", hu_bands=[-500, 100]))
        {0: 'background', 1: 'liver', 2: 'tissue_hu_below_-500', 3: 'tissue_hu_-500_to_100', 4: 'tissue_hu_above_100'}
    """
    names = dict(plan.names)
    if synth.learns_classes:
        first = len(plan.names)  # render_classes numbers band b as n_label_ids + b
        names.update({first + b: f"tissue_{name}" for b, name in enumerate(tissue_band_names(synth.hu_bands))})
    return names


def class_mean_hu(cases: list[PreparedCase]) -> dict[int, float]:
    """Mean CT value (HU) of every target class over ``cases`` (those prepared with HU statistics).

    The painting values of a tissue-painting translator (:mod:`medgen.models.tissue_translator`):
    each class the segmenter decides becomes its mean training-CT HU.
    """
    measured = [c for c in cases if c.hu_sums is not None]
    if not measured:
        return {}
    size = max(len(c.hu_sums) for c in measured)
    total, count = np.zeros(size), np.zeros(size)
    for c in measured:
        total[:len(c.hu_sums)] += c.hu_sums
        count[:len(c.hu_counts)] += c.hu_counts
    return {k: round(float(total[k] / count[k]), 2) for k in range(size) if count[k] > 0}


def align_label(image: Volume, label: Volume) -> Volume:
    """``label`` on ``image``'s grid: identical, or the same physical grid in another voxel order.

    Raises:
        InputError: the grids differ physically (naming both files).
    """
    if image.same_grid(label):
        return label
    if reorient(image, "RAS").same_grid(reorient(label, "RAS"), atol=1e-2):
        return resample_like(label, image, order=0)
    raise InputError(
        f"label grid (shape {label.shape}, spacing {tuple(round(s, 3) for s in label.spacing)}, "
        f"{label.orientation}) differs from image grid (shape {image.shape}, spacing "
        f"{tuple(round(s, 3) for s in image.spacing)}, {image.orientation}) of {image.name}",
        path=label.name, fix="pass the label map that was made on this image (resample it onto the image first)")


def prepare_case(case_id: str, image: Volume, label: Volume, spec: InputSpec, plan: LabelPlan, *,
                 synthetic: bool = False, synth: SynthConfig | None = None) -> PreparedCase:
    """Align, remap and bring a CT + label pair to the network's grid and intensity range.

    With ``synth`` (training on renderings) the case also carries its rendering classes: the
    training labels, the structures left out of them as classes of their own
    (``synth.other_structures``), and the CT's tissue band (``synth.hu_bands``, cut after a
    ``synth.class_median`` median filter: :func:`medgen.transforms.render.render_classes`) wherever
    it is unlabelled, and the HU sum and count of every target class (for :func:`class_mean_hu`).
    ``synth.target == "classes"`` makes the organ labels and tissue bands the training target.
    """
    label = align_label(image, label)
    remapped = label.with_array(plan.apply(label.array, label.name))
    grid = NetworkSegmenter.prepare_grid(image, spec)
    lab = resample_like(remapped, grid, order=0).array.astype(np.uint8)
    case = PreparedCase(case_id, spec.scale(grid.array), lab, synthetic, body_axis=body_axis(grid.affine))
    if synth is not None:
        hu = median_smoothed(grid.array, synth.class_median)
        banding = {"n_label_ids": len(plan.names), "bands": synth.hu_bands}
        tissue = render_classes(lab, hu, **banding)
        case.classes = tissue
        if synth.other_structures == "own_class":
            others = resample_like(label.with_array(plan.untrained(label.array)), grid, order=0).array
            if others.any():
                case.classes = add_structures(tissue, others, hu=hu, **banding)
        if synth.target == "classes":  # organ labels and tissue bands: a left-out structure is its band
            case.label = tissue.astype(np.uint8)
        flat = case.label.reshape(-1).astype(np.int64)
        case.hu_sums = np.bincount(flat, weights=grid.array.reshape(-1).astype(np.float64))
        case.hu_counts = np.bincount(flat).astype(np.float64)
    return case


def body_quantiles(hu: np.ndarray, threshold: float = -500.0, n: int = 101) -> np.ndarray:
    """HU quantiles inside the body (voxels above ``threshold``): a CT reference histogram."""
    values = hu[hu > threshold]
    if values.size == 0:
        values = hu.ravel()
    return np.quantile(values, np.linspace(0, 1, n)).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# sampling and augmentation (torch RNG only, so checkpoints restore it with weights_only=True)
# ---------------------------------------------------------------------------------------------

def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=gen))


class CaseSampler:
    """Picks the training case of each patch: every case equally often, or real vs synthetic at a set rate.

    With ``real_fraction=None`` (or when the cases are all real, or all synthetic) every case is
    equally likely, exactly as before synthetic sources existed. Otherwise a patch comes from a
    real case with probability ``real_fraction`` and from a synthetic one otherwise, uniformly
    within the chosen source, so a small real set is not drowned by a large synthetic one.
    Draws only from the given torch generator, so it is seeded and checkpointed with the task.

    Examples:
        >>> sampler = CaseSampler([False, True, True, True], real_fraction=0.5)
        >>> sampler.real, sampler.synthetic
        ([0], [1, 2, 3])
    """

    def __init__(self, synthetic: list[bool], real_fraction: float | None):
        self.n = len(synthetic)
        self.real = [i for i, s in enumerate(synthetic) if not s]
        self.synthetic = [i for i, s in enumerate(synthetic) if s]
        self.real_fraction = real_fraction if self.real and self.synthetic else None

    def draw(self, gen: torch.Generator) -> int:
        """Index of the next case."""
        if self.real_fraction is None:
            return int(torch.randint(self.n, (), generator=gen))
        pool = self.real if float(torch.rand((), generator=gen)) < self.real_fraction else self.synthetic
        return pool[int(torch.randint(len(pool), (), generator=gen))]


def patch_start(case: PreparedCase, patch: tuple[int, int, int], gen: torch.Generator,
                foreground_fraction: float) -> np.ndarray:
    """Corner of a random patch, centred on a voxel of a random present class with ``foreground_fraction``."""
    shape = np.array(case.image.shape)
    if float(torch.rand((), generator=gen)) < foreground_fraction:
        classes = getattr(case, "_classes", None)
        if classes is None:
            present = [int(c) for c in np.unique(case.label) if c != 0]
            classes = {c: np.argwhere(case.label == c) for c in present}
            case._classes = classes  # cached voxel lists per class
        if classes:
            keys = sorted(classes)
            c = keys[int(torch.randint(len(keys), (), generator=gen))]
            pts = classes[c]
            centre = pts[int(torch.randint(len(pts), (), generator=gen))]
        else:
            centre = np.array([int(torch.randint(int(s), (), generator=gen)) for s in shape])
    else:
        centre = np.array([int(torch.randint(int(s), (), generator=gen)) for s in shape])
    return centre - np.array(patch) // 2


def crop(array: np.ndarray, start: np.ndarray, patch: tuple[int, int, int], pad_value,
         edge_axis: int | None = None) -> np.ndarray:
    """The ``patch``-sized block of ``array`` at corner ``start``, padded with ``pad_value`` outside;
    along ``edge_axis`` the end slices are repeated instead (a scan's ends along the body cut
    through anatomy, which goes on; inference extends a short scan the same way:
    :func:`medgen.inference.segment.extend_along_body_axis`).

    Examples:
        >>> a = np.arange(6).reshape(1, 2, 3)
        >>> crop(a, np.array([0, -1, 1]), (1, 3, 3), -9, edge_axis=2).tolist()
        [[[-9, -9, -9], [1, 2, 2], [4, 5, 5]]]
    """
    index, inside = [], []
    for axis, (lo, size, n) in enumerate(zip(np.asarray(start, np.int64), patch, array.shape)):
        i = np.arange(lo, lo + size)
        inside.append(np.ones(size, bool) if axis == edge_axis else (i >= 0) & (i < n))
        index.append(np.clip(i, 0, n - 1))
    out = array[np.ix_(*index)]
    if not all(m.all() for m in inside):
        out[~(inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :])] = pad_value
    return out


def sample_patch(case: PreparedCase, patch: tuple[int, int, int], gen: torch.Generator,
                 foreground_fraction: float, pad_value: float = -1.0,
                 label_pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One image/label patch (see :func:`patch_start`); outside the image: ``pad_value`` / ``label_pad``
    (end slices repeated along ``case.body_axis``: :func:`crop`)."""
    start = patch_start(case, patch, gen, foreground_fraction)
    return (crop(case.image.astype(np.float32, copy=False), start, patch, pad_value, case.body_axis),
            crop(case.label, start, patch, label_pad, case.body_axis))


def thin_scan(x: torch.Tensor, y: torch.Tensor, axis: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(1, 1, X, Y, Z)`` image/label patch as a thin scan would reach the network: a random run of
    a quarter to all but one of its slices along spatial ``axis`` kept, the rest of the patch filled
    by repeating that run's end slices (image and labels alike), as
    :func:`medgen.inference.segment.extend_along_body_axis` extends a short scan to one window.

    Examples:
        >>> x = torch.arange(8.0).view(1, 1, 1, 1, 8)
        >>> a, b = thin_scan(x, x.long(), 2, torch.Generator().manual_seed(0))
        >>> a.flatten().tolist(), bool((a.long() == b).all())
        ([4.0, 4.0, 4.0, 4.0, 4.0, 5.0, 6.0, 7.0], True)
    """
    n = x.shape[2 + axis]
    keep = int(torch.randint(max(1, n // 4), n, (), generator=gen))
    start = int(torch.randint(0, n - keep + 1, (), generator=gen))
    index = torch.arange(n).clamp(start, start + keep - 1)
    return x.index_select(2 + axis, index), y.index_select(2 + axis, index)


def augment_intensity(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random intensity/contrast changes of one ``(1, 1, X, Y, Z)`` patch in [-1, 1].

    Each transform fires with probability ``cfg.prob``; all keep the result in [-1, 1].
    """
    def fire() -> bool:
        return float(torch.rand((), generator=gen)) < cfg.prob

    u = (x + 1) / 2  # [0, 1]
    if fire():  # random monotone remap: piecewise-linear curve through jittered control points
        n = 6
        knots = torch.linspace(0, 1, n)
        jitter = (torch.rand(n, generator=gen) - 0.5) * 2 * cfg.remap_strength
        values = torch.clamp(knots + jitter, 0, 1)
        values[0], values[-1] = 0.0, 1.0
        values = torch.cummax(values, 0).values
        idx = torch.clamp((u * (n - 1)).long(), 0, n - 2)
        frac = u * (n - 1) - idx
        u = values[idx] * (1 - frac) + values[idx + 1] * frac
    if fire():
        u = u.clamp(0, 1) ** _uniform(gen, *cfg.gamma)
    if fire():
        mean = u.mean()
        u = (u - mean) * _uniform(gen, *cfg.contrast) + mean
    if fire():
        u = u + _uniform(gen, -cfg.shift, cfg.shift)
    if fire() and cfg.bias_field > 0:  # smooth multiplicative field from a coarse random grid
        coarse = torch.randn((1, 1, 3, 3, 3), generator=gen) * cfg.bias_field / 2
        field = F.interpolate(coarse, size=u.shape[2:], mode="trilinear", align_corners=True)
        u = u * torch.exp(field)
    if fire():
        sigma = _uniform(gen, *cfg.blur_sigma)
        if sigma >= 0.3:  # voxels; below it the blur is invisible
            u = gaussian_blur(u[0, 0], (sigma,) * 3)[None, None]
    if fire():
        u = u + torch.randn(u.shape, generator=gen) * _uniform(gen, *cfg.noise_std)
    return (u.clamp(0, 1) * 2 - 1).to(x.dtype)


def augment_label_intensity(x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig,
                            gen: torch.Generator) -> torch.Tensor:
    """Shift each labelled structure of a ``(1, 1, X, Y, Z)`` patch by its own random offset.

    Background (label 0) is left alone; every other label id gets a shift drawn uniformly in
    ``[-cfg.label_shift, cfg.label_shift]`` (patch units, [-1, 1] range), with probability
    ``cfg.prob``. A synthetic CT's tissue values are off by tissue-dependent amounts (fat too
    bright, vessels too dark); this teaches the segmenter that a structure's exact value varies.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.zeros(1, 1, 2, 2, 1), torch.tensor([0, 1, 1, 2]).view(1, 1, 2, 2, 1)
        >>> out = augment_label_intensity(x, y, AugmentConfig(prob=1.0, label_shift=0.2), g)
        >>> bool(out[0, 0, 0, 0, 0] == 0), bool(out[0, 0, 0, 1, 0] == out[0, 0, 1, 0, 0])
        (True, True)
    """
    if cfg.label_shift <= 0 or float(torch.rand((), generator=gen)) >= cfg.prob:
        return x
    n_labels = int(y.max()) + 1
    shifts = (torch.rand(n_labels, generator=gen) * 2 - 1) * cfg.label_shift
    shifts[0] = 0.0
    return (x + shifts.to(x.dtype)[y.long()]).clamp(-1, 1)


def augment_scale(img: torch.Tensor, lab: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator):
    """Random isotropic zoom about the patch centre (labels nearest), same output size."""
    if cfg.scale[0] == cfg.scale[1] == 1.0 or float(torch.rand((), generator=gen)) >= cfg.prob:
        return img, lab
    s = _uniform(gen, *cfg.scale)
    theta = torch.zeros(1, 3, 4)
    theta[0, :, :3] = torch.eye(3) / s
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    img = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    lab = F.grid_sample(lab.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).long()
    return img, lab


# ---------------------------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------------------------

class SegmenterTask:
    """A :class:`medgen.training.loop.TrainingTask` for 3D patch segmentation with Dice + CE."""

    #: state entries that differ between DDP ranks (saved per rank by the shared loop)
    rank_local_state_keys = ("gen",)

    def __init__(self, config: SegmenterConfig, train_cases: list[PreparedCase], val_cases: list[PreparedCase],
                 label_names: dict[int, str], *, device: torch.device, seed: int):
        from monai.losses import DiceCELoss
        from medgen.runtime import resolve_precision
        self.config = config
        self.cases = train_cases
        self.sampler = CaseSampler([c.synthetic for c in train_cases], config.data.real_fraction)
        self.val_cases = val_cases
        self.label_names = label_names
        self.n_classes = max(label_names) + 1
        self.device = device
        self.dtype = resolve_precision(config.train.precision, device)
        net, self.network_desc = build_network(config, self.n_classes)
        if config.train.init_from:
            load_initial_weights(net, config.train.init_from)
        self.net = distributed.wrap_ddp(net.to(device), device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
        steps = max(1, config.train.steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: (1 - min(s, steps - 1) / steps) ** 0.9)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1e-5,
                               smooth_dr=1e-5)
        self.gen = torch.Generator().manual_seed(seed + 1000 * distributed.rank())
        synth = config.synth
        learns_classes = synth.learns_classes
        # the darkest HU band: render_classes numbers the bands after the label ids
        air_class = self.n_classes - (len(synth.hu_bands) + 1) if learns_classes else self.n_classes
        self.renderer = RandContrastRender.for_tissue_bands(config.data.spacing or (1.0, 1.0, 1.0), synth.render,
                                                            air_class=air_class, bands=synth.hu_bands)
        self.warp = WarpRanges(rotate_deg=synth.rotate_deg, scale=tuple(synth.scale), elastic_vox=synth.elastic_vox)
        self.air_class = air_class
        self.label_pad = air_class if learns_classes else 0  # what lies outside a scan

    @property
    def network(self) -> torch.nn.Module:
        return distributed.unwrap(self.net)

    def rendered_patch(self, case: PreparedCase, patch: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A random rendering of a warped patch of ``case``'s anatomy, and its exactly warped label.

        A block a quarter larger on each side is cropped and warped onto the patch, so rotations
        bring in real anatomy rather than replicated edges; the rendering is scaled by the mean
        range of every class of the whole case, as a whole-volume percentile normalisation would.
        """
        cfg = self.config
        start = patch_start(case, patch, self.gen, cfg.data.foreground_fraction)
        margin = np.array(patch) // 4
        block = tuple(int(p + 2 * m) for p, m in zip(patch, margin))
        cls = crop(case.classes, start - margin, block, self.air_class, case.body_axis)
        lab = crop(case.label, start - margin, block, self.label_pad, case.body_axis)
        grid = random_grid(patch, self.gen, self.warp)
        grid = grid * torch.tensor([p / b for p, b in zip(patch, block)][::-1])  # central patch of the block
        present = getattr(case, "_render_ids", None)
        if present is None:
            present = case._render_ids = [int(c) for c in np.unique(case.classes)]
        x, y = warp_and_render(cls, lab, grid, self.renderer, self.gen, present=present, device=self.device)
        return x[None, None], y[None, None]

    def real_share(self, step: int) -> float:
        """Share of real-CT (not rendered) patches at ``step`` (1-based): the ``synth.warmup`` curriculum.

        Examples:
            >>> task = SegmenterTask.__new__(SegmenterTask)
            >>> task.config = SegmenterConfig(train={"steps": 100}, synth={"real_fraction": 0.2, "warmup": 0.5})
            >>> [round(task.real_share(s), 2) for s in (1, 25, 50, 100)]
            [1.0, 0.61, 0.2, 0.2]
        """
        synth, steps = self.config.synth, self.config.train.steps
        ramp = synth.warmup * steps
        if ramp <= 0 or step > ramp:
            return synth.real_fraction
        return 1.0 - (1.0 - synth.real_fraction) * (step - 1) / max(ramp - 1, 1)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch; ``step`` (1-based) sets the curriculum's real-CT share."""
        cfg = self.config
        patch = tuple(cfg.data.patch_size)
        real_share = self.real_share(step)
        imgs, labs = [], []
        for _ in range(cfg.data.batch_size):
            case = self.cases[self.sampler.draw(self.gen)]
            if (cfg.synth.enabled and case.classes is not None
                    and float(torch.rand((), generator=self.gen)) >= real_share):
                x, y = self.rendered_patch(case, patch)
                x, y = x.cpu(), y.cpu()
            else:
                img, lab = sample_patch(case, patch, self.gen, cfg.data.foreground_fraction,
                                        label_pad=self.label_pad)
                x = torch.from_numpy(img)[None, None]
                y = torch.from_numpy(lab.astype(np.int64))[None, None]
                x, y = augment_scale(x, y, cfg.augment, self.gen)
                x = augment_label_intensity(x, y, cfg.augment, self.gen)
                x = augment_intensity(x, cfg.augment, self.gen)
            if (cfg.data.thin_scan_prob > 0 and case.body_axis is not None
                    and float(torch.rand((), generator=self.gen)) < cfg.data.thin_scan_prob):
                x, y = thin_scan(x, y, case.body_axis, self.gen)
            imgs.append(x)
            labs.append(y)
        return torch.cat(imgs).to(self.device), torch.cat(labs).to(self.device)

    def train_step(self, step: int) -> dict[str, float]:
        self.net.train()
        x, y = self.batch(step)
        with autocast(self.device, self.dtype):
            logits = self.net(x)
        loss = self.loss(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return {"loss": float(loss.detach()), "lr": self.opt.param_groups[0]["lr"]}

    def validate(self, step: int) -> dict[str, float]:
        from medgen.inference.segment import segment_array
        from medgen.metrics.segmentation import dice
        cases = self.val_cases or self.cases[:1]
        prefix = "dice" if self.val_cases else "fit_dice"  # fit_dice: measured on a training case
        self.net.eval()
        scores: dict[str, list[float]] = {}
        patch = self.config.data.patch_size
        for case in cases:
            image, before = case.image, None
            if case.body_axis is not None:  # a short scan extended as inference extends it
                image, before = repeat_end_slices(image, case.body_axis, patch[case.body_axis])
            pred = segment_array(self.network, image, patch_size=patch, device=self.device, dtype=self.dtype,
                                 overlap=0.25, pad_value=-1.0)
            if before is not None:
                pred = np.take(pred, np.arange(before, before + case.image.shape[case.body_axis]), axis=case.body_axis)
            for cid, name in self.label_names.items():
                if cid == 0 or not (case.label == cid).any():
                    continue
                scores.setdefault(name, []).append(dice(pred == cid, case.label == cid))
        out = {f"{prefix}/{n}": float(np.mean(v)) for n, v in scores.items()}
        if out:
            out[f"{prefix}/mean"] = float(np.mean(list(out.values())))
        return out

    def state_dict(self) -> dict:
        return {"net": self.network.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
