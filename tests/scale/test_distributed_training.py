"""Trainers under ``torchrun``: 2 CPU processes (gloo) keep identical replicas, rank 0 alone writes.

One real 2-process translator run (``python -m torch.distributed.run --nproc_per_node 2 -m medgen
train translator ...``) with ``MEDGEN_DEBUG_PARAM_DUMP`` so each rank saves its final state; then a
single-process ``--resume`` of that run. Cheap in-process checks cover what rank > 0 must not do.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch

from medgen.cli import main
from medgen import distributed
from medgen.training.checkpoint import load_latest_checkpoint
from medgen.training.loop import LoopSettings, flatten_tensors, read_history, run_training

# A translator small enough for a few CPU steps per second (phantoms at 4 x 4 x 6 mm).
TINY_TRANSLATOR = ["-c", "translator/cyclegan_2d", "--device", "cpu",
                   "--set", "model.features=4", "--set", "model.n_blocks=1", "--set", "model.disc_features=4",
                   "--set", "data.patch_size=[32,32]", "--set", "preprocess.mr.spacing=[4,4,6]",
                   "--set", "preprocess.ct.spacing=[4,4,6]", "--set", "train.val_samples=2",
                   "--set", "train.precision=fp32", "--set", "train.log_every=1",
                   "--set", "train.validate_every=1000", "--set", "train.checkpoint_every=2"]

# state entries identical on every replica (weights, optimisers, schedulers) vs rank-local ones
REPLICATED = ("nets.", "opt_g.", "opt_d.", "sched_g.", "sched_d.")
RANK_LOCAL = ("mr_sampler.", "ct_sampler.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_phantoms(folder: Path, n: int = 2) -> tuple[list[str], list[str]]:
    """``n`` tiny phantom MR/CT NIfTI pairs (unpaired use: MR i and CT i come from different seeds)."""
    from medgen.data.phantoms import make_phantom
    folder.mkdir(parents=True, exist_ok=True)
    mrs, cts = [], []
    for i in range(n):
        p = make_phantom(i, shape=(48, 48, 16), spacing=(4.0, 4.0, 6.0))
        q = make_phantom(100 + i, shape=(48, 48, 16), spacing=(4.0, 4.0, 6.0))
        nib.save(nib.Nifti1Image(p.mr, p.affine), folder / f"mr{i}.nii.gz")
        nib.save(nib.Nifti1Image(q.ct, q.affine), folder / f"ct{i}.nii.gz")
        mrs.append(str(folder / f"mr{i}.nii.gz"))
        cts.append(str(folder / f"ct{i}.nii.gz"))
    return mrs, cts


def subprocess_env(tmp_dir: Path, **extra: str) -> dict[str, str]:
    """The launcher's environment: 1 thread per rank, no inherited rank variables, and its temp
    files (torchrun's ``torchelastic_*`` folders) under the test's ``tmp_dir``, not /tmp."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", TMPDIR=str(tmp_dir),
               **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _sub(state: dict, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


@pytest.mark.slow
def test_translator_torchrun_two_ranks_stay_identical_and_resume(tmp_path, one_thread):
    mrs, cts = write_phantoms(tmp_path / "data")
    run_dir, dump = tmp_path / "run", tmp_path / "dump"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "medgen", "train", "translator", *TINY_TRANSLATOR,
           "--mr", *mrs, "--ct", *cts, "-o", str(run_dir), "--max-steps", "3", "-q"]
    env = subprocess_env(tmp_path / "tmp", MEDGEN_DEBUG_PARAM_DUMP=str(dump))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [torch.load(dump / f"rank_{r}.pt", weights_only=True) for r in (0, 1)]
    assert [d["world_size"] for d in ranks] == [2, 2] and [d["step"] for d in ranks] == [3, 3]
    rep0, rep1 = (_sub(d["state"], REPLICATED) for d in ranks)
    assert rep0.keys() == rep1.keys() and any(k.startswith("nets.g_mr2ct.") for k in rep0)
    for key in rep0:
        assert torch.allclose(rep0[key].float(), rep1[key].float(), atol=1e-6, rtol=0), f"{key} differs between ranks"
    # the optimisers really took 3 steps on both ranks
    steps = [v for k, v in rep0.items() if k.startswith("opt_g.state.") and k.endswith(".step")]
    assert steps and all(float(s) == 3 for s in steps)
    # ... while each rank drew its own data (sharding by per-rank sampler seeds)
    local0, local1 = (_sub(d["state"], RANK_LOCAL) for d in ranks)
    assert local0 and any(not torch.equal(local0[k], local1[k]) for k in local0)

    # rank 0 alone wrote: one checkpoint per saved step (with both ranks' local state), one MLflow run
    ckpt = load_latest_checkpoint(run_dir / "checkpoints")
    assert ckpt["step"] == 3 and len(ckpt["ranks"]) == 2
    saved = flatten_tensors(ckpt["task"])
    for key, value in rep0.items():
        assert torch.equal(saved[key], value), f"checkpoint {key} is not rank 0's"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest.json", "step_00000002.pt",
                                                                            "step_00000003.pt"]
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    train_rows = [r for r in read_history(run_dir) if r["phase"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]  # one row per step, not one per rank

    # single-process resume of the 2-process run: continues at step 4 with rank 0's local state
    code = main(["train", "translator", *TINY_TRANSLATOR, "--mr", *mrs, "--ct", *cts, "-o", str(run_dir),
                 "--max-steps", "5", "--resume", "--no-mlflow", "-q"])
    assert code == 0
    resumed = load_latest_checkpoint(run_dir / "checkpoints")
    assert resumed["step"] == 5 and len(resumed["ranks"]) == 1
    assert [r["step"] for r in read_history(run_dir) if r["phase"] == "train"] == [1, 2, 3, 4, 5]
    assert any(not torch.equal(flatten_tensors(resumed["task"])[k], v) for k, v in rep0.items() if k.startswith("nets."))
    assert (run_dir / "bundle").is_dir()


def _label_pairs(folder: Path) -> tuple[list[str], list[str], Path]:
    import json
    from medgen.data.phantoms import make_phantom
    from medgen.io.volume import Volume
    from medgen.io.writers import write_volume
    images, labels = [], []
    for s in (0, 1):
        p = make_phantom(s, shape=(32, 32, 16), spacing=(6.0, 6.0, 8.0))
        images.append(str(write_volume(Volume(p.ct, p.affine), folder / f"c{s}_ct.nii.gz")))
        labels.append(str(write_volume(Volume(p.labels, p.affine), folder / f"c{s}_seg.nii.gz")))
    names = folder / "names.json"
    names.write_text(json.dumps({str(k): v for k, v in p.label_names.items()}))
    return images, labels, names


TINY_OTHERS = {
    "segmenter": ["--include", "liver,spleen", "--set", "data.patch_size=[16,16,16]", "--set", "network.channels=[4,8]",
                  "--set", "network.strides=[2]", "--set", "data.spacing=null"],
    "generator": ["--set", "data.patch_size=[16,16,16]", "--set", "network.channels=[4,8]",
                  "--set", "network.spade_hidden=4", "--set", "network.noise_channels=1",
                  "--set", "discriminator.channels=4", "--set", "discriminator.num_layers=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["segmenter", "generator"])
def test_segmenter_and_generator_under_torchrun_keep_identical_replicas(tmp_path, trainer):
    images, labels, names = _label_pairs(tmp_path)
    run_dir, dump = tmp_path / "run", tmp_path / "dump"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "medgen", "train", trainer, "--images", *images, "--labels",
           *labels, "--label-names", str(names), "-o", str(run_dir), "--max-steps", "2", "--device", "cpu", "-q",
           "--set", "train.checkpoint_every=2", "--set", "train.validate_every=100", *TINY_OTHERS[trainer]]
    env = subprocess_env(tmp_path / "tmp", MEDGEN_DEBUG_PARAM_DUMP=str(dump))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    local = ("gen", "sampler")
    a, b = (torch.load(dump / f"rank_{r}.pt", weights_only=True)["state"] for r in (0, 1))
    shared = [k for k in a if not k.startswith(local)]
    assert a.keys() == b.keys() and sum(k.endswith(("weight", "bias")) for k in shared) >= 3 and len(shared) > 10
    for key in shared:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6, rtol=0), f"{key} differs between ranks"
    ckpt = load_latest_checkpoint(run_dir / "checkpoints")
    assert ckpt["step"] == 2 and len(ckpt["ranks"]) == 2
    assert ckpt["ranks"][0]["task"] != {} and ckpt["ranks"][0]["task"].keys() == ckpt["ranks"][1]["task"].keys()
    assert [r["step"] for r in read_history(run_dir) if r["phase"] == "train"] == [2]  # log_every default > 2
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1


class _Task:
    """A tiny task with one rank-local entry (its sampler generator)."""

    rank_local_state_keys = ("gen",)

    def __init__(self, seed: int = 0):
        torch.manual_seed(0)
        self.net = torch.nn.Linear(3, 1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)
        self.gen = torch.Generator().manual_seed(seed)

    def train_step(self, step):
        x = torch.randn(4, 3, generator=self.gen)
        loss = self.net(x).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def validate(self, step):
        return {"w": float(self.net.weight.sum())}

    def state_dict(self):
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])


def test_rank_above_zero_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    run_training(_Task(), tmp_path / "run", LoopSettings(max_steps=3, checkpoint_every=1, log_every=1))
    assert not (tmp_path / "run").exists()  # no checkpoints, no metrics.jsonl


def test_resume_gives_each_rank_its_own_local_state(tmp_path, monkeypatch):
    """A checkpoint of a 2-rank job: rank 1 takes back its own sampler; a new rank 2 keeps a fresh one."""
    from medgen.runtime import rng_state
    from medgen.training.checkpoint import save_checkpoint
    task0, task1 = _Task(seed=1), _Task(seed=2)
    for t in (task0, task1):
        t.train_step(1)
    state = {"task": task0.state_dict(), "step": 1, "rng": rng_state(),
             "ranks": [{"rng": rng_state(), "task": {"gen": t.gen.get_state()}} for t in (task0, task1)]}
    save_checkpoint(state, tmp_path / "run" / "checkpoints", 1)
    seen = {}
    for r in (0, 1, 2):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "is_main_process", lambda: True)
        task = _Task(seed=10 + r)
        fresh = task.gen.get_state()
        run_training(task, tmp_path / "run", LoopSettings(max_steps=1), resume=True)
        seen[r] = (task.gen.get_state(), fresh)
        assert torch.equal(task.net.weight, task0.net.weight)  # replicated state from the checkpoint
    assert torch.equal(seen[0][0], task0.gen.get_state())
    assert torch.equal(seen[1][0], task1.gen.get_state())
    assert torch.equal(seen[2][0], seen[2][1])  # no saved state for rank 2: its own fresh sampler
