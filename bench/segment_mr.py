"""Benchmark of ``medgen segment-mr``: seconds per volume, peak memory and each stage's share. Prints JSON.

Models are the shipped default configurations (translator ``translator/cyclegan_25d``,
segmenter ``segmenter/ct_unet``) with random weights: speed and memory do not depend on the
weights. Each (size, precision) runs in its own subprocess so peak memory (max RSS) is that
run's alone. MRs are phantoms at 256x256x100 (1.5x1.5x3 mm) and 512x512x300 (0.75x0.75x1 mm).

Usage::

    python bench/segment_mr.py [--sizes 256x256x100 512x512x300] [--precisions fp32 bf16] [--threads 2]
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


def _models(folder: Path) -> tuple[Path, Path]:
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


def run_one(size: tuple[int, int, int], precision: str, work: Path) -> dict:
    """Time one chain run (in this process) and report stage timings and peak RSS."""
    import numpy as np

    from medgen.data.phantoms import make_phantom
    from medgen.io.volume import Volume
    from medgen.io.writers import write_volume
    from medgen.pipelines.segment_mr import CaseOutputs, ChainOptions, segment_one

    tr, seg = _models(work / "models")
    mr_path = work / f"mr_{'x'.join(map(str, size))}.nii.gz"
    if not mr_path.exists():
        p = make_phantom(0, shape=size, spacing=SPACINGS.get(size, (1.0, 1.0, 1.0)))
        write_volume(Volume(p.mr.astype(np.float32), p.affine), mr_path)
    out = work / f"out_{precision}_{'x'.join(map(str, size))}"
    out.mkdir(exist_ok=True)
    options = ChainOptions(translator=str(tr), segmenter=str(seg), device="cpu", precision=precision, overwrite=True)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    report = segment_one(mr_path, CaseOutputs(mask=out / "mask.nii.gz", labels_json=out / "mask.labels.json"),
                         options)
    total = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stages = report.timings
    return {"size": "x".join(map(str, size)), "spacing_mm": list(SPACINGS.get(size, (1, 1, 1))),
            "precision": precision, "seconds_per_volume": round(total, 2),
            "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
            "stage_share": {k: round(v / max(sum(stages.values()), 1e-9), 3) for k, v in stages.items()},
            "peak_rss_mb": round(peak_mb, 1), "rss_before_mb": round(base_rss / 1024, 1),
            "torch_threads": __import__("torch").get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["256x256x100", "512x512x300"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="medgen-bench-seg-"))
    work.mkdir(parents=True, exist_ok=True)
    import torch
    torch.set_num_threads(args.threads)
    if args.one:
        size = tuple(int(s) for s in args.one[0].split("x"))
        print(json.dumps(run_one(size, args.one[1], work)))
        return 0
    _models(work / "models")
    runs = []
    for size in args.sizes:
        for precision in args.precisions:
            cmd = [sys.executable, __file__, "--one", size, precision, "--work", str(work), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                runs.append({"size": size, "precision": precision, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    from medgen.runtime import cpu_supports_bf16
    print(json.dumps({"device": "cpu", "cpu_count": os.cpu_count(), "cpu_bf16": cpu_supports_bf16(),
                      "translator": "translator/cyclegan_25d (random weights)",
                      "segmenter": "segmenter/ct_unet (random weights)", "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
