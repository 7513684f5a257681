"""Scale benchmark: preprocessing with 1 and 2 workers, training with 1 and 2 processes; prints JSON.

What it measures (each as a separate ``medgen`` command, exactly as a user runs it):

* ``medgen preprocess`` of N phantom CTs (default 8 of 128 x 128 x 64 at 2 x 2 x 3 mm) with
  ``--workers 1`` and ``--workers 2`` (a process pool, ``--executor local``, and threads,
  ``--executor threads``): cases/s over the pipeline's own time (from its summary line) and over
  the whole command (imports and pool start included); with ``--segment-mr`` the same for
  ``medgen segment-mr`` of the N phantom MRs (random-weight default models);
* ``torchrun --nproc_per_node P -m medgen train translator`` (2D CycleGAN, small config) with
  P = 1 and 2: steps/s from the loop's own ``metrics.jsonl`` (start-up excluded) and samples/s
  (steps/s x P x batch size: each rank trains on its own batch);
* the peak resident memory of each command: the largest single process (``getrusage`` of the
  waited-for children, exact) and the whole process tree (sum over ``/proc`` sampled every 50 ms).

Every process gets ``OMP_NUM_THREADS = cores // parallelism`` so 2 workers or 2 ranks do not
oversubscribe the cores. On a shared or loaded machine the numbers are noisy; run it twice.

Usage::

    python bench/scale.py                       # defaults (a few minutes on 2 cores)
    python bench/scale.py --cases 4 --steps 10  # quicker
    python bench/scale.py --cases 16 --skip-training --dask   # local pool vs Dask (2 workers each)
    python bench/scale.py --skip-training --segment-mr        # batches only: preprocess and segment-mr
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants, from /proc (0 where unreadable)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    page = os.sysconf("SC_PAGE_SIZE")
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_measured(cmd: list[str], env: dict[str, str], timeout: float = 1800) -> dict:
    """Run ``cmd``; return wall seconds, exit code, stderr and peak RSS (largest process, whole tree)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_bytes(proc.pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=timeout)
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux, max over all children
    return {"wall_s": wall, "returncode": proc.returncode, "stdout": out, "stderr": err,
            "peak_rss_tree_mb": round(peak[0] / 2**20, 1),
            # ru_maxrss of children is a running maximum: exact when this command set a new one
            "peak_rss_largest_process_mb": round(largest / 1024, 1) if largest > before else None}


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    for key in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MEDGEN_DEBUG_PARAM_DUMP"):
        env.pop(key, None)
    return env


def write_phantoms(folder: Path, n: int, shape: tuple[int, int, int]) -> list[Path]:
    import nibabel as nib

    from medgen.data.phantoms import make_phantom
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = make_phantom(100 + i, shape=shape, spacing=(2.0, 2.0, 3.0))
        for kind, array in (("ct", p.ct), ("mr", p.mr)):
            path = folder / kind / f"case{i:03d}.nii.gz"
            path.parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(array, p.affine), str(path))
            if kind == "ct":
                paths.append(path)
    return paths


def bench_preprocess(data: Path, work: Path, n: int, workers: int, cores: int, threads: int | None,
                     executor: str = "local") -> dict:
    return _preprocess(data, work / f"prep_{executor}_w{workers}", executor, workers,
                       _env(threads or max(1, cores // workers)), n, label=executor)


def _preprocess(data: Path, out: Path, executor: str, workers: int, env: dict, n: int, *, label: str) -> dict:
    """One measured ``medgen preprocess`` of the phantom CTs; pipeline seconds from its summary line."""
    cmd = [sys.executable, "-m", "medgen", "preprocess", str(data / "ct"), "-o", str(out), "--modality", "ct",
           "--workers", str(workers), "--executor", executor, "--no-mlflow"]
    r = run_measured(cmd, env)
    if r["returncode"] != 0:
        raise RuntimeError(f"preprocess ({label}) failed: {r['stderr'][-2000:]}")
    match = re.search(r"preprocessed (\d+), .* in ([\d.]+) s", r["stderr"])
    done, seconds = (int(match.group(1)), float(match.group(2))) if match else (n, r["wall_s"])
    return _batch_row(label, workers, done, seconds, r)


def bench_segment_mr(data: Path, work: Path, n: int, workers: int, cores: int, threads: int | None,
                     executor: str = "local") -> dict:
    """``medgen segment-mr`` of the N phantom MRs with random-weight default models (speed does not
    depend on the weights); pipeline seconds from its summary JSON."""
    translator, segmenter = _models(work / "models")
    out = work / f"segmr_{executor}_w{workers}"
    cmd = [sys.executable, "-m", "medgen", "segment-mr", "-q", "-i", str(data / "mr"), "-o", str(out),
           "--translator", str(translator), "--segmenter", str(segmenter), "--device", "cpu", "--precision", "fp32",
           "--workers", str(workers), "--executor", executor]
    r = run_measured(cmd, _env(threads or max(1, cores // workers)))
    if r["returncode"] != 0:
        raise RuntimeError(f"segment-mr failed: {r['stderr'][-2000:]}")
    summary = json.loads((out / "segment_mr_summary.json").read_text())
    return _batch_row(executor, workers, summary["ok"], summary["seconds"], r)


def _models(folder: Path) -> tuple[Path, Path]:
    """The random-weight default translator and segmenter bundles of ``bench/segment_mr.py``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from segment_mr import random_weight_models
    return random_weight_models(folder)


def _batch_row(executor: str, workers: int, done: int, seconds: float, r: dict) -> dict:
    return {"executor": executor, "workers": workers, "cases": done, "pipeline_s": round(seconds, 2),
            "command_s": round(r["wall_s"], 2), "cases_per_s": round(done / seconds, 3),
            "cases_per_s_with_startup": round(done / r["wall_s"], 3),
            "peak_rss_largest_process_mb": r["peak_rss_largest_process_mb"],
            "peak_rss_tree_mb": r["peak_rss_tree_mb"]}


def _speedups(rows: list[dict]) -> dict:
    """cases/s (with start-up) of each executor and worker count over the one-worker run."""
    base = next(r for r in rows if r["workers"] == 1)
    return {f"{r['executor']}_w{r['workers']}": round(r["cases_per_s_with_startup"] / base["cases_per_s_with_startup"], 2)
            for r in rows if r is not base}


def bench_preprocess_dask(data: Path, work: Path, n: int, workers: int, cores: int, threads: int | None) -> dict:
    """``medgen preprocess --executor dask://...`` on a LocalCluster of ``workers`` processes started here.

    The cluster is started before the clock (as a cluster already running would be); its workers
    import medgen on their first case, so that cost is inside the measured command.
    """
    import dask
    from distributed import LocalCluster
    per_worker = threads or max(1, cores // workers)
    os.environ.update(OMP_NUM_THREADS=str(per_worker), MKL_NUM_THREADS=str(per_worker))  # inherited by the workers
    with dask.config.set({"distributed.worker.daemon": False}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None) as cluster:
        address = "dask://" + cluster.scheduler_address.removeprefix("tcp://")
        return _preprocess(data, work / f"prep_dask_w{workers}", address, workers, _env(per_worker), n, label="dask")


TRANSLATOR = ["-c", "translator/cyclegan_2d", "--device", "cpu", "--no-mlflow", "-q",
              "--set", "model.features=16", "--set", "model.n_blocks=3", "--set", "model.disc_features=16",
              "--set", "data.patch_size=[64,64]", "--set", "data.batch_size=2", "--set", "train.precision=fp32",
              "--set", "train.val_samples=2", "--set", "train.log_every=5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_training(data: Path, work: Path, procs: int, steps: int, cores: int, threads: int | None) -> dict:
    run_dir = work / f"train_p{procs}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), "-m", "medgen", "train", "translator", *TRANSLATOR,
           "--set", f"train.validate_every={steps}", "--set", f"train.checkpoint_every={steps}",
           "--mr", str(data / "mr"), "--ct", str(data / "ct"), "-o", str(run_dir), "--max-steps", str(steps)]
    r = run_measured(cmd, _env(threads or max(1, cores // procs)))
    if r["returncode"] != 0:
        raise RuntimeError(f"training failed: {r['stderr'][-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row.get("phase") == "train"]
    steps_per_s = train[-1]["steps_per_s"]
    return {"processes": procs, "steps": steps, "batch_per_rank": 2, "steps_per_s": round(steps_per_s, 3),
            "samples_per_s": round(steps_per_s * procs * 2, 3), "command_s": round(r["wall_s"], 2),
            "peak_rss_largest_process_mb": r["peak_rss_largest_process_mb"],
            "peak_rss_tree_mb": r["peak_rss_tree_mb"]}


def _batch_runs(bench, data: Path, work: Path, args, cores: int) -> list[dict]:
    """One run per worker count (and per executor beyond one worker), interleaved in that order."""
    return [bench(data, work, args.cases, w, cores, args.threads, executor)
            for w in args.parallel for executor in (["local"] if w == 1 else args.executors)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8, help="phantoms to preprocess")
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64], help="phantom grid")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2], help="workers / processes to compare")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch/OpenMP threads per process (default: cores // workers or processes)")
    parser.add_argument("--executors", nargs="+", default=["local", "threads"], choices=["local", "threads"],
                        help="local executors to compare at each worker count > 1 (processes, threads)")
    parser.add_argument("--segment-mr", action="store_true",
                        help="also time medgen segment-mr of the phantom MRs (random-weight default models)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--dask", action="store_true",
                        help="also preprocess with --executor dask:// on a local 2-worker cluster (vs the local pool)")
    parser.add_argument("--keep", metavar="DIR", default=None, help="work in DIR and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="medgen-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    t0 = time.perf_counter()
    write_phantoms(data, args.cases, tuple(args.shape))
    result = {"machine": {"cores": cores, "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
                          "threads_per_process": args.threads or "cores // parallelism",
                          "python": sys.version.split()[0]},
              "data": {"cases": args.cases, "shape": args.shape, "spacing_mm": [2.0, 2.0, 3.0],
                       "write_s": round(time.perf_counter() - t0, 2)},
              "preprocess": _batch_runs(bench_preprocess, data, work, args, cores)}
    if args.segment_mr:
        result["segment_mr"] = _batch_runs(bench_segment_mr, data, work, args, cores)
    if args.dask:
        result["preprocess_dask"] = [bench_preprocess_dask(data, work, args.cases, w, cores, args.threads)
                                     for w in args.parallel if w > 1]
        pool = {r["workers"]: r for r in result["preprocess"] if r["executor"] == "local"}
        result["dask_vs_local_pool"] = {str(r["workers"]): round(r["cases_per_s_with_startup"]
                                                                 / pool[r["workers"]]["cases_per_s_with_startup"], 2)
                                        for r in result["preprocess_dask"] if r["workers"] in pool}
    if not args.skip_training:
        result["training"] = [bench_training(data, work, p, args.steps, cores, args.threads) for p in args.parallel]
    base_t = result.get("training", [None])[0]
    result["speedup_with_startup"] = {
        **{command: _speedups(result[command]) for command in ("preprocess", "segment_mr") if command in result},
        **({"training_samples_per_s": {str(r["processes"]): round(r["samples_per_s"] / base_t["samples_per_s"], 2)
                                       for r in result["training"]}} if base_t else {}),
    }
    result["machine"]["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=1))
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
