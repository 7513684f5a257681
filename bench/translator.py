"""Translator speed benchmark; prints JSON.

Measures, in one process and on the same inputs:

* training steps/s of medgen's translator (``TranslatorTask`` with a shipped config: 2.5D,
  structure + air terms, batched passes) in fp32 and bf16;
* the same for a straightforward reference implementation of the original CycleGAN training
  loop (written below, not in the library): same generator and discriminator architecture and
  batch, LSGAN + cycle + identity losses with image pools, separate forward passes, fp32, no
  optimisations;
* inference seconds per 256x256x100 volume (network part, in the preprocessed space): medgen's
  ``translate_array`` (2.5D stacks in batches, overlapping stacks blended) in fp32 and bf16, vs a
  reference slice-by-slice loop (batch 1, fp32, centre channel only); plus the full
  ``translate_volume`` chain (preprocess -> translate -> invert) on a 256x256x100 MR phantom.

``training_efficiency_fp32`` counts the FLOPs of one step of the reference and of medgen's step with
the reference's losses (the two must match: same work), the GFLOP/s each achieves and that over the
fp32 matmul peak measured in the same run: ``ceiling_speedup_same_flops`` bounds what any
implementation of the same step can gain here.

Ratios > 1 mean medgen is faster. Note medgen's training step does *more* work than the reference
(structure, air and histogram terms); ``library_fp32_plain_losses`` trains the reference's losses
(:data:`REFERENCE_LOSSES`: identity included) and so isolates the implementation difference.

Usage::

    python bench/translator.py [--threads N] [--steps 5] [--config translator/cyclegan_25d] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Mean seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


# ------------------------------------------------------------------------------------------------
# reference: the original CycleGAN training loop, plainly written (fp32, separate passes)
# ------------------------------------------------------------------------------------------------
class ReferencePool:
    def __init__(self, size=50):
        self.size, self.images = size, []

    def query(self, images):
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif np.random.rand() < 0.5:
                i = np.random.randint(self.size)
                out.append(self.images[i].clone())
                self.images[i] = image
            else:
                out.append(image)
        return torch.cat(out)


class ReferenceCycleGAN:
    """G_A: MR->CT, G_B: CT->MR, D_A on CT, D_B on MR; lambda 10, identity 0.5, Adam 2e-4 (0.5, 0.999)."""

    def __init__(self, build, lam=10.0, idt=0.5):
        self.G_A, self.G_B, self.D_A, self.D_B = build()
        self.lam, self.idt = lam, idt
        self.opt_G = torch.optim.Adam(list(self.G_A.parameters()) + list(self.G_B.parameters()), lr=2e-4, betas=(0.5, 0.999))
        self.opt_D = torch.optim.Adam(list(self.D_A.parameters()) + list(self.D_B.parameters()), lr=2e-4, betas=(0.5, 0.999))
        self.pool_A, self.pool_B = ReferencePool(), ReferencePool()

    @staticmethod
    def gan(pred, real):
        pred = pred[-1] if isinstance(pred, list) else pred
        return F.mse_loss(pred, torch.ones_like(pred) if real else torch.zeros_like(pred))

    def step(self, real_A, real_B):
        fake_B = self.G_A(real_A)
        rec_A = self.G_B(fake_B)
        fake_A = self.G_B(real_B)
        rec_B = self.G_A(fake_A)
        for p in list(self.D_A.parameters()) + list(self.D_B.parameters()):
            p.requires_grad_(False)
        self.opt_G.zero_grad()
        loss_idt_A = F.l1_loss(self.G_A(real_B), real_B) * self.lam * self.idt
        loss_idt_B = F.l1_loss(self.G_B(real_A), real_A) * self.lam * self.idt
        loss_G = (self.gan(self.D_A(fake_B), True) + self.gan(self.D_B(fake_A), True)
                  + F.l1_loss(rec_A, real_A) * self.lam + F.l1_loss(rec_B, real_B) * self.lam + loss_idt_A + loss_idt_B)
        loss_G.backward()
        self.opt_G.step()
        for p in list(self.D_A.parameters()) + list(self.D_B.parameters()):
            p.requires_grad_(True)
        self.opt_D.zero_grad()
        fb = self.pool_A.query(fake_B)
        fa = self.pool_B.query(fake_A)
        loss_D_A = 0.5 * (self.gan(self.D_A(real_B), True) + self.gan(self.D_A(fb.detach()), False))
        loss_D_B = 0.5 * (self.gan(self.D_B(real_A), True) + self.gan(self.D_B(fa.detach()), False))
        (loss_D_A + loss_D_B).backward()
        self.opt_D.step()


@torch.no_grad()
def reference_inference(G, volume: np.ndarray, context: int) -> np.ndarray:
    """Slice by slice, batch 1, fp32: the centre channel of each slice's stack."""
    X, Y, Z = volume.shape
    half = context // 2
    out = np.zeros_like(volume)
    vol = torch.from_numpy(volume)
    for z in range(Z):
        idx = [min(max(z + o, 0), Z - 1) for o in range(-half, half + 1)]
        stack = vol[:, :, idx].permute(2, 0, 1)[None]
        out[:, :, z] = G(stack)[0, half].numpy()
    return out


def training_efficiency(steps: dict, steps_per_s: dict) -> dict:
    """FLOPs of one training step (forward and backward, ``FlopCounterMode``), the achieved GFLOP/s at
    the measured steps/s, and that over the fp32 matmul peak measured in this run.

    ``ceiling_speedup_same_flops`` = peak / the reference's achieved rate: no implementation doing the
    same FLOPs (same networks, batch and losses) can beat the reference by more than that on this
    machine; only fewer FLOPs or a faster dtype can.
    """
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from segment_mr import matmul_peak_gflops

    peak = matmul_peak_gflops(torch.float32)
    out = {"matmul_peak_gflop_per_s": round(peak, 1)}
    for name, step in steps.items():
        with FlopCounterMode(display=False) as counter:
            step()
        gflop = counter.get_total_flops() / 1e9
        rate = gflop * steps_per_s[name]
        out[name] = {"gflop_per_step": round(gflop, 2), "gflop_per_s": round(rate, 1),
                     "fraction_of_peak": round(rate / peak, 3)}
    out["ceiling_speedup_same_flops"] = round(peak / out["reference_fp32"]["gflop_per_s"], 2)
    return out


#: the reference loop's losses in the library's terms (LSGAN + cycle 10 + identity 0.5 of it, no
#: structure, air or histogram term): ``library_fp32_plain_losses`` trains exactly these, so its ratio
#: to ``reference_fp32`` is the implementation difference alone.
REFERENCE_LOSSES = {"lambda_cycle": 10.0, "lambda_identity": 0.5, "structure": "none", "lambda_air": 0.0,
                    "lambda_histogram": 0.0, "lambda_shape": 0.0, "lambda_seg_adv": 0.0,
                    "lambda_class_intensity": 0.0, "cycle_noise": 0.0, "shape_segmenter": None}


# ------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per variant")
    parser.add_argument("--config", default="translator/cyclegan_25d")
    parser.add_argument("--quick", action="store_true", help="smaller volume (128x128x24) for a smoke run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from medgen.config import load_config
    from medgen.data.phantoms import make_phantom
    from medgen.inference.translate import Translator, translate_array, translate_volume
    from medgen.io.volume import Volume
    from medgen.runtime import cpu_supports_bf16, seed_everything
    from medgen.training.translator import TranslatorConfig, TranslatorTask, build_networks

    config = load_config(args.config, TranslatorConfig, default="translator/cyclegan_25d")
    m = config.model
    if m.spatial_dims != 2:
        raise SystemExit("bench/translator.py measures the 2D / 2.5D translators")
    shape = (128, 128, 24) if args.quick else (256, 256, 100)
    phantom = make_phantom(0, shape=shape, spacing=(2.0, 2.0, 3.0))
    mr_unit = np.clip(phantom.mr / np.percentile(phantom.mr, 99.5) * 2 - 1, -1, 1).astype(np.float32)
    ct_unit = np.clip(phantom.ct / 1000.0, -1, 1).astype(np.float32)
    result = {"device": "cpu", "threads": torch.get_num_threads(), "cpu_bf16": cpu_supports_bf16(),
              "config": args.config, "volume": list(shape),
              "model": {"features": m.features, "n_blocks": m.n_blocks, "context": m.context,
                        "patch_size": config.data.patch_size, "batch_size": config.data.batch_size}}

    # ---- training ------------------------------------------------------------------------------
    def library_task(dtype, plain=False):
        cfg = config
        if plain:
            cfg = config.model_copy(update={"loss": config.loss.model_copy(update=REFERENCE_LOSSES)})
        seed_everything(0)
        task = TranslatorTask(cfg, [mr_unit], [ct_unit], device="cpu", precision=dtype)
        counter = iter(range(1, 10_000))
        return lambda: task.train_step(next(counter))

    train = {}
    for name, dtype, plain in (("library_fp32", torch.float32, False), ("library_bf16", torch.bfloat16, False),
                               ("library_fp32_plain_losses", torch.float32, True)):
        train[name] = 1.0 / timed(library_task(dtype, plain), args.steps)

    seed_everything(0)
    ref = ReferenceCycleGAN(lambda: [build_networks(m)[k] for k in ("g_mr2ct", "g_ct2mr", "d_ct", "d_mr")])
    from medgen.data.sampling import VolumeSampler
    common = dict(patch_size=config.data.patch_size, context=m.context, seed=0)
    s_mr, s_ct = VolumeSampler([mr_unit], **common), VolumeSampler([ct_unit], **common)
    def reference_step():
        ref.step(s_mr.sample(config.data.batch_size).image, s_ct.sample(config.data.batch_size).image)

    train["reference_fp32"] = 1.0 / timed(reference_step, args.steps)
    result["training_steps_per_s"] = {k: round(v, 4) for k, v in train.items()}
    result["training_efficiency_fp32"] = training_efficiency(
        {"reference_fp32": reference_step, "library_fp32_plain_losses": library_task(torch.float32, plain=True)},
        {k: train[k] for k in ("reference_fp32", "library_fp32_plain_losses")})
    result["training_speedup_vs_reference"] = {k: round(v / train["reference_fp32"], 3) for k, v in train.items()
                                               if k != "reference_fp32"}

    # ---- inference -----------------------------------------------------------------------------
    seed_everything(0)
    G = build_networks(m)["g_mr2ct"].eval()
    infer = {}
    for name, dtype in (("library_fp32", torch.float32), ("library_bf16", torch.bfloat16)):
        infer[name] = timed(lambda: translate_array(G, mr_unit, spatial_dims=2, context=m.context, dtype=dtype,
                                                    batch_slices=config.inference.batch_slices,
                                                    stack_blend=config.inference.stack_blend, show_progress=False),
                            1, warmup=0)
    infer["reference_fp32"] = timed(lambda: reference_inference(G, mr_unit, m.context), 1, warmup=0)
    translator = Translator(G, 2, m.context, config.ct_window, config.preprocess.mr.model_dump(mode="json"),
                            config.inference.model_dump())
    mr_volume = Volume(phantom.mr, phantom.affine)
    for name, precision in (("chain_translate_volume_fp32", "fp32"), ("chain_translate_volume_bf16", "bf16")):
        infer[name] = timed(lambda: translate_volume(mr_volume, translator, device="cpu", precision=precision,
                                                     show_progress=False), 1, warmup=0)
    result["inference_seconds_per_volume"] = {k: round(v, 2) for k, v in infer.items()}
    result["inference_speedup_vs_reference"] = {k: round(infer["reference_fp32"] / v, 3)
                                                for k, v in infer.items() if k.startswith("library")}
    result["notes"] = ("reference = original CycleGAN loop (separate passes, fp32, LSGAN+cycle+identity+pools), "
                       "same networks and batch; library steps include the MIND structure, air and histogram terms "
                       "unless 'plain_losses' (then exactly the reference's losses, identity 0.5 included); inference 'library' columns are the network part on the 256x256x100 array "
                       "(2.5D stacks, batch of slices, blended), 'chain' adds preprocess + invert on the phantom "
                       "MR (body-cropped before translation)")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
