"""WeightEMA: warm-up, averaging, buffers, state round trip; the translator exports its EMA."""

import copy

import numpy as np
import pytest
import torch

from medgen.data.phantoms import make_phantom
from medgen.runtime import seed_everything
from medgen.training.ema import WeightEMA
from medgen.training.loop import LoopSettings, run_training
from medgen.training.translator import TranslatorConfig, TranslatorTask


def test_ema_follows_with_warmup_and_decay():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = WeightEMA(net, decay=0.9)
    net.weight.data.fill_(1.0)
    ema.update(net)  # warm-up decay min(0.9, 2/11): the average moves most of the way at once
    assert float(ema.module.weight) == pytest.approx(1 - 2 / 11)
    for _ in range(200):
        ema.update(net)
    assert float(ema.module.weight) == pytest.approx(1.0, abs=1e-6)
    net.weight.data.fill_(2.0)
    ema.update(net)  # now the full decay applies: 1 + 0.1 * (2 - 1)
    assert float(ema.module.weight) == pytest.approx(1.1, abs=1e-5)
    assert not ema.module.weight.requires_grad and not ema.module.training


def test_ema_copies_buffers_and_round_trips_state():
    net = torch.nn.BatchNorm1d(2)
    ema = WeightEMA(net, decay=0.99)
    net.running_mean.fill_(3.0)
    ema.update(net)
    assert torch.equal(ema.module.running_mean, net.running_mean)
    other = WeightEMA(copy.deepcopy(net), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and torch.equal(other.module.weight, ema.module.weight)
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(net, decay=1.0)


def _volumes():
    mrs, cts = [], []
    for seed in (0, 1):
        p = make_phantom(seed, shape=(48, 48, 16))
        mrs.append(np.clip(p.mr / np.percentile(p.mr, 99.5) * 2 - 1, -1, 1).astype(np.float32))
        cts.append(np.clip(make_phantom(seed + 2, shape=(48, 48, 16)).ct / 1000.0, -1, 1).astype(np.float32))
    return mrs, cts


def _task(volumes, ema_decay):
    seed_everything(0)
    config = TranslatorConfig.model_validate(
        {"model": {"features": 4, "n_blocks": 1, "disc_features": 4},
         "data": {"patch_size": [32, 32], "batch_size": 2, "intensity_balance": 0.5}, "loss": {"pool_size": 3},
         "train": {"steps": 4, "val_samples": 2, "precision": "fp32", "ema_decay": ema_decay}})
    return TranslatorTask(config, *volumes)


@pytest.mark.usefixtures("one_thread")
def test_translator_exports_the_ema_generator_and_resumes_it(tmp_path):
    volumes = _volumes()
    settings = dict(checkpoint_every=2, validate_every=100, log_every=1)
    straight = _task(volumes, 0.99)
    run_training(straight, tmp_path / "a", LoopSettings(max_steps=4, **settings))
    raw = straight.nets["g_mr2ct"].state_dict()
    exported = straight.generator.state_dict()
    assert any(not torch.equal(raw[k], exported[k]) for k in raw)  # the average, not the last step
    first = _task(volumes, 0.99)
    run_training(first, tmp_path / "b", LoopSettings(max_steps=2, **settings))
    resumed = _task(volumes, 0.99)
    run_training(resumed, tmp_path / "b", LoopSettings(max_steps=4, **settings), resume=True)
    for key, value in exported.items():
        assert torch.allclose(value, resumed.generator.state_dict()[key], atol=1e-6), key
    assert resumed.g_ema.updates == 4
    plain = _task(volumes, None)  # a checkpoint without an EMA cannot silently start one
    run_training(plain, tmp_path / "c", LoopSettings(max_steps=2, **settings))
    from medgen.errors import MedgenError
    with pytest.raises(MedgenError, match="EMA"):
        run_training(_task(volumes, 0.99), tmp_path / "c", LoopSettings(max_steps=4, **settings), resume=True)
