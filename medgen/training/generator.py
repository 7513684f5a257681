"""Training an anatomy generator (label map -> CT or MR): config schema, the task, the export.

The task plugs into the shared loop (:func:`medgen.training.loop.run_training`), which owns
checkpoints, resume, logging and metrics history. One step is one generator update then one
discriminator update of :class:`medgen.objectives.conditional_gan.ConditionalGANObjective` on a
batch of patches (3D), slices (2D) or slice stacks (2.5D).

Validation synthesises the first training cases' full volumes with the exported inference path
(:func:`medgen.inference.generate.synthesize_unit`), reports the unit-range L1 error, the
per-label mean-intensity error and per-label Wasserstein distances, and saves a picture grid
``label | generated | real`` (also logged to MLflow).

The export writes a ``generator`` bundle whose ``label_bank/`` holds the training label maps
(compressed NIfTI with their ids), so ``medgen generate`` can sample new anatomies without the
training data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import model_validator

from medgen.config import Overlap, PositiveFloat, PositiveInt, StrictModel
from medgen.data.label_image_pairs import (IntensityScale, LabelChannels, Pair, PatchSampler, mr_robust_max,
                                           per_label_means)
from medgen.data.label_sampler import LabelSamplerConfig
from medgen.errors import InputError
from medgen import distributed
from medgen.inference.generate import synthesize_unit
from medgen.io.volume import Volume
from medgen.io.writers import write_volume
from medgen.metrics.realism import per_label_wasserstein
from medgen.models.bundle import BundleSpec, save_bundle
from medgen.runtime import autocast, resolve_precision

log = logging.getLogger(__name__)

NETWORK_NAME = "medgen.networks.spade_generator:SPADEGenerator"


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

class GeneratorDataConfig(StrictModel):
    modality: Literal["ct", "mr"] = "ct"
    spacing: list[PositiveFloat] | None = None
    ct_window: list[float] = [-1000.0, 1000.0]
    mr_percentile: float = 99.5
    patch_size: list[PositiveInt] = [32, 32, 32]
    batch_size: PositiveInt = 2
    foreground_prob: float = 0.9


class GeneratorNetworkConfig(StrictModel):
    spatial_dims: Literal[2, 3] = 3
    context_slices: int = 0
    channels: list[int] = [8, 16, 32]
    noise_channels: int = 2
    spade_hidden: int = 16
    init_label_means: bool = True


class DiscriminatorConfig(StrictModel):
    channels: int = 8
    num_layers: int = 2


class GeneratorLossConfig(StrictModel):
    adversarial: float = 1.0
    feature_matching: float = 10.0
    l1: float = 10.0
    gan_mode: Literal["hinge", "lsgan"] = "hinge"


class GeneratorTrainConfig(StrictModel):
    steps: PositiveInt = 300
    lr_g: PositiveFloat = 2e-4
    lr_d: PositiveFloat = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    log_every: PositiveInt = 10
    validate_every: PositiveInt = 100
    checkpoint_every: PositiveInt = 100
    validate_cases: int = 1


class GeneratorInferenceConfig(StrictModel):
    overlap: Overlap = 0.25


class GeneratorExportConfig(StrictModel):
    registered_name: str | None = "medgen-generator-ct"
    label_bank_max: int = 64


class GeneratorConfig(StrictModel):
    """The whole ``configs/generator/*.yaml`` schema (defaults: the shipped ``generator/label2ct``).

    Constructing it checks the sections against each other (patch size vs network depth, 2.5D
    context vs dimensionality, CT window), so a config that exists is consistent.
    """

    moved_keys: ClassVar[dict[str, str]] = {"seed": "train.seed"}

    data: GeneratorDataConfig = GeneratorDataConfig()
    network: GeneratorNetworkConfig = GeneratorNetworkConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    loss: GeneratorLossConfig = GeneratorLossConfig()
    train: GeneratorTrainConfig = GeneratorTrainConfig()
    inference: GeneratorInferenceConfig = GeneratorInferenceConfig()
    #: the generator's anatomy sampler: per-structure changes on (LabelSamplerConfig's own defaults: off)
    sampler: LabelSamplerConfig = LabelSamplerConfig(structure_shift_mm=8.0, structure_scale=0.12)
    export: GeneratorExportConfig = GeneratorExportConfig()

    @model_validator(mode="after")
    def _check(self):
        net, data = self.network, self.data
        dims = net.spatial_dims
        if len(data.patch_size) < dims:
            raise ValueError(f"data.patch_size needs {dims} sizes for network.spatial_dims={dims}")
        divisor = 2 ** (len(net.channels) - 1)
        if any(p % divisor for p in data.patch_size[:dims]):
            raise ValueError(f"data.patch_size must be divisible by {divisor} (2 ** (levels of network.channels - 1))")
        if net.context_slices and dims != 2:
            raise ValueError("network.context_slices (2.5D) needs network.spatial_dims=2")
        if data.modality == "ct" and not data.ct_window[0] < data.ct_window[1]:
            raise ValueError("data.ct_window must be [low, high] with low < high")
        return self


# ---------------------------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------------------------

class GeneratorTask:
    """One conditional-GAN generator training run (implements the loop's TrainingTask).

    Args:
        config: the resolved :class:`GeneratorConfig`.
        pairs: prepared training pairs (RAS, on one grid each; see
            :func:`medgen.data.label_image_pairs.load_pairs`).
        run_dir: where sample pictures go (``RUN_DIR/samples``).
        label_names: id -> name for every label (ids missing here get ``label_<id>``).
        device: torch device.
        tracker: a :class:`medgen.tracking.Tracker` for sample pictures (optional).
    """

    #: state entries that differ between DDP ranks (saved per rank by the shared loop)
    rank_local_state_keys = ("sampler",)

    def __init__(self, config: GeneratorConfig, pairs: list[Pair], *, run_dir: str | Path,
                 label_names: dict[int, str] | None = None, device: torch.device | str = "cpu", tracker=None):
        from monai.networks.nets import PatchDiscriminator

        from medgen.networks.spade_generator import SPADEGenerator
        from medgen.objectives.conditional_gan import ConditionalGANObjective
        if not pairs:
            raise InputError("no training pairs", fix="pass --images and --labels")
        self.config = config
        self.pairs = pairs
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.dtype = resolve_precision(config.train.precision, self.device)
        self.tracker = tracker
        ids = sorted({int(v) for p in pairs for v in np.unique(p.label.array)} | set((label_names or {}).keys()))
        self.channels = LabelChannels(ids)
        names = dict(label_names or {})
        self.label_names = {i: names.get(i, "background" if i == 0 else f"label_{i}") for i in self.channels.ids}
        data = config.data
        own_scales = [mr_robust_max(p.image.array, data.mr_percentile) for p in pairs] if data.modality == "mr" else []
        self.scale = IntensityScale(data.modality, ct_window=data.ct_window,
                                    mr_scale=float(np.median(own_scales)) if own_scales else 1.0)
        self.case_channels = [self.channels.encode(p.label.array, source=p.label.source) for p in pairs]
        self.case_units = [self.scale.to_unit(p.image.array, own_scale=own_scales[i] if own_scales else None)
                           for i, p in enumerate(pairs)]
        net = config.network
        self.net_kwargs = {"spatial_dims": net.spatial_dims, "num_labels": len(self.channels),
                           "channels": list(net.channels), "noise_channels": net.noise_channels,
                           "spade_hidden": net.spade_hidden, "context_slices": net.context_slices}
        self.generator = SPADEGenerator(**self.net_kwargs).to(self.device)
        if net.init_label_means:
            self.label_means = per_label_means(self.case_channels, self.case_units, len(self.channels))
            self.generator.init_label_means(self.label_means)
        d_cfg = config.discriminator
        self.discriminator = PatchDiscriminator(spatial_dims=net.spatial_dims, channels=d_cfg.channels,
                                                in_channels=len(self.channels) + 1, num_layers_d=d_cfg.num_layers,
                                                norm="INSTANCE").to(self.device)
        self.g = distributed.wrap_ddp(self.generator, self.device)
        self.d = distributed.wrap_ddp(self.discriminator, self.device)
        loss = config.loss
        self.objective = ConditionalGANObjective(self.g, self.d, weights=loss)
        self.objective.generator = self.g  # DDP wrappers are called; attributes read from the module
        self.objective.generator.num_labels = self.generator.num_labels
        self.objective.generator.context_slices = self.generator.context_slices
        t = config.train
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2))
        self.sampler = PatchSampler(self.case_channels, self.case_units, spatial_dims=net.spatial_dims,
                                    patch_size=data.patch_size, context_slices=net.context_slices,
                                    foreground_prob=data.foreground_prob, seed=t.seed + distributed.rank())

    # -- TrainingTask ---------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        self.generator.train()
        self.discriminator.train()
        labels, real = self.sampler.batch(self.config.data.batch_size)
        labels, real = labels.to(self.device), real.to(self.device)
        noise = torch.randn((labels.shape[0], self.generator.noise_channels, *labels.shape[2:]), device=self.device)
        with autocast(self.device, self.dtype):
            g_loss, parts, fake = self.objective.generator_losses(labels, noise, real)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.float().backward()
        self.opt_g.step()
        with autocast(self.device, self.dtype):
            d_loss, d_parts = self.objective.discriminator_losses(labels, real, fake)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.float().backward()
        self.opt_d.step()
        return {"g_loss": g_loss.item(), **parts, "d_loss": d_loss.item(), **d_parts}

    def synthesize(self, case: int, noise_seed: int = 0) -> np.ndarray:
        """The unit-range image the current generator makes for training case ``case``'s label map."""
        return synthesize_unit(self.generator, self.case_channels[case], noise_seed=noise_seed,
                               patch_size=self.config.data.patch_size, overlap=self.config.inference.overlap,
                               device=self.device, dtype=self.dtype)

    def validate(self, step: int) -> dict[str, float]:
        if not distributed.is_main_process():
            return {}
        metrics: dict[str, list[float]] = {}
        for case in range(min(self.config.train.validate_cases, len(self.pairs))):
            unit = self.synthesize(case)
            real_unit = self.case_units[case]
            fake_img, real_img = self.scale.from_unit(unit), self.scale.from_unit(real_unit)
            labels = self.pairs[case].label.array
            metrics.setdefault("l1_unit", []).append(float(np.abs(unit - real_unit).mean()))
            errors = []
            for value in np.unique(labels):
                mask = labels == value
                errors.append(abs(float(fake_img[mask].mean()) - float(real_img[mask].mean())))
            metrics.setdefault("label_mean_abs_error", []).append(float(np.mean(errors)))
            w = per_label_wasserstein(fake_img, real_img, labels, self.label_names)
            metrics.setdefault("wasserstein_mean", []).append(float(np.mean(list(w.values()))) if w else float("nan"))
            if case == 0:
                self._save_grid(step, fake_img)
        return {k: float(np.mean(v)) for k, v in metrics.items()}

    def _save_grid(self, step: int, fake: np.ndarray) -> None:
        """``label | generated | real`` panels (three planes each) for case 0, logged to MLflow."""
        from medgen.viz import CT_WIDE, save_panels_png, volume_panels

        pair = self.pairs[0]
        real = pair.image.array
        window = CT_WIDE if self.scale.modality == "ct" else (0.0, float(self.scale.mr_scale))
        rows = [volume_panels(pair.label.with_array(self.case_channels[0].astype(np.float32)),
                              window=(0, len(self.channels) - 1), title="label"),
                volume_panels(pair.image.with_array(fake), window=window, title=f"generated (step {step})"),
                volume_panels(pair.image.with_array(real.astype(np.float32)), window=window, title="real")]
        for panel in rows[0]:
            panel.cmap = "tab20"
        path = self.run_dir / "samples" / f"step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_panels_png(path, rows, title=f"{pair.case_id}: label | generated | real")
        if self.tracker is not None:
            self.tracker.log_artifact(path, "samples")

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sampler": _plain(self.sampler.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sampler.load_state_dict(_unplain(state["sampler"]))

    # -- export ---------------------------------------------------------------------------------
    def export(self, bundle_dir: str | Path) -> Path:
        """Write the ``generator`` bundle with its label-map bank."""
        bundle_dir = Path(bundle_dir)
        bank_dir = bundle_dir / "label_bank"
        bank_dir.mkdir(parents=True, exist_ok=True)
        bank = []
        for pair in self.pairs[: self.config.export.label_bank_max]:
            labels = pair.label.array
            dtype = np.uint8 if labels.max() < 256 else np.uint16
            path = write_volume(Volume(labels.astype(dtype), pair.label.affine), bank_dir / f"{pair.case_id}.nii.gz",
                                overwrite=True)
            bank.append(f"label_bank/{path.name}")
        data = self.config.data
        extra = {
            "modality": data.modality, "spatial_dims": self.config.network.spatial_dims,
            "context_slices": self.config.network.context_slices, "label_ids": self.channels.ids,
            "ct_window": list(data.ct_window), "mr_scale": self.scale.mr_scale, "patch_size": list(data.patch_size),
            "spacing": data.spacing, "overlap": self.config.inference.overlap, "label_bank": bank,
            "sampler": self.config.sampler.model_dump(), "noise_channels": self.config.network.noise_channels,
            "label_means_unit": [float(v) for v in getattr(self, "label_means", [])],
        }
        spec = BundleSpec(kind="generator", network={"name": NETWORK_NAME, "kwargs": self.net_kwargs},
                          label_names=self.label_names, extra=extra,
                          metadata={"description": f"medgen anatomy generator: label map -> {data.modality.upper()}",
                                    "network_data_format": {
                                        "inputs": {"labels": {"type": "labels", "num_channels": 1},
                                                   "noise": {"type": "noise",
                                                             "num_channels": self.config.network.noise_channels}},
                                        "outputs": {"image": {"type": "image", "num_channels": 1,
                                                              "value_range": [-1, 1]}}}})
        save_bundle(bundle_dir, spec, self.generator)
        return bundle_dir


def _plain(state: dict) -> dict:
    """NumPy bit-generator state as JSON text (checkpoints load with weights_only=True)."""
    return {"json": json.dumps(state, default=int)}


def _unplain(state: dict) -> dict:
    return json.loads(state["json"])
