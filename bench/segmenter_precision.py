"""What bf16 autocast buys the segmenter's training step on this CPU, and what it costs in accuracy. Prints JSON.

In one run, for a shipped segmenter recipe (``--config``, network and patch size as shipped, or the
phantom bench's smaller settings with ``--set``):

- the machine's reference: the best square-matmul GFLOP/s in fp32 and bf16, and one 3D convolution
  of the recipe's first width in fp32, bf16 autocast and bf16 autocast with ``channels_last_3d``
  tensors (the memory format oneDNN's bf16 kernels prefer);
- the training step (``SegmenterTask.train_step``: its batch of rendered or real patches, forward,
  Dice + CE, backward, AdamW) in fp32, in bf16 autocast (what ``train.precision: bf16`` runs), and
  in bf16 autocast with network and batch in ``channels_last_3d`` (a lever measured, not shipped);
- accuracy: the same weights on the same batch, bf16 logits against fp32 ones (max / mean abs
  difference, share of voxels whose argmax class agrees), and two short trainings from the same
  initial weights on the same batches, fp32 and bf16: their loss curves and the Dice of their
  final weights on a held-out phantom CT.

Usage::

    OMP_NUM_THREADS=1 python bench/segmenter_precision.py --threads 1
    OMP_NUM_THREADS=1 python bench/segmenter_precision.py --threads 1 --config segmenter/ct_unet
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys

from render import _times
from segment_mr import matmul_peak_gflops


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
    return round(statistics.median(_times(fn, repeats, warmup)), 1)


def conv_probe(channels: int, patch: tuple[int, int, int], repeats: int) -> dict:
    """GFLOP/s of one 3x3x3 convolution (batch 2, ``channels`` in and out) per precision and memory format."""
    import torch
    conv = torch.nn.Conv3d(channels, channels, 3, padding=1)
    x = torch.randn(2, channels, *patch)
    flops = 2 * channels * channels * 27 * x[0, 0].numel() * 2
    out = {}
    for name, cast, last in (("fp32", False, False), ("bf16_autocast", True, False),
                             ("bf16_autocast_channels_last_3d", True, True)):
        net, inp = conv, x
        if last:
            net = copy.deepcopy(conv).to(memory_format=torch.channels_last_3d)
            inp = x.contiguous(memory_format=torch.channels_last_3d)

        def run():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cast):
                net(inp)
        out[name] = round(flops / (_median_ms(run, repeats) / 1000.0) / 1e9, 1)
    return out


def _config(config: str, overrides: list[str], precision: str):
    from medgen.config import load_config
    from medgen.training.segmenter import SegmenterConfig
    return load_config(None, SegmenterConfig, default=config, overrides=overrides + [f"train.precision={precision}"])


def _task(config: str, overrides: list[str], precision: str, case, names):
    import torch
    from medgen.training.segmenter import SegmenterTask
    return SegmenterTask(_config(config, overrides, precision), [case], [], names, device=torch.device("cpu"), seed=0)


def _channels_last(task) -> None:
    """Network and batches in ``channels_last_3d`` (the measured, unshipped lever)."""
    import torch
    task.net.to(memory_format=torch.channels_last_3d)
    batch = task.batch
    task.batch = lambda step: tuple(t.contiguous(memory_format=torch.channels_last_3d) if t.dim() == 5 else t
                                    for t in batch(step))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="segmenter/synth_unet")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--repeats", type=int, default=8, help="timed training steps per variant")
    parser.add_argument("--train-steps", type=int, default=60, help="length of the two accuracy trainings")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    import numpy as np
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from medgen.data.phantoms import make_phantom
    from medgen.inference.segment import segment_array
    from medgen.io.volume import Volume
    from medgen.metrics.segmentation import dice
    from medgen.runtime import cpu_supports_bf16
    from medgen.training.segmenter import input_spec, plan_labels, prepare_case

    base = _config(args.config, args.set, "fp32")
    spacing = tuple(base.data.spacing or (2.0, 2.0, 3.0))
    shape = tuple(int(round(e / s)) for e, s in zip((352, 288, 192), spacing))  # a phantom abdomen's extent in mm
    phantoms = [make_phantom(seed, shape=shape, spacing=spacing) for seed in (0, 1)]
    plan = plan_labels(phantoms[0].label_names, None)
    train_case, test_case = (prepare_case(f"p{i}", Volume(p.ct, p.affine), Volume(p.labels, p.affine),
                                          input_spec(base), plan, synth=base.synth) for i, p in enumerate(phantoms))
    patch = tuple(base.data.patch_size)

    result = {"config": args.config, "overrides": args.set, "torch_threads": torch.get_num_threads(),
              "cpu_bf16": cpu_supports_bf16(), "patch": list(patch), "batch_size": base.data.batch_size,
              "matmul_peak_gflop_per_s": {"fp32": round(matmul_peak_gflops(torch.float32), 1),
                                          "bf16": round(matmul_peak_gflops(torch.bfloat16), 1)},
              "conv3d_gflop_per_s": conv_probe(int(base.network.channels[0]) * 2, patch, args.repeats)}

    steps = {}
    for name, precision, last in (("fp32", "fp32", False), ("bf16_autocast", "bf16", False),
                                  ("bf16_autocast_channels_last_3d", "bf16", True)):
        task = _task(args.config, args.set, precision, train_case, plan.names)
        if last:
            _channels_last(task)
        steps[name] = _median_ms(lambda: task.train_step(1), args.repeats)
    result["train_step_ms"] = steps
    result["speedup_vs_fp32"] = {k: round(steps["fp32"] / v, 2) for k, v in steps.items()}

    fp32, bf16 = (_task(args.config, args.set, p, train_case, plan.names) for p in ("fp32", "bf16"))
    bf16.network.load_state_dict(fp32.network.state_dict())
    x, _ = fp32.batch(1)
    with torch.no_grad():
        ref = fp32.network.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = bf16.network.eval()(x).float()
    result["forward_bf16_vs_fp32"] = {"logit_max_abs_diff": round(float((low - ref).abs().max()), 4),
                                      "logit_mean_abs_diff": round(float((low - ref).abs().mean()), 5),
                                      "argmax_agreement": round(float((low.argmax(1) == ref.argmax(1)).float().mean()), 5)}

    curves, dices = {}, {}
    for name, task in (("fp32", fp32), ("bf16", bf16)):
        task.gen.manual_seed(1)  # the same batches for both
        curves[name] = [task.train_step(s)["loss"] for s in range(1, args.train_steps + 1)]
        pred = segment_array(task.network, test_case.image, patch_size=patch, device=torch.device("cpu"),
                             dtype=task.dtype, overlap=0.25, pad_value=-1.0)
        per = [dice(pred == c, test_case.label == c) for c in plan.names if c and (test_case.label == c).any()]
        dices[name] = round(float(np.mean(per)), 4)
    tail = max(1, args.train_steps // 5)
    result["short_training"] = {
        "steps": args.train_steps, "held_out_mean_dice": dices,
        "mean_loss_last_steps": {k: round(float(np.mean(v[-tail:])), 4) for k, v in curves.items()},
        "max_abs_loss_diff_per_step": round(max(abs(a - b) for a, b in zip(curves["fp32"], curves["bf16"])), 4)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
