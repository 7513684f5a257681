"""The shared training loop: checkpoints are verified, resume continues exactly."""

import json

import pytest
import torch

from medgen.errors import OutputError
from medgen.training.checkpoint import latest_checkpoint_step, load_latest_checkpoint, save_checkpoint
from medgen.training.loop import LoopSettings, read_history, run_training


class TinyTask:
    """A seeded regression task whose data sampling depends on a generator kept in the state."""

    def __init__(self):
        torch.manual_seed(0)
        self.net = torch.nn.Linear(4, 1)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=0.05)
        self.gen = torch.Generator().manual_seed(1)

    def train_step(self, step):
        x = torch.randn(8, 4, generator=self.gen)
        y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(8, 1)  # global RNG: restored by the loop
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def validate(self, step):
        return {"weight_sum": float(self.net.weight.sum())}

    def state_dict(self):
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])


def test_resume_equals_uninterrupted(tmp_path):
    settings = LoopSettings(max_steps=12, checkpoint_every=4, validate_every=6, log_every=2)
    straight = TinyTask()
    run_training(straight, tmp_path / "a", settings)

    first = TinyTask()
    run_training(first, tmp_path / "b", LoopSettings(max_steps=8, checkpoint_every=4, validate_every=6, log_every=2))
    resumed = TinyTask()  # fresh process state: everything must come from the checkpoint
    torch.manual_seed(123)
    run_training(resumed, tmp_path / "b", settings, resume=True)
    for p, q in zip(straight.net.parameters(), resumed.net.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    steps = [r["step"] for r in read_history(tmp_path / "b") if r["phase"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 12


def test_existing_run_needs_resume(tmp_path):
    run_training(TinyTask(), tmp_path, LoopSettings(max_steps=2, checkpoint_every=1))
    with pytest.raises(OutputError, match="--resume"):
        run_training(TinyTask(), tmp_path, LoopSettings(max_steps=2, checkpoint_every=1))


def test_latest_checkpoint_step_reads_the_index(tmp_path):
    assert latest_checkpoint_step(tmp_path / "missing") == 0
    save_checkpoint({"step": 3}, tmp_path, 3)
    save_checkpoint({"step": 5}, tmp_path, 5)
    assert latest_checkpoint_step(tmp_path) == 5


def test_corrupt_checkpoint_is_skipped(tmp_path):
    save_checkpoint({"step": 1, "x": torch.ones(2)}, tmp_path, 1)
    save_checkpoint({"step": 2, "x": torch.ones(2) * 2}, tmp_path, 2)
    newest = tmp_path / "step_00000002.pt"
    newest.write_bytes(newest.read_bytes()[:20])  # a torn write
    state = load_latest_checkpoint(tmp_path)
    assert state["step"] == 1
    index = json.loads((tmp_path / "latest.json").read_text())
    assert [e["step"] for e in index] == [1, 2]


def test_checkpoints_refuse_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    from medgen.errors import ModelError
    from medgen.training.checkpoint import load_checkpoint_file
    with pytest.raises(ModelError, match="safely"):
        load_checkpoint_file(tmp_path / "evil.pt")
