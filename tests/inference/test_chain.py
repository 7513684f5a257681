"""The chain end to end on phantoms, small and fast: MR -> translator -> CT segmenter -> mask.

A conservative floor from a tiny configuration of ``bench/chain_phantoms.py`` (the acceptance
experiment): a segmenter trained on phantom CTs and a translator trained on unpaired phantom
MR/CT from other seeds must segment a held-out phantom MR better than the segmenter applied to
the normalised MR, and above a floor. The full-size numbers are in the bench's output.
"""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TEST_SETTINGS = {
    "shape": (48, 48, 24), "spacing": (4.0, 4.0, 6.0), "seg_seeds": [0, 1, 2], "tr_mr_seeds": [100, 101],
    "tr_ct_seeds": [103, 104], "test_seeds": [200], "mr_weighting": "t1",
    "seg_steps": 100, "tr_steps": 100, "include": ["fat", "muscle", "liver", "vertebrae"],
    "seg_overrides": ["data.spacing=[4,4,6]", "data.patch_size=[48,48,24]", "network.channels=[8,16,32]",
                      "network.strides=[2,2]", "network.num_res_units=1", "train.validate_every=1000",
                      "train.checkpoint_every=1000", "train.lr=0.01", "data.batch_size=1", "train.precision=auto",
                      "augment.scale=[1.0,1.0]"],
    "tr_overrides": ["preprocess.mr.spacing=[4,4,6]", "preprocess.ct.spacing=[4,4,6]", "model.features=8",
                     "model.n_blocks=2", "data.patch_size=[48,48]", "model.disc_features=8",
                     "train.validate_every=1000", "train.checkpoint_every=1000", "train.log_every=50"],
}


def _bench():
    spec = importlib.util.spec_from_file_location("chain_phantoms", REPO / "bench" / "chain_phantoms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_chain_beats_the_none_baseline_on_phantoms(tmp_path):
    results = _bench().run_experiment(tmp_path, TEST_SETTINGS, methods=("chain", "none", "upper_bound"))
    dice = results["dice"]
    assert set(results["organs"]) == {"fat", "muscle", "liver", "vertebrae"}
    assert dice["chain"]["mean"] > dice["none"]["mean"]
    assert dice["chain"]["mean"] > 0.15
    assert dice["upper_bound"]["mean"] > 0.3
