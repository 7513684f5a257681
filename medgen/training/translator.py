"""Unpaired MR -> CT translator training: the config schema and the :class:`TranslatorTask`.

The task plugs into the shared loop (:func:`medgen.training.loop.run_training`), which owns
resume, checkpoints, logging and DDP; the task owns the four networks (G: MR->CT, F: CT->MR,
D_CT, D_MR), the :class:`~medgen.objectives.cyclegan.CycleGANObjective`, two optimisers with a
linear learning-rate decay over the second half, and one independent sampler per modality.

One step (the CycleGAN algorithm, unrolled)::

    mr, ct   <- independent samples (unpaired) from the MR and CT samplers
    losses   <- objective.generator_loss(mr, ct)   # adversarial + cycle + identity (+ extras)
    update G and F
    d_losses <- objective.discriminator_loss(mr, ct, G(mr), F(ct))   # with the image pools
    update D_CT and D_MR

Everything random that affects training (samplers, pools, global RNGs, which the loop saves) is
in the checkpoint, so an interrupted run resumed with ``--resume`` continues bit-for-bit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from medgen.config import Overlap, PositiveFloat, PositiveInt, StrictModel
from medgen.data.sampling import VolumeSampler
from medgen.objectives.cyclegan import CycleGANObjective, segment_probabilities
from medgen.objectives.structure import build_structure_loss
from medgen.runtime import autocast
from medgen import distributed
from medgen.training.ema import WeightEMA
from medgen.training.optim import adam
from medgen.transforms.recipes import PreprocessConfig
from medgen.transforms.random_warp import WarpRanges
from medgen.transforms.render import DEFAULT_HU_BANDS, RenderConfig
from medgen.errors import MedgenError
from medgen.networks.resnet_generator import ResnetGenerator
from medgen.objectives.ct_views import WindowedViews
from medgen.viz import Panel, save_panels_png

log = logging.getLogger(__name__)

GENERATOR_NAME = "medgen.networks.resnet_generator:ResnetGenerator"


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
class PreprocessSections(StrictModel):
    """The preprocessing recipe of each modality, embedded (so ``--set preprocess.ct.ct.window=...``
    works and the exported bundle records exactly what the MR needs). Omitted keys take the
    defaults of ``configs/preprocess/{mr,ct}.yaml``. MR and CT must share the voxel spacing."""

    mr: PreprocessConfig = Field(default_factory=lambda: PreprocessConfig(modality="mr"))
    ct: PreprocessConfig = Field(default_factory=lambda: PreprocessConfig(modality="ct"))

    @model_validator(mode="after")
    def _check(self):
        if self.mr.modality != "mr" or self.ct.modality != "ct":
            raise ValueError("preprocess.mr must have modality mr and preprocess.ct modality ct")
        if self.mr.spacing != self.ct.spacing:
            raise ValueError(f"preprocess.mr.spacing {self.mr.spacing} and preprocess.ct.spacing {self.ct.spacing} "
                             "must be equal (the translator maps voxels to voxels)")
        if self.mr.orientation != "RAS" or self.ct.orientation != "RAS":
            raise ValueError("the translator slices along RAS axis 2 (axial); keep preprocess orientation RAS")
        return self


class ModelConfig(StrictModel):
    spatial_dims: Literal[2, 3] = 2
    context: int = Field(3, ge=1, description="adjacent slices per 2D sample (1 = 2D, odd k = 2.5D); 1 for 3D")
    features: int = Field(24, ge=1)
    n_down: int = Field(2, ge=1, le=5)
    n_blocks: int = Field(6, ge=0)
    norm: Literal["instance", "batch", "group", "none"] = "instance"
    upsample: Literal["nearest", "linear", "transpose"] = "nearest"
    dropout: float = 0.0
    stem_kernel: int = 7
    disc_features: int = 32
    disc_layers: int = 3
    disc_ct_windows: list[list[float]] = Field(default_factory=list, description=(
        "extra HU windows D_CT sees the CT through, as channels beside the translator's own view "
        "(e.g. [[-200, 300]], a soft-tissue window): fat/muscle contrast as visible to D as the body "
        "outline (medgen.objectives.ct_views); empty = the translator's view only"))

    @model_validator(mode="after")
    def _check(self):
        if self.context % 2 == 0:
            raise ValueError("context must be odd (a centre slice with the same number of neighbours each side)")
        if self.spatial_dims == 3 and self.context != 1:
            raise ValueError("context must be 1 for spatial_dims 3")
        for window in self.disc_ct_windows:
            if len(window) != 2 or not window[0] < window[1]:
                raise ValueError(f"disc_ct_windows entries are [lo, hi] HU with lo < hi, got {window}")
        return self

    @property
    def size_multiple(self) -> int:
        """What every spatial size of a training patch must be a multiple of."""
        return 2 ** self.n_down


class DataConfig(StrictModel):
    patch_size: list[PositiveInt] = Field(default_factory=lambda: [96, 96])
    batch_size: int = Field(2, ge=1)
    foreground_prob: float = Field(0.9, ge=0, le=1)
    intensity_balance: float = Field(0.0, ge=0, le=1, description=(
        "0..1: draw body centres tempered towards rare intensities (bin of n voxels drawn ∝ n**(1-b)); "
        "0 = uniform over body voxels. Rare tissue such as bone is otherwise seen ~1-2% of the time."))
    flip: bool = True
    mr_gamma: list[float] | None = Field(default_factory=lambda: [0.8, 1.25])


class LossConfig(StrictModel):
    lambda_cycle: float = 10.0
    lambda_identity: float = Field(0.0, ge=0, description=(
        "identity G(CT) ~ CT, relative to lambda_cycle (CycleGAN: 0.5); 0 for MR->CT: it keeps dark MR tissue dark"))
    pool_size: int = 50
    structure: Literal["none", "mind", "gradient_correlation"] = "mind"
    lambda_structure: float = 5.0
    lambda_air: float = 1.0
    lambda_histogram: float = Field(1.0, ge=0, description=(
        "quantile match of G(MR) to real CT HU in the body; 0 when MR and CT show other anatomy"))
    lambda_class_intensity: float = Field(0.0, ge=0, description=(
        "per-tissue levels: the shape segmenter's classes on G(MR) pulled to their mean HU in real CT "
        "(medgen.objectives.class_intensity); needs shape_segmenter; 0 = off"))
    cycle_noise: float = Field(0.0, ge=0, description=(
        "std of Gaussian noise (in [-1, 1] units) added to each translation before the cycle translates it "
        "back: defeats CycleGAN's steganography (hidden codes instead of anatomy); 0 = off"))
    shape_segmenter: str | None = None
    lambda_shape: float = 1.0
    lambda_seg_adv: float = Field(0.0, ge=0, description=(
        "output-space adversarial term: a discriminator on the shape segmenter's class maps of real CT vs "
        "G(MR), so G makes CT the segmenter reads as CT anatomy; needs shape_segmenter; 0 = off"))
    lambda_synth_l1: float = Field(10.0, ge=0, description=(
        "objective synth: weight of the L1 between G(rendering) and the CT it was rendered from (CT window "
        "unit range); the structure term (structure, lambda_structure) also applies to these pairs"))
    seg_adv_from: int = Field(0, ge=0, description=(
        "training step after which G's output-space adversarial term counts (D_SEG trains from the start); "
        "a later start leaves the early steps, where the translator's mode forms, to the other terms"))

    @model_validator(mode="after")
    def _check(self):
        for name in ("lambda_class_intensity", "lambda_seg_adv"):
            if getattr(self, name) > 0 and not self.shape_segmenter:
                raise ValueError(f"loss.{name} needs loss.shape_segmenter (a CT segmenter bundle: the tissue "
                                 f"classes come from it); set it, or {name}=0")
        return self


class SynthConfig(StrictModel):
    """``objective: synth``: G learns from exact pairs (a rendering of a CT's class map, that CT).

    See :mod:`medgen.training.synth_translator`. The classes are the CT's organ labels (when
    given) and its HU tissue bands elsewhere; every sample is rendered with a new random contrast,
    resolution, bias field and noise (:mod:`medgen.transforms.render`)."""

    render: RenderConfig = Field(default_factory=RenderConfig)
    hu_bands: list[float] = Field(default_factory=lambda: list(DEFAULT_HU_BANDS), description=(
        "HU edges of the CT tissue classes (air/lung .. cortical bone); they must lie inside the CT window"))
    class_median: int = Field(3, ge=1, description=(
        "median filter size (voxels) applied to the CT before it is cut into HU bands (1 = off): CT noise "
        "would otherwise speckle every tissue near a band edge into two classes that render as salt and pepper"))
    physics_prob: float = Field(0.0, ge=0, le=1, description=(
        "share of renderings whose HU-band classes take the means of a random spin-echo acquisition of generic "
        "tissue types (medgen.data.mr_physics: fat, muscle, fluid, marrow, dark cortical bone) instead of "
        "fully random ones; 0 = fully random contrasts only"))
    margin: list[int] = Field(default_factory=lambda: [8, 8, 8], description=(
        "voxels rendered around each sample on each side (x, y, z): blur and thick-slice simulation see real "
        "neighbours instead of padding"))
    rotate_deg: float = Field(0.0, ge=0, le=180, description=(
        "random smooth warp of each rendered pair (class map, CT and mask together): largest rotation about each "
        "axis, degrees; 0 with scale [1, 1] and elastic_vox 0 = no warp (flips only)"))
    scale: list[float] = Field(default_factory=lambda: [1.0, 1.0], description="isotropic scaling range of the warp")
    elastic_vox: float = Field(0.0, ge=0, description="std of the warp's coarse elastic displacements (voxels)")
    mr_weight: float = Field(1.0, ge=0, description=(
        "weight of the CycleGAN terms on the real MR (--mr, optional: D_CT on G(real MR), cycle through F), "
        "which adapt G to the user's scanner; 0 = train on renderings only even when --mr is given"))

    @property
    def warp(self) -> WarpRanges | None:
        """The warp ranges, or None when every range is the identity."""
        if self.rotate_deg == 0 and self.scale == [1.0, 1.0] and self.elastic_vox == 0:
            return None
        return WarpRanges(rotate_deg=self.rotate_deg, scale=tuple(self.scale), elastic_vox=self.elastic_vox)

    @model_validator(mode="after")
    def _check(self):
        if len(self.margin) != 3 or min(self.margin) < 0:
            raise ValueError(f"synth.margin needs 3 non-negative voxel counts, got {self.margin}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"synth.scale needs [low, high] with 0 < low <= high, got {self.scale}")
        if any(b <= a for a, b in zip(self.hu_bands, self.hu_bands[1:])):
            raise ValueError(f"synth.hu_bands must increase strictly, got {self.hu_bands}")
        return self


class TrainConfig(StrictModel):
    seed: int = 0
    steps: int = Field(2000, ge=1)
    lr: PositiveFloat = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_from: float = Field(0.5, ge=0, le=1, description="fraction of steps after which the LR decays linearly to 0")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    checkpoint_every: PositiveInt = 200
    validate_every: PositiveInt = 200
    log_every: PositiveInt = 20
    val_samples: int = 8
    ema_decay: float | None = Field(None, gt=0, lt=1, description=(
        "export and validate an exponential moving average of G's weights (e.g. 0.999); null: G's last weights"))


class InferenceConfig(StrictModel):
    batch_slices: int = Field(8, ge=1, description="2D: slices per forward pass (memory bound)")
    stack_blend: Literal["centre", "mean"] = "mean"
    mask_background: bool = True
    window_size: list[PositiveInt] | None = None
    overlap: Overlap = 0.5


class TranslatorConfig(StrictModel):
    """``configs/translator/*.yaml``: the defaults are those of the shipped ``translator/cyclegan_25d``."""

    moved_keys: ClassVar[dict[str, str]] = {"seed": "train.seed"}

    objective: Literal["cyclegan", "synth"] = Field("cyclegan", description=(
        "cyclegan: unpaired MR and CT; synth: exact pairs rendered from the CTs (+ CycleGAN terms on real MR "
        "when given)"))
    preprocess: PreprocessSections = Field(default_factory=PreprocessSections)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)

    @property
    def ct_window(self) -> tuple[float, ...]:
        return tuple(float(w) for w in self.preprocess.ct.ct.window)

    @property
    def ct_range(self) -> tuple[float, float]:
        """The lowest and highest HU the synthetic CT can take (the window's end knots)."""
        window = self.ct_window
        return window[0], window[-1]

    @model_validator(mode="after")
    def _check(self):
        if len(self.data.patch_size) != self.model.spatial_dims:
            raise ValueError(f"data.patch_size needs {self.model.spatial_dims} sizes for spatial_dims "
                             f"{self.model.spatial_dims}")
        multiple = self.model.size_multiple
        if any(p % multiple for p in self.data.patch_size):
            raise ValueError(f"data.patch_size must be multiples of {multiple} (the generator's down-sampling)")
        if self.objective == "synth":
            lo, hi = self.ct_range
            if not (lo < self.synth.hu_bands[0] and self.synth.hu_bands[-1] < hi):
                raise ValueError(f"synth.hu_bands {self.synth.hu_bands} must lie inside the CT window {[lo, hi]} "
                                 "(tissue classes are cut from the windowed CT)")
            if self.loss.lambda_synth_l1 <= 0:
                raise ValueError("objective synth needs loss.lambda_synth_l1 > 0 (the paired L1 is its supervision)")
        return self


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------
def generator_kwargs(model: ModelConfig) -> dict:
    """Constructor arguments of G (and F): recorded in the bundle so G can be rebuilt."""
    channels = model.context if model.spatial_dims == 2 else 1
    return {"spatial_dims": model.spatial_dims, "in_channels": channels, "out_channels": channels,
            "features": model.features, "n_down": model.n_down, "n_blocks": model.n_blocks, "norm": model.norm,
            "upsample": model.upsample, "dropout": model.dropout, "stem_kernel": model.stem_kernel}


def build_networks(model: ModelConfig, ct_window=(-1000.0, 1000.0)) -> dict[str, torch.nn.Module]:
    """G (``g_mr2ct``), F (``g_ct2mr``), D_CT (``d_ct``) and D_MR (``d_mr``), freshly initialised.

    ``ct_window`` (the translator's HU window) is needed only for ``model.disc_ct_windows``."""
    kwargs = generator_kwargs(model)
    nets = {"g_mr2ct": ResnetGenerator(**kwargs), "g_ct2mr": ResnetGenerator(**kwargs)}
    views = None
    if model.disc_ct_windows:
        views = WindowedViews(ct_window, model.disc_ct_windows)
    for name in ("d_ct", "d_mr"):
        factor = views.factor if name == "d_ct" and views is not None else 1
        nets[name] = _patch_discriminator(model, kwargs["in_channels"] * factor)
    if views is not None:
        nets["d_ct"] = torch.nn.Sequential(views, nets["d_ct"])
    for net in nets.values():
        _init_weights(net)
    return nets


def build_seg_discriminator(model: ModelConfig, segmenter: torch.nn.Module, patch_size: list[int]) -> torch.nn.Module:
    """D_SEG: a patch discriminator on the segmenter's class probabilities (its channel count read
    from one forward pass of the segmenter on a patch-sized batch, in the objective's layout)."""
    channels = generator_kwargs(model)["in_channels"]
    with torch.no_grad():
        probs = segment_probabilities(segmenter, torch.zeros(1, channels, *patch_size,
                                                             device=next(segmenter.parameters()).device))
    net = _patch_discriminator(model, probs.shape[1])
    _init_weights(net)
    return net


def _patch_discriminator(model: ModelConfig, in_channels: int) -> torch.nn.Module:
    """A MONAI PatchDiscriminator with the config's width and depth (D_CT, D_MR and D_SEG)."""
    from monai.networks.nets import PatchDiscriminator
    return PatchDiscriminator(spatial_dims=model.spatial_dims, channels=model.disc_features, in_channels=in_channels,
                              num_layers_d=model.disc_layers, norm="INSTANCE")


def _init_weights(net: torch.nn.Module, gain: float = 0.02) -> None:
    """CycleGAN's N(0, 0.02) initialisation of convolutions (uses the global, seeded RNG)."""
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            torch.nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


def linear_decay(total_steps: int, decay_from: float) -> Callable[[int], float]:
    """LR factor: 1 for the first ``decay_from`` of training, then linear down to ~0 at the end."""
    start = int(total_steps * decay_from)
    span = max(1, total_steps - start)

    def factor(step: int) -> float:
        return 1.0 if step < start else max(0.0, 1.0 - (step - start) / span)

    return factor


# ---------------------------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------------------------
@dataclass
class PairedCase:
    """A validation case with a paired reference CT (e.g. phantoms): metrics in HU on the MR grid.

    Attributes:
        case_id: name for logs.
        evaluate: ``G -> metrics dict`` (built by the pipeline: translate the MR with G, compare
            with the CT inside the body mask; see :func:`medgen.pipelines.train_translator`).
        picture: ``G -> list of (title, 2D array, window)`` for the sample grid, optional.
    """

    case_id: str
    evaluate: Callable[[torch.nn.Module], dict[str, float]]
    picture: Callable[[torch.nn.Module], list] | None = None


class TranslatorTask:
    """CycleGAN training as a :class:`medgen.training.loop.TrainingTask`.

    Args:
        config: the resolved :class:`TranslatorConfig`.
        mr_volumes, ct_volumes: preprocessed training volumes (RAS, unit range), held in memory.
        mr_masks, ct_masks: their body masks (default: computed).
        device: compute device; precision: compute dtype (autocast) for the forward passes.
        paired: validation cases with a reference CT (MAE/PSNR/SSIM in HU); without them the
            validation reports cycle errors on a fixed set of held-out samples.
        segmenter: a frozen CT segmenter for the shape-consistency term (or None).
        run_dir: where sample grids are written (``samples/``); tracker: MLflow tracker or None.
    """

    #: state entries that differ between DDP ranks (saved per rank by the shared loop)
    rank_local_state_keys = ("mr_sampler", "ct_sampler", "pools")

    def __init__(self, config: TranslatorConfig, mr_volumes: list[np.ndarray], ct_volumes: list[np.ndarray], *,
                 mr_masks: list[np.ndarray] | None = None, ct_masks: list[np.ndarray] | None = None,
                 device: torch.device | str = "cpu", precision: torch.dtype = torch.float32,
                 paired: list[PairedCase] | None = None, segmenter: torch.nn.Module | None = None,
                 run_dir: str | Path | None = None, tracker=None):
        self._init_common(config, device, precision, paired, run_dir, tracker)
        m, d, loss, train = config.model, config.data, config.loss, config.train
        nets = build_networks(m, config.ct_window)
        if segmenter is not None and loss.lambda_seg_adv > 0:
            nets["d_seg"] = build_seg_discriminator(m, segmenter, d.patch_size)
        for net in nets.values():
            net.to(self.device)
        # DDP wrappers (no-ops in one process); the objective unwraps discriminators where needed
        self.nets = {k: distributed.wrap_ddp(v, self.device) for k, v in nets.items()}
        self.objective = CycleGANObjective(
            self.nets["g_mr2ct"], self.nets["g_ct2mr"], self.nets["d_ct"], self.nets["d_mr"], weights=loss,
            structure=build_structure_loss(loss.structure),
            segmenter=segmenter.to(self.device) if segmenter is not None else None,
            d_seg=self.nets.get("d_seg"), seed=config.train.seed + 17 * distributed.rank())
        betas = (train.beta1, train.beta2)
        self.opt_g = adam(list(nets["g_mr2ct"].parameters()) + list(nets["g_ct2mr"].parameters()),
                          lr=train.lr, betas=betas)
        d_params = [p for name in ("d_ct", "d_mr", "d_seg") if name in nets for p in nets[name].parameters()]
        self.opt_d = adam(d_params, lr=train.lr, betas=betas)
        factor = linear_decay(train.steps, train.decay_from)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, factor)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, factor)
        self.g_ema = WeightEMA(nets["g_mr2ct"], train.ema_decay) if train.ema_decay else None
        seed = config.train.seed + 1000 * distributed.rank()  # each rank draws different samples
        common = {"spatial_dims": m.spatial_dims, "patch_size": d.patch_size, "context": m.context,
                  "foreground_prob": d.foreground_prob, "flip_axes": (0,) if d.flip else ()}
        balanced = dict(common, intensity_balance=d.intensity_balance)
        self.mr_sampler = VolumeSampler(mr_volumes, mr_masks, gamma_range=d.mr_gamma, seed=seed + 1, **balanced)
        self.ct_sampler = VolumeSampler(ct_volumes, ct_masks, seed=seed + 2, **balanced)
        # a fixed validation set for the unpaired (cycle) errors, from its own generator (unbalanced)
        val_common = dict(common, flip_axes=())
        self.val_mr = VolumeSampler(mr_volumes, self.mr_sampler.masks, seed=seed + 3, **val_common).sample(train.val_samples)
        self.val_ct = VolumeSampler(ct_volumes, self.ct_sampler.masks, seed=seed + 4, **val_common).sample(train.val_samples)

    def _init_common(self, config, device, precision, paired, run_dir, tracker) -> None:
        self.config = config
        self.device = torch.device(device)
        self.precision = precision
        self.paired = paired or []
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.tracker = tracker

    @property
    def generator(self) -> torch.nn.Module:
        """G (MR -> CT) as exported and validated: its weight average when ``train.ema_decay`` is set."""
        return self.g_ema.module if self.g_ema is not None else distributed.unwrap(self.nets["g_mr2ct"])

    def train_step(self, step: int) -> dict[str, float]:
        self._train_mode()
        mr, ct, losses, images = self.cycle_generator_losses(step)
        self._update_generators(losses["total"])
        d_losses = self._update_discriminators(mr, ct, images)
        return self._step_record(step, losses, d_losses)

    # -- the pieces of one step (shared with medgen.training.synth_translator) ------------------
    def _train_mode(self) -> None:
        for net in self.nets.values():
            net.train()

    def cycle_generator_losses(self, step: int):
        """Draw unpaired MR and CT batches; the CycleGAN losses of G and F on them."""
        bs = self.config.data.batch_size
        loss = self.config.loss
        self.objective.lambda_seg_adv = loss.lambda_seg_adv if step > loss.seg_adv_from else 0.0
        mr = self.mr_sampler.sample(bs).to(self.device)
        ct = self.ct_sampler.sample(bs).to(self.device)
        with autocast(self.device, self.precision):
            losses, images = self.objective.generator_loss(mr.image, ct.image, mr_mask=mr.mask, ct_mask=ct.mask)
        return mr, ct, losses, images

    def _update_generators(self, total: torch.Tensor) -> None:
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        if self.g_ema is not None:
            self.g_ema.update(distributed.unwrap(self.nets["g_mr2ct"]))

    def _update_discriminators(self, mr, ct, images) -> dict[str, torch.Tensor]:
        with autocast(self.device, self.precision):
            d_losses = self.objective.discriminator_loss(mr.image, ct.image, images["fake_ct"], images["fake_mr"],
                                                         seg_fake=images.get("seg_fake"))
        self.opt_d.zero_grad(set_to_none=True)
        d_losses["total"].backward()
        self.opt_d.step()
        return d_losses

    def _step_record(self, step: int, losses: dict, d_losses: dict) -> dict[str, float]:
        """Advance the LR schedules; the step's losses as floats (refuses non-finite ones)."""
        for sched in (self.sched_g, getattr(self, "sched_d", None)):
            if sched is not None:
                sched.step()
        out = {f"g_{k}": float(v.detach()) for k, v in losses.items()}
        out.update({k if k != "total" else "d_total": float(v.detach()) for k, v in d_losses.items()})
        out["lr"] = self.sched_g.get_last_lr()[0]
        if not all(math.isfinite(v) for v in out.values()):
            raise MedgenError(f"training diverged at step {step} (non-finite loss: {out})",
                              fix="lower train.lr, use train.precision=fp32, or resume from an earlier checkpoint")
        return out

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        G, Fn = self.nets["g_mr2ct"], self.nets["g_ct2mr"]
        G, Fn = distributed.unwrap(G), distributed.unwrap(Fn)
        G.eval()
        Fn.eval()
        metrics: dict[str, float] = {}
        mr, ct = self.val_mr.to(self.device), self.val_ct.to(self.device)
        with autocast(self.device, self.precision):
            fake_ct = G(mr.image)
            rec_mr = Fn(fake_ct)
            fake_mr = Fn(ct.image)
            rec_ct = G(fake_mr)
        metrics["cycle_mr_l1"] = float((rec_mr.float() - mr.image).abs().mean())
        metrics["cycle_ct_l1"] = float((rec_ct.float() - ct.image).abs().mean())
        metrics.update(self._paired_metrics())
        if distributed.is_main_process() and self.run_dir is not None:
            self._save_samples(step, mr.image, fake_ct, ct.image, fake_mr, self.generator)
        G.train()
        Fn.train()
        return metrics

    def _paired_metrics(self) -> dict[str, float]:
        """The paired validation cases' metrics (mean over cases), on the main process."""
        if not self.paired or not distributed.is_main_process():
            return {}
        rows = [case.evaluate(self.generator) for case in self.paired]
        return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}

    def _save_samples(self, step: int, mr, fake_ct, ct, fake_mr, G) -> None:
        """A PNG grid: MR | synthetic CT (| real CT) for paired cases, then training samples."""
        self._save_grid(step, G, [(mr, "MR (sample)"), (fake_ct, "G(MR) synthetic CT"), (ct, "CT (unpaired)"),
                                  (fake_mr, "F(CT) synthetic MR")])

    def _save_grid(self, step: int, G, columns: list, prefix: str = "step") -> None:
        """Paired cases' pictures, then two training samples: one panel per ``(batch, title)`` column."""
        unit = (-1.0, 1.0)
        rows = []
        for case in self.paired[:2]:
            if case.picture is not None:
                rows.append([Panel(img, window=win, title=f"{case.case_id} {title}") for title, img, win in case.picture(G)])
        first = columns[0][0]
        c = first.shape[1] // 2
        for i in range(min(2, first.shape[0])):
            rows.append([Panel(_display(batch[i, c]), window=unit, title=title) for batch, title in columns])
        path = self.run_dir / "samples" / f"{prefix}_{step:08d}.png"
        save_panels_png(path, rows, title=f"step {step}")
        if self.tracker is not None:
            self.tracker.log_figure_png(path, "samples")

    def state_dict(self) -> dict:
        return {"nets": {k: distributed.unwrap(v).state_dict() for k, v in self.nets.items()},
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
                "pools": self.objective.pools_state_dict(),
                "mr_sampler": self.mr_sampler.state_dict(), "ct_sampler": self.ct_sampler.state_dict(),
                **({"g_ema": self.g_ema.state_dict()} if self.g_ema is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        for k, v in self.nets.items():
            distributed.unwrap(v).load_state_dict(state["nets"][k])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.objective.load_pools_state_dict(state["pools"])
        self.mr_sampler.load_state_dict(state["mr_sampler"])
        self.ct_sampler.load_state_dict(state["ct_sampler"])
        self._load_ema(state)

    def _load_ema(self, state: dict) -> None:
        if self.g_ema is not None:
            if "g_ema" not in state:
                raise MedgenError("the checkpoint has no EMA generator but train.ema_decay is set",
                                  fix="resume with the run's original config (train.ema_decay=null) or start a new run")
            self.g_ema.load_state_dict(state["g_ema"])


def _display(x: torch.Tensor) -> np.ndarray:
    """A (X, Y) RAS slice (or the middle axial slice of an (X, Y, Z) patch) -> a display image
    (anterior up, patient's right on the left)."""
    x = x.detach().float().cpu().numpy()
    if x.ndim == 3:
        x = x[:, :, x.shape[2] // 2]
    return x[::-1, ::-1].T
