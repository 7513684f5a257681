"""Nothing lost: ``kill -9`` (or a crash) mid-run, then the same command with ``--resume``.

* training: a translator run killed with SIGKILL once a checkpoint exists resumes from that
  checkpoint, and its final weights equal an uninterrupted run's (deterministic: same seed, CPU,
  same thread count); the segmenter, crashed right after a checkpoint, resumes exactly too
  (the generator's exact resume is tested in ``tests/training/test_generator_training.py``);
* batch ``segment-mr``: killed while a scan's outputs are being written, the same command
  finishes, skips finished scans and leaves no partial or temporary files (the preprocessing
  equivalent is ``tests/pipelines/test_preprocess_pipeline.py::test_kill_9_then_rerun...``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest
import torch
import yaml

from medgen.cli import main
from medgen.training.checkpoint import load_latest_checkpoint
from medgen.training.loop import read_history

TINY_TRANSLATOR = ["-c", "translator/cyclegan_2d", "--device", "cpu", "--no-mlflow",
                   "--set", "model.features=4", "--set", "model.n_blocks=1", "--set", "model.disc_features=4",
                   "--set", "data.patch_size=[32,32]", "--set", "preprocess.mr.spacing=[4,4,6]",
                   "--set", "preprocess.ct.spacing=[4,4,6]", "--set", "train.val_samples=2",
                   "--set", "train.precision=fp32", "--set", "train.log_every=1",
                   "--set", "train.validate_every=1000", "--set", "train.checkpoint_every=2"]
STEPS = 10


def _phantom_pairs(folder: Path, n: int = 2) -> tuple[list[str], list[str]]:
    from medgen.data.phantoms import make_phantom
    folder.mkdir(parents=True, exist_ok=True)
    mrs, cts = [], []
    for i in range(n):
        p = make_phantom(i, shape=(48, 48, 16), spacing=(4.0, 4.0, 6.0))
        q = make_phantom(50 + i, shape=(48, 48, 16), spacing=(4.0, 4.0, 6.0))
        nib.save(nib.Nifti1Image(p.mr, p.affine), folder / f"mr{i}.nii.gz")
        nib.save(nib.Nifti1Image(q.ct, q.affine), folder / f"ct{i}.nii.gz")
        mrs.append(str(folder / f"mr{i}.nii.gz"))
        cts.append(str(folder / f"ct{i}.nii.gz"))
    return mrs, cts


def _env() -> dict[str, str]:
    threads = str(torch.get_num_threads())  # same thread count as this process: same float results
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    for key in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MEDGEN_DEBUG_PARAM_DUMP"):
        env.pop(key, None)
    return env


def _checkpointed_step(ckpt_dir: Path) -> int:
    try:
        return max(e["step"] for e in json.loads((ckpt_dir / "latest.json").read_text()))
    except (OSError, ValueError):
        return 0


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 240.0) -> bool:
    """SIGKILL ``proc`` as soon as ``condition()`` holds; False if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return True
        time.sleep(0.01)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)
    return False


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_latest_checkpoint(run_dir / "checkpoints")
    nets = state["task"].get("nets") or {"net": state["task"]["net"]}
    return {f"{n}.{k}": v for n, sd in nets.items() for k, v in sd.items()}


@pytest.mark.slow
def test_translator_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path, one_thread):
    mrs, cts = _phantom_pairs(tmp_path / "data")
    args = ["train", "translator", *TINY_TRANSLATOR, "--mr", *mrs, "--ct", *cts, "--max-steps", str(STEPS), "-q"]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "medgen", *args, "-o", str(killed_dir)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = killed_dir / "checkpoints"
    killed = _kill_when(proc, lambda: 2 <= _checkpointed_step(ckpts) <= STEPS - 4)
    assert killed, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    at_kill = _checkpointed_step(ckpts)
    assert load_latest_checkpoint(ckpts)["step"] == at_kill  # the listed checkpoint is complete and verified

    assert main([*args, "-o", str(killed_dir), "--resume"]) == 0
    straight_dir = tmp_path / "straight"
    assert main([*args, "-o", str(straight_dir)]) == 0

    steps = [r["step"] for r in read_history(killed_dir) if r["phase"] == "train"]
    assert steps == list(range(1, STEPS + 1))  # rows past the checkpoint were trimmed and redone once
    a, b = _weights(straight_dir), _weights(killed_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    assert not [p for p in killed_dir.rglob("*") if ".tmp" in p.name]
    assert (killed_dir / "bundle" / "models" / "model.pt").exists()


@pytest.mark.slow
def test_segmenter_crashed_after_a_checkpoint_resumes_exactly(tmp_path, monkeypatch, one_thread):
    """A crash right after the step-2 checkpoint (the LR schedule spans all 4 steps both times)."""
    from medgen.data.phantoms import make_phantom
    from medgen.io.volume import Volume
    from medgen.io.writers import write_volume
    from medgen.training import loop

    imgs, labs = [], []
    for s in (0, 1):
        p = make_phantom(s, shape=(32, 32, 16), spacing=(6.0, 6.0, 8.0))
        imgs.append(str(write_volume(Volume(p.ct, p.affine), tmp_path / f"c{s}_ct.nii.gz")))
        labs.append(str(write_volume(Volume(p.labels, p.affine), tmp_path / f"c{s}_seg.nii.gz")))
    names = tmp_path / "names.json"
    names.write_text(json.dumps({str(k): v for k, v in p.label_names.items()}))
    args = ["train", "segmenter", "--images", *imgs, "--labels", *labs, "--label-names", str(names),
            "--include", "liver,spleen", "--no-mlflow", "--device", "cpu", "--max-steps", "4", "-q",
            "--set", "data.patch_size=[16,16,16]", "--set", "network.channels=[4,8]", "--set", "network.strides=[2]",
            "--set", "data.spacing=null", "--set", "train.checkpoint_every=2", "--set", "train.validate_every=100",
            "--set", "train.log_every=1"]
    assert main([*args, "-o", str(tmp_path / "straight")]) == 0

    real_save = loop.save_checkpoint

    def save_then_crash(state, folder, step, **kwargs):
        path = real_save(state, folder, step, **kwargs)
        if step == 2:
            raise KeyboardInterrupt  # the process dies right after writing the checkpoint
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    assert main([*args, "-o", str(tmp_path / "crashed")]) == 130
    assert not (tmp_path / "crashed" / "bundle").exists()  # no export from an unfinished run
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    torch.manual_seed(1234)  # fresh global state: everything must come from the checkpoint
    assert main([*args, "-o", str(tmp_path / "crashed"), "--resume"]) == 0
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)


class _Threshold(torch.nn.Module):
    """An oracle 'segmenter': class 1 where the scaled input is above 0."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x * 50.0], dim=1)


@pytest.mark.slow
def test_segment_mr_batch_killed_mid_case_reruns_to_completion(tmp_path, one_thread):
    from medgen.data.phantoms import make_phantom
    from medgen.io.volume import Volume
    from medgen.io.writers import write_volume

    scans = tmp_path / "scans"
    for i in range(5):
        p = make_phantom(i, shape=(40, 40, 16), spacing=(4.0, 4.0, 6.0))
        write_volume(Volume(p.mr, p.affine), scans / f"scan{i}.nii.gz")
    model = tmp_path / "oracle.ts"
    torch.jit.script(_Threshold()).save(str(model))
    Path(f"{model}.yaml").write_text(yaml.safe_dump({"spacing": None, "hu_window": [-1000, 1000],
                                                     "patch_size": [16, 16, 16],
                                                     "label_names": {0: "background", 1: "bright"}}))
    out = tmp_path / "masks"
    args = ["segment-mr", "-q", "-i", str(scans), "-o", str(out), "--translator", "none", "--segmenter", str(model),
            "--qc", "--save-sct", "--device", "cpu", "--precision", "fp32"]

    def mid_case() -> bool:
        """A scan's first output exists but its completion marker (labels JSON) does not yet."""
        done = {p.name.split(".")[0] for p in out.glob("*.labels.json")} if out.is_dir() else set()
        started = {p.name[: -len("_sct.nii.gz")] for p in out.glob("*_sct.nii.gz")} if out.is_dir() else set()
        return bool(done) and bool(started - done)

    proc = subprocess.Popen([sys.executable, "-m", "medgen", *args], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert _kill_when(proc, mid_case), proc.stderr.read().decode()[-2000:]
    finished = {p.name.split(".")[0]: p.with_name(p.name.replace(".labels.json", ".nii.gz")).stat().st_mtime_ns
                for p in out.glob("*.labels.json")}
    assert 1 <= len(finished) < 5

    assert main(args) == 0  # same command: the interrupted scan is redone, finished ones skipped
    summary = json.loads((out / "segment_mr_summary.json").read_text())
    status = {c["case_id"]: c["status"] for c in summary["cases"]}
    assert status == {f"scan{i}": "skipped" if f"scan{i}" in finished else "ok" for i in range(5)}
    assert {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in finished} == finished
    for i in range(5):
        for suffix in (".nii.gz", ".labels.json", "_sct.nii.gz", "_qc.png"):
            assert (out / f"scan{i}{suffix}").is_file()
    from medgen.io.outdir import LOCK_NAME
    from medgen.io.ownership import LEDGER_NAME
    assert not [p for p in out.iterdir() if ".tmp" in p.name or p.name.startswith(".")
                and p.name not in (LEDGER_NAME, LOCK_NAME)]  # medgen's ledger and folder lock stay
