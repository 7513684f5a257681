"""Cost of the random-contrast renderer against the training step it feeds. Prints JSON.

In one run, on one phantom's class map: milliseconds per rendered patch (warp + render, what
``SegmenterTask.rendered_patch`` does), and milliseconds per training step of the segmenter that
consumes it (``segmenter/synth_unet`` network, batch of rendered patches, forward + backward +
optimiser step), so the ratio holds on a noisy machine. ``--device cuda`` runs both on a GPU.

Usage::

    OMP_NUM_THREADS=1 python bench/render.py --threads 1 [--patch 64 64 32] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _times(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000.0)
    return out


def _summary(ms: list[float]) -> dict:
    return {"min": round(min(ms), 2), "median": round(statistics.median(ms), 2), "max": round(max(ms), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from medgen.config import load_config
    from medgen.data.phantoms import make_phantom
    from medgen.io.volume import Volume
    from medgen.training.segmenter import SegmenterConfig, SegmenterTask, input_spec, plan_labels, prepare_case

    device = torch.device(args.device)
    patch = tuple(args.patch)
    cfg = load_config(None, SegmenterConfig, default="segmenter/synth_unet",
                      overrides=["data.spacing=[2,2,3]", f"data.patch_size={list(patch)}", "train.precision=fp32"])
    p = make_phantom(0, shape=(176, 144, 64), spacing=(2.0, 2.0, 3.0))
    plan = plan_labels(p.label_names, None)
    case = prepare_case("p0", Volume(p.ct, p.affine), Volume(p.labels, p.affine), input_spec(cfg), plan,
                        synth=cfg.synth)
    task = SegmenterTask(cfg, [case], [], plan.names, device=device, seed=0)
    render_ms = _times(lambda: task.rendered_patch(case, patch), args.repeats)
    step_ms = _times(lambda: task.train_step(0), max(3, args.repeats // 4), warmup=1)
    per_step_render = cfg.data.batch_size * statistics.median(render_ms)
    print(json.dumps({
        "device": str(device), "torch_threads": torch.get_num_threads(), "patch": list(patch),
        "batch_size": cfg.data.batch_size, "render_ms_per_patch": _summary(render_ms),
        "train_step_ms (includes rendering its batch)": _summary(step_ms),
        "render_share_of_step": round(per_step_render / statistics.median(step_ms), 3)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
