"""Synthesis-supervised MR -> CT translator training (``objective: synth``): the task.

Unpaired CycleGAN training never tells G which HU belongs to which MR voxel; it has to find the
mapping from distribution matching alone, which often settles on a wrong one (low contrast,
bone as soft tissue). Rendering gives exact pairs: a CT's class map (organ labels and/or HU
tissue bands) rendered with a random MR-like contrast, resolution, bias field and noise
(:class:`medgen.data.synth_pairs.SynthPairSampler`), and the CT it came from as the target.
G is trained on those with

* ``loss.lambda_synth_l1`` x L1(G(rendering), CT) in the CT window's unit range, and
* ``loss.lambda_structure`` x the structure term (``loss.structure``: MIND or gradient
  correlation) between the rendering and G(rendering) inside the CT body,

so it learns anatomy -> HU from every contrast the renderer can draw, and the real MR it is
applied to is one more contrast. When real (unpaired) MR is given, the CycleGAN losses of
:class:`medgen.training.translator.TranslatorTask` are added with weight ``synth.mr_weight``
(D_CT on G(real MR), the cycle through F, the structure and air terms...), which adapts G to
the user's scanner; the discriminators then train as in the CycleGAN task.

Same networks, same bundle (:func:`medgen.pipelines.train_translator.export_translator`), same
``medgen translate``: only the training signal differs. Everything random is in the
checkpoint (the synthesis sampler's generator re-seeds the renderer for every sample), so a
resumed run continues bit-for-bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medgen.data.synth_pairs import SynthPairSampler
from medgen.objectives.structure import build_structure_loss
from medgen.runtime import autocast
from medgen import distributed
from medgen.training.ema import WeightEMA
from medgen.training.translator import (PairedCase, TranslatorConfig, TranslatorTask, _init_weights, generator_kwargs,
                                        linear_decay)
from medgen.errors import MedgenError
from medgen.networks.resnet_generator import ResnetGenerator
from medgen.transforms.intensity import unit_to_hu
from medgen.transforms.render import render_classes

__all__ = ["SynthTranslatorTask", "synth_classes"]


def synth_classes(ct_volumes: list[np.ndarray], labels: list[np.ndarray | None],
                  config: TranslatorConfig) -> tuple[list[np.ndarray], tuple[int]]:
    """The render class map of every CT and the class id of air.

    Organ labels keep their ids (the same id is the same class in every CT); every other voxel
    gets its HU tissue band (``synth.hu_bands``) as class ``n_label_ids + band``, where
    ``n_label_ids`` is the largest label id + 1 (0 without labels). The bands lie inside the CT
    window (the config checks it), so the windowed CT gives the same bands as the raw HU. The
    bands are cut from a median-filtered copy (``synth.class_median``), so that tissue is one
    coherent class instead of CT noise flipping voxels between neighbouring bands.
    """
    ids = [int(lab.max()) for lab in labels if lab is not None and lab.size]
    n_label_ids = max(ids) + 1 if ids else 0
    classes = []
    for ct, lab in zip(ct_volumes, labels):
        hu = unit_to_hu(np.asarray(ct, np.float32), config.ct_window)
        classes.append(render_classes(lab if lab is not None and n_label_ids else None, hu, n_label_ids=n_label_ids,
                                      bands=config.synth.hu_bands, median=config.synth.class_median))
    return classes, (n_label_ids,)


class SynthTranslatorTask(TranslatorTask):
    """G trained on rendered/real-CT pairs (+ CycleGAN terms on real MR), as a ``TrainingTask``.

    Args:
        config: the resolved config (``objective: synth``).
        ct_volumes: preprocessed CTs (RAS, the translator's unit range); ct_classes: their class
            maps (:func:`medgen.transforms.render.render_classes`), same shapes.
        dark_classes: class ids of air (rendered dark most of the time).
        mr_volumes: optional preprocessed real MRs (unpaired): enables the CycleGAN terms.
        ct_masks, mr_masks: body masks (default: computed).
        device, precision, paired, segmenter, run_dir, tracker: as :class:`TranslatorTask`.
    """

    def __init__(self, config: TranslatorConfig, ct_volumes: list[np.ndarray], ct_classes: list[np.ndarray], *,
                 dark_classes=(), mr_volumes: list[np.ndarray] | None = None,
                 ct_masks: list[np.ndarray] | None = None, mr_masks: list[np.ndarray] | None = None,
                 device: torch.device | str = "cpu", precision: torch.dtype = torch.float32,
                 paired: list[PairedCase] | None = None, segmenter: torch.nn.Module | None = None,
                 run_dir: str | Path | None = None, tracker=None):
        if config.objective != "synth":
            raise ValueError(f"SynthTranslatorTask needs objective synth, the config has {config.objective}")
        self.adapt = bool(mr_volumes) and config.synth.mr_weight > 0
        if self.adapt:  # G, F, D_CT, D_MR, the CycleGAN objective and the unpaired samplers
            super().__init__(config, mr_volumes, ct_volumes, mr_masks=mr_masks, ct_masks=ct_masks, device=device,
                             precision=precision, paired=paired, segmenter=segmenter, run_dir=run_dir,
                             tracker=tracker)
            self.rank_local_state_keys = (*TranslatorTask.rank_local_state_keys, "synth_sampler")
        else:
            G = ResnetGenerator(**generator_kwargs(config.model))
            _init_weights(G)
            self._init_generator_only(config, device, precision, paired, run_dir, tracker, G)
            self.rank_local_state_keys = ("synth_sampler",)
        m, d = config.model, config.data
        seed = config.train.seed + 1000 * distributed.rank() + 5
        synth = config.synth
        common = {"spacing": config.preprocess.ct.spacing or (1.0, 1.0, 1.0), "render": synth.render,
                  "dark_classes": dark_classes, "margin": synth.margin, "device": self.device,
                  "hu_bands": synth.hu_bands, "physics_prob": synth.physics_prob,
                  "spatial_dims": m.spatial_dims, "patch_size": d.patch_size, "context": m.context,
                  "foreground_prob": d.foreground_prob}
        self.synth_sampler = SynthPairSampler(ct_volumes, ct_classes, ct_masks, seed=seed,
                                              flip_axes=(0,) if d.flip else (), intensity_balance=d.intensity_balance,
                                              warp=synth.warp, **common)
        self.val_synth = SynthPairSampler(ct_volumes, ct_classes, self.synth_sampler.masks, seed=seed + 1,
                                          **common).sample(config.train.val_samples)
        self.synth_structure = build_structure_loss(config.loss.structure)

    def _init_generator_only(self, config, device, precision, paired, run_dir, tracker, G: torch.nn.Module) -> None:
        """G alone, its optimiser, schedule and optional EMA (no real MR: no F, no discriminators)."""
        self._init_common(config, device, precision, paired, run_dir, tracker)
        train = config.train
        self.nets = {"g_mr2ct": distributed.wrap_ddp(G.to(self.device), self.device)}
        self.opt_g = torch.optim.Adam(G.parameters(), lr=train.lr, betas=(train.beta1, train.beta2))
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, linear_decay(train.steps, train.decay_from))
        self.g_ema = WeightEMA(G, train.ema_decay) if train.ema_decay else None

    def synth_losses(self, pair) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``(losses, G(rendering))``: the paired L1 and structure terms (weighted sum in ``synth_total``)."""
        loss = self.config.loss
        fake = self.nets["g_mr2ct"](pair.image)
        losses = {"synth_l1": F.l1_loss(fake.float(), pair.target)}
        total = loss.lambda_synth_l1 * losses["synth_l1"]
        if self.synth_structure is not None and loss.lambda_structure > 0:
            losses["synth_structure"] = self.synth_structure(pair.image, fake, pair.mask)
            total = total + loss.lambda_structure * losses["synth_structure"]
        losses["synth_total"] = total
        return losses, fake

    def train_step(self, step: int) -> dict[str, float]:
        self._train_mode()
        pair = self.synth_sampler.sample(self.config.data.batch_size).to(self.device)
        with autocast(self.device, self.precision):
            losses, _ = self.synth_losses(pair)
        total = losses["synth_total"]
        if not self.adapt:
            losses["total"] = total
            self._update_generators(total)
            return self._step_record(step, losses, {})
        mr, ct, cycle, images = self.cycle_generator_losses(step)
        losses.update(cycle)
        losses["total"] = total + self.config.synth.mr_weight * cycle["total"]
        self._update_generators(losses["total"])
        d_losses = self._update_discriminators(mr, ct, images)
        return self._step_record(step, losses, d_losses)

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        """MAE (HU) of G on fixed held-out renderings, paired cases' metrics, the cycle errors (with MR)."""
        G = distributed.unwrap(self.nets["g_mr2ct"])
        G.eval()
        metrics = super().validate(step) if self.adapt else self._paired_metrics()
        G.eval()
        pair = self.val_synth.to(self.device)
        with autocast(self.device, self.precision):
            fake = G(pair.image).float()
        window = self.config.ct_window
        err = (unit_to_hu(fake.clamp(-1, 1), window) - unit_to_hu(pair.target, window)).abs()
        body = pair.mask > 0.5
        metrics["synth_mae_hu"] = float(err[body].mean()) if body.any() else float(err.mean())
        if distributed.is_main_process() and self.run_dir is not None:
            self._save_grid(step, self.generator, [(pair.image, "rendering (sample)"), (fake, "G(rendering)"),
                                                   (pair.target, "CT (its source)")], prefix="synth")
        G.train()
        return metrics

    def state_dict(self) -> dict:
        state = {"synth_sampler": self.synth_sampler.state_dict()}
        if self.adapt:
            return {**super().state_dict(), **state}
        state.update({"nets": {"g_mr2ct": distributed.unwrap(self.nets["g_mr2ct"]).state_dict()},
                      "opt_g": self.opt_g.state_dict(), "sched_g": self.sched_g.state_dict()})
        if self.g_ema is not None:
            state["g_ema"] = self.g_ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "synth_sampler" not in state or set(state["nets"]) != set(self.nets):
            raise MedgenError("the checkpoint is not from a synthesis-supervised run with the same inputs "
                              f"(networks {sorted(state.get('nets', {}))}, this run trains {sorted(self.nets)})",
                              fix="resume with the run's original config and inputs (--mr given or not), "
                                  "or start a new run")
        self.synth_sampler.load_state_dict(state["synth_sampler"])
        if self.adapt:
            super().load_state_dict(state)
            return
        distributed.unwrap(self.nets["g_mr2ct"]).load_state_dict(state["nets"]["g_mr2ct"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.sched_g.load_state_dict(state["sched_g"])
        self._load_ema(state)
