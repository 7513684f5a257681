"""Benchmark of ``medgen segment-mr``: seconds per volume, peak memory and each stage's share. Prints JSON.

Models are the shipped default configurations (translator ``translator/cyclegan_25d``,
segmenter ``segmenter/ct_unet``) with random weights: speed and memory do not depend on the
weights. Each (size, precision, path) runs in its own subprocess so peak memory (max RSS) is that
run's alone. MRs are phantoms at 256x256x100 (1.5x1.5x3 mm) and 512x512x300 (0.75x0.75x1 mm).

Two paths run in the same invocation, alternating, so their ratio holds on a shared machine:

* ``medgen``: the library as it is;
* ``plain``: the same chain with the optimisations switched off (``ndimage.affine_transform``
  resampling instead of the separable one, 2 segmenter windows per pass): today's outputs
  before those changes. The JSON reports the speed-up and how far the outputs differ (mask
  voxels that differ, max |HU| difference of the synthetic CT).

Each run also reports, per network (translator G, segmenter), its forward-pass seconds, the
FLOPs of those passes (``torch.utils.flop_counter.FlopCounterMode``), the achieved GFLOP/s and
that divided by the matmul peak of the same dtype measured in the same process (best of a few
square matmuls). bf16 chains run only on CPUs with native bf16 (AVX512-BF16/AMX); elsewhere bf16
is emulated (tens of times slower than fp32) and only a one-batch probe of each network reports
its bf16 GFLOP/s against the bf16 matmul peak.

Usage::

    python bench/segment_mr.py [--sizes 256x256x100 512x512x300] [--precisions fp32 bf16] [--threads 2]
                               [--repeats 2] [--paths medgen plain]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACINGS = {(256, 256, 100): (1.5, 1.5, 3.0), (512, 512, 300): (0.75, 0.75, 1.0)}


def random_weight_models(folder: Path) -> tuple[Path, Path]:
    """Random-weight translator and segmenter bundles of the default configurations (cached)."""
    import torch

    from medgen.config import load_config
    from medgen.models.bundle import BundleSpec, save_bundle
    from medgen.pipelines.train_translator import export_translator
    from medgen.training.segmenter import SegmenterConfig, build_network, input_spec
    from medgen.training.translator import TranslatorConfig, build_networks

    tr, seg = folder / "translator", folder / "segmenter"
    torch.manual_seed(0)
    if not (tr / "medgen.json").exists():
        cfg = load_config(None, TranslatorConfig, default="translator/cyclegan_25d")
        nets = build_networks(cfg.model)
        generator = nets["g_mr2ct"]
        export_translator(tr, cfg, generator)
    if not (seg / "medgen.json").exists():
        cfg = load_config(None, SegmenterConfig, default="segmenter/ct_unet")
        names = {0: "background", **{i: f"organ_{i}" for i in range(1, 11)}}
        net, desc = build_network(cfg, len(names))
        save_bundle(seg, BundleSpec(kind="segmenter", network=desc, label_names=names,
                                    extra={"input": input_spec(cfg).to_dict()}), net)
    return tr, seg


def matmul_peak_gflops(dtype, budget_s: float = 1.0) -> float:
    """Best GFLOP/s of square matmuls of ``dtype`` on this process's threads (the peak to compare with)."""
    import torch
    best, n, spent = 0.0, 1024, 0.0
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    while spent < budget_s:
        t0 = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t0
        spent += dt
        best = max(best, 2 * n**3 / dt / 1e9)
    return best


class NetworkMeter:
    """Forward-pass seconds and input shapes of one network (hooks); FLOPs counted afterwards per shape."""

    def __init__(self, network):
        self.network, self.seconds, self.shapes, self._t = network, 0.0, [], 0.0
        self._hooks = [network.register_forward_pre_hook(self._pre), network.register_forward_hook(self._post)]

    def _pre(self, module, args):
        self.shapes.append(tuple(args[0].shape))
        self._t = time.perf_counter()

    def _post(self, module, args, output):
        self.seconds += time.perf_counter() - self._t

    def report(self, peak: float) -> dict:
        import torch
        from torch.utils.flop_counter import FlopCounterMode
        for hook in self._hooks:
            hook.remove()
        flops, cache = 0, {}
        with torch.no_grad():
            for shape in self.shapes:
                if shape not in cache:
                    with FlopCounterMode(display=False) as counter:
                        self.network(torch.zeros(shape))
                    cache[shape] = counter.get_total_flops()
                flops += cache[shape]
        rate = flops / max(self.seconds, 1e-9) / 1e9
        return {"forward_s": round(self.seconds, 2), "passes": len(self.shapes), "gflop": round(flops / 1e9, 1),
                "gflop_per_s": round(rate, 2), "matmul_peak_gflop_per_s": round(peak, 2),
                "fraction_of_peak": round(rate / max(peak, 1e-9), 3)}


def bf16_probe(translator, segmenter, shapes: dict) -> dict:
    """One batch of each network in bf16 autocast vs the bf16 matmul peak (for CPUs without native bf16)."""
    import torch
    peak = matmul_peak_gflops(torch.bfloat16, budget_s=0.5)
    out = {}
    for name, net, shape in (("translator", translator.network, shapes["translator"]),
                             ("segmenter", segmenter.network, shapes["segmenter"])):
        shape = (1, *shape[1:])
        meter = NetworkMeter(net)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            net(torch.zeros(shape))
        out[name] = {"input": list(shape), **meter.report(peak)}
    return out


def _plain_path() -> None:
    """Switch the chain's optimisations off in this process (the ``plain`` reference path)."""
    import medgen.inference.segment as segment
    import medgen.io.geometry as geometry
    geometry._separable = lambda *args, **kwargs: None
    segment.auto_batch_size = lambda patch_size: 2


def run_one(size: tuple[int, int, int], precision: str, work: Path, path: str = "medgen") -> dict:
    """Time one chain run (in this process) and report stage timings, network efficiency and peak RSS."""
    import numpy as np
    import torch

    from medgen.data.phantoms import make_phantom
    from medgen.io.volume import Volume
    from medgen.io.writers import write_volume
    from medgen.pipelines import segment_mr
    from medgen.pipelines.segment_mr import CaseOutputs, ChainOptions, segment_one

    tr, seg = random_weight_models(work / "models")
    mr_path = work / f"mr_{'x'.join(map(str, size))}.nii.gz"
    if not mr_path.exists():
        p = make_phantom(0, shape=size, spacing=SPACINGS.get(size, (1.0, 1.0, 1.0)))
        write_volume(Volume(p.mr.astype(np.float32), p.affine), mr_path)
    if path == "plain":
        _plain_path()
    out = work / f"out_{path}_{precision}_{'x'.join(map(str, size))}"
    out.mkdir(exist_ok=True)
    options = ChainOptions(translator=str(tr), segmenter=str(seg), device="cpu", precision=precision, overwrite=True)
    translator, segmenter = segment_mr._models(options)  # loaded (and cached) before the clock starts
    meters = {"translator": NetworkMeter(translator.network), "segmenter": NetworkMeter(segmenter.network)}
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    report = segment_one(mr_path, CaseOutputs(mask=out / "mask.nii.gz", labels_json=out / "mask.labels.json",
                                              sct=out / "sct.nii"), options)
    total = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stages = report.timings
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    peak = matmul_peak_gflops(dtype)
    shapes = {k: m.shapes[0] for k, m in meters.items()}
    networks = {k: m.report(peak) for k, m in meters.items()}
    result = {"size": "x".join(map(str, size)), "spacing_mm": list(SPACINGS.get(size, (1, 1, 1))), "path": path,
              "precision": precision, "seconds_per_volume": round(total, 2),
              "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
              "stage_share": {k: round(v / max(sum(stages.values()), 1e-9), 3) for k, v in stages.items()},
              "networks": networks, "peak_rss_mb": round(peak_mb, 1), "rss_before_mb": round(base_rss / 1024, 1),
              "torch_threads": torch.get_num_threads(), "outputs": str(out)}
    from medgen.runtime import cpu_supports_bf16
    if precision == "fp32" and not cpu_supports_bf16():
        result["bf16_probe"] = bf16_probe(translator, segmenter, shapes)
    return result


def compare_outputs(a: str, b: str) -> dict:
    """How far two runs' outputs differ: mask voxels and synthetic-CT HU."""
    import nibabel as nib
    import numpy as np
    ma, mb = (np.asarray(nib.load(f"{d}/mask.nii.gz").dataobj) for d in (a, b))
    sa, sb = (np.asarray(nib.load(f"{d}/sct.nii").dataobj, np.float32) for d in (a, b))
    return {"mask_voxels_differing": int((ma != mb).sum()), "mask_voxels": int(ma.size),
            "sct_max_abs_hu_diff": round(float(np.abs(sa - sb).max()), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["256x256x100", "512x512x300"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--paths", nargs="+", default=["medgen", "plain"], choices=["medgen", "plain"])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each (size, precision, path), alternating")
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "PRECISION", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="medgen-bench-seg-"))
    work.mkdir(parents=True, exist_ok=True)
    import torch
    torch.set_num_threads(args.threads)
    if args.one:
        size = tuple(int(s) for s in args.one[0].split("x"))
        print(json.dumps(run_one(size, args.one[1], work, args.one[2])))
        return 0
    random_weight_models(work / "models")
    from medgen.runtime import cpu_supports_bf16
    runs, summary = [], []
    for size in args.sizes:
        for precision in args.precisions:
            if precision == "bf16" and not cpu_supports_bf16():
                summary.append({"size": size, "precision": precision,
                                "skipped": "this CPU has no native bf16 (AVX512-BF16/AMX): bf16 is emulated, tens of "
                                           "times slower than fp32 (see the fp32 runs' bf16_probe); --precision auto "
                                           "picks fp32 here"})
                continue
            these = []
            for _ in range(args.repeats):
                for path in args.paths:
                    cmd = [sys.executable, __file__, "--one", size, precision, path, "--work", str(work),
                           "--threads", str(args.threads)]
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    if proc.returncode != 0:
                        these.append({"size": size, "precision": precision, "path": path,
                                      "error": proc.stderr.strip().splitlines()[-1:]})
                        continue
                    these.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            runs += these
            summary.append(_summarise(size, precision, these))
    print(json.dumps({"device": "cpu", "cpu_count": os.cpu_count(), "cpu_bf16": cpu_supports_bf16(),
                      "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
                      "translator": "translator/cyclegan_25d (random weights)",
                      "segmenter": "segmenter/ct_unet (random weights)", "summary": summary, "runs": runs}, indent=1))
    return 0


def _summarise(size: str, precision: str, runs: list[dict]) -> dict:
    """Min / median / max seconds per path, the medgen/plain speed-up and the output differences."""
    import statistics
    out: dict = {"size": size, "precision": precision}
    ok = [r for r in runs if "error" not in r]
    for path in sorted({r["path"] for r in ok}):
        secs = [r["seconds_per_volume"] for r in ok if r["path"] == path]
        out[path] = {"seconds_min": min(secs), "seconds_median": statistics.median(secs), "seconds_max": max(secs),
                     "peak_rss_mb_max": max(r["peak_rss_mb"] for r in ok if r["path"] == path)}
    if "medgen" in out and "plain" in out:
        out["speedup_median"] = round(out["plain"]["seconds_median"] / out["medgen"]["seconds_median"], 2)
        first = {p: next(r["outputs"] for r in ok if r["path"] == p) for p in ("medgen", "plain")}
        out["outputs_vs_plain"] = compare_outputs(first["medgen"], first["plain"])
    return out


if __name__ == "__main__":
    sys.exit(main())
