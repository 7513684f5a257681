"""Translator training: samplers, resume parity, the CLI end to end (bundle, MLflow, metrics)."""

import json

import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.data.phantoms import make_phantom
from medgen.data.sampling import VolumeSampler, body_mask
from medgen.runtime import seed_everything
from medgen.training.loop import LoopSettings, read_history, run_training
from medgen.training.translator import TranslatorConfig, TranslatorTask, linear_decay

# identity on and histogram off (not the shipped defaults): every CycleGAN term is exercised
TINY = {"model": {"features": 4, "n_blocks": 1, "disc_features": 4},
        "data": {"patch_size": [32, 32], "batch_size": 2},
        "loss": {"pool_size": 3, "lambda_identity": 0.5, "lambda_histogram": 0.0},
        "train": {"steps": 4, "val_samples": 2, "precision": "fp32"}}
TINY_SET = ["model.features=4", "model.n_blocks=1", "model.disc_features=4", "data.patch_size=[32,32]",
            "train.val_samples=2", "train.log_every=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom_volumes():
    """Unit-range MR and CT arrays of different phantoms (unpaired)."""
    mrs, cts = [], []
    for seed in (0, 1):
        p = make_phantom(seed, shape=(48, 48, 16))
        mr = p.mr / np.percentile(p.mr, 99.5)
        mrs.append(np.clip(mr * 2 - 1, -1, 1).astype(np.float32))
    for seed in (2, 3):
        p = make_phantom(seed, shape=(48, 48, 16))
        cts.append(np.clip(p.ct / 1000.0, -1, 1).astype(np.float32))
    return mrs, cts


def test_sampler_bias_determinism_and_context():
    vol = np.full((40, 40, 12), -1.0, np.float32)
    vol[15:25, 15:25, :] = np.arange(12, dtype=np.float32)[None, None, :] / 12
    mask = body_mask(vol)
    assert mask[20, 20, 5] and not mask[2, 2, 5]
    s = VolumeSampler([vol], [mask], patch_size=(8, 8), context=3, foreground_prob=1.0, seed=3)
    batch = s.sample(16)
    assert batch.image.shape == (16, 3, 8, 8)
    assert bool((batch.mask[:, 1, 4, 4] == 1).all())  # every centre lies inside the body
    # the three channels are adjacent slices (values grow by 1/12 per slice, edges repeated)
    step = batch.image[:, 2, 4, 4] - batch.image[:, 0, 4, 4]
    assert bool(((step - 2 / 12).abs() < 1e-6).logical_or(step.abs() < 1 / 12 + 1e-6).all())
    state = s.state_dict()
    again = s.sample(4).image
    s.load_state_dict(state)
    assert torch.equal(s.sample(4).image, again)


def test_linear_decay_schedule():
    f = linear_decay(100, 0.5)
    assert f(0) == 1.0 and f(49) == 1.0 and f(50) == 1.0
    assert f(75) == pytest.approx(0.5) and f(99) == pytest.approx(0.02)


def _task(volumes, tmp_path=None):
    mrs, cts = volumes
    seed_everything(0)
    return TranslatorTask(TranslatorConfig.model_validate(TINY), mrs, cts, run_dir=tmp_path)


def test_resume_reproduces_uninterrupted_training(phantom_volumes, tmp_path):
    settings = dict(checkpoint_every=2, validate_every=100, log_every=1)
    straight = _task(phantom_volumes)
    run_training(straight, tmp_path / "a", LoopSettings(max_steps=4, **settings))
    first = _task(phantom_volumes)
    run_training(first, tmp_path / "b", LoopSettings(max_steps=2, **settings))
    resumed = _task(phantom_volumes)  # fresh process state: different weights until resumed
    seed_everything(99)
    run_training(resumed, tmp_path / "b", LoopSettings(max_steps=4, **settings), resume=True)
    a, b = straight.state_dict(), resumed.state_dict()
    for name in a["nets"]:
        for key, value in a["nets"][name].items():
            assert torch.allclose(value.float(), b["nets"][name][key].float(), atol=1e-6), (name, key)
    assert a["sched_g"]["last_epoch"] == b["sched_g"]["last_epoch"] == 4
    assert torch.equal(a["pools"]["ct"]["images"], b["pools"]["ct"]["images"])
    hist = read_history(tmp_path / "b")
    assert [r["step"] for r in hist if r["phase"] == "train"] == [1, 2, 3, 4]


def test_training_changes_weights_and_logs_finite_losses(phantom_volumes, tmp_path):
    task = _task(phantom_volumes, tmp_path)
    before = {k: v.clone() for k, v in task.generator.state_dict().items()}
    losses = [task.train_step(s) for s in (1, 2, 3)]
    assert all(np.isfinite(v) for row in losses for v in row.values())
    assert {"g_adv_ct", "g_cycle_mr", "g_identity_ct", "g_structure_mr", "g_air", "d_ct", "d_mr"} <= set(losses[0])
    assert any(not torch.equal(before[k], v) for k, v in task.generator.state_dict().items())
    metrics = task.validate(3)
    assert 0 < metrics["cycle_mr_l1"] < 2 and 0 < metrics["cycle_ct_l1"] < 2
    assert (tmp_path / "samples" / "step_00000003.png").stat().st_size > 1000


@pytest.mark.parametrize("variant,extra", [("cyclegan_2d", []),
                                           ("cyclegan_3d", ["model.stem_kernel=3", "model.disc_layers=2", "train.precision=fp32",
                                                            "inference.window_size=[32,32,16]"])])
def test_2d_and_3d_variants_train_and_export(phantom_files, tmp_path, variant, extra):
    out = tmp_path / "run"
    args = ["train", "translator", "-c", f"translator/{variant}", "--mr", str(phantom_files / "mr0.nii.gz"),
            "--ct", str(phantom_files / "ct1.nii.gz"), "-o", str(out), "--max-steps", "2", "--no-mlflow", "-q"]
    for item in TINY_SET + extra:
        args += ["--set", item]
    if variant == "cyclegan_3d":
        args[args.index("data.patch_size=[32,32]")] = "data.patch_size=[16,16,16]"
    assert main(args) == 0
    desc = json.loads((out / "bundle" / "medgen.json").read_text())
    assert desc["extra"]["spatial_dims"] == (3 if variant == "cyclegan_3d" else 2)
    assert desc["extra"]["context"] == 1


@pytest.mark.slow
def test_cli_trains_validates_exports_registers_and_resumes(phantom_files, tmp_path):
    out = tmp_path / "run"
    base = ["train", "translator", "--mr", str(phantom_files / "mr0.nii.gz"), str(phantom_files / "mr1.nii.gz"),
            "--ct", str(phantom_files / "ct1.nii.gz"), str(phantom_files / "ct2.nii.gz"),
            "--val-mr", str(phantom_files / "mr2.nii.gz"), "--val-ct", str(phantom_files / "ct2.nii.gz"),
            "-o", str(out), "-q"]
    for item in TINY_SET + ["train.validate_every=2", "train.checkpoint_every=2"]:
        base += ["--set", item]
    assert main(base + ["--max-steps", "2", "--no-mlflow"]) == 0
    assert main(base + ["--max-steps", "2", "--no-mlflow"]) == 2  # refuses to clobber a run without --resume
    assert main(base + ["--max-steps", "3", "--resume"]) == 0
    hist = read_history(out)
    val = [r for r in hist if r["phase"] == "val"]
    assert [r["step"] for r in hist if r["phase"] == "train"] == [1, 2, 3]
    assert 0 < val[-1]["mae_hu"] < 2000 and val[-1]["psnr"] > 0 and -1 <= val[-1]["ssim"] <= 1
    meta = json.loads((out / "bundle" / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["format"] == "magnitude" and fmt["inputs"]["image"]["num_channels"] == 3
    assert fmt["outputs"]["pred"]["format"] == "hounsfield"
    assert fmt["inputs"]["image"]["spatial_shape"] == ["4*n", "4*n"]
    desc = json.loads((out / "bundle" / "medgen.json").read_text())
    assert desc["kind"] == "translator" and desc["preprocess"]["modality"] == "mr"
    assert desc["extra"]["context"] == 3 and desc["extra"]["ct_window"] == [-1000.0, 1000.0]
    assert (out / "bundle" / "models" / "model.pt").exists()
    assert list((out / "samples").glob("*.png"))
    info = json.loads((out / "mlflow_run.json").read_text())
    import mlflow
    mlflow.set_tracking_uri(info["tracking_uri"])
    version = mlflow.MlflowClient().search_model_versions("name='medgen-translator'")[0]
    assert version.run_id == info["run_id"]


def test_segmenter_terms_train_their_discriminator_and_checkpoint_it(phantom_volumes):
    from torch import nn

    from medgen.objectives.shape import TranslatorSpaceSegmenter
    mrs, cts = phantom_volumes
    seed_everything(0)
    seg = TranslatorSpaceSegmenter(nn.Conv2d(1, 3, 3, padding=1), segmenter_dims=2, ct_window=(-1000, 1000))
    config = TranslatorConfig.model_validate({**TINY, "loss": {"pool_size": 3, "shape_segmenter": "given-below",
                                                               "lambda_seg_adv": 1.0, "seg_adv_from": 1,
                                                               "lambda_class_intensity": 1.0}})
    task = TranslatorTask(config, mrs, cts, segmenter=seg)
    before = {k: v.clone() for k, v in task.nets["d_seg"].state_dict().items()}
    rows, weights = [], []
    for step in (1, 2):   # G's term counts only after seg_adv_from = 1; D_SEG trains from the start
        rows.append(task.train_step(step))
        weights.append(task.objective.lambda_seg_adv)
    assert weights == [0.0, 1.0]
    assert all(np.isfinite(r[k]) for r in rows for k in ("g_adv_seg", "d_seg", "g_class_intensity"))
    assert any(not torch.equal(before[k], v) for k, v in task.nets["d_seg"].state_dict().items())
    state = task.state_dict()
    assert "d_seg" in state["nets"] and "class_intensity" in state["pools"]
