"""Synthesis-supervised translator (objective synth): exact pairs, training, resume, CLI, bundle."""

import json

import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.data.phantoms import make_phantom
from medgen.data.synth_pairs import SynthPairSampler
from medgen.io.readers import read_volume
from medgen.runtime import seed_everything
from medgen.training.loop import LoopSettings, read_history, run_training
from medgen.training.synth_translator import SynthTranslatorTask, synth_classes
from medgen.training.translator import TranslatorConfig
from medgen.transforms.intensity import unit_to_hu
from medgen.transforms.render import RenderConfig, render_classes

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SET = ["model.features=4", "model.n_blocks=1", "model.disc_features=4", "data.patch_size=[32,32]",
            "train.val_samples=2", "train.log_every=1", "train.precision=fp32", "synth.margin=[4,4,4]"]
TINY = {"objective": "synth", "model": {"features": 4, "n_blocks": 1, "disc_features": 4},
        "data": {"patch_size": [32, 32], "batch_size": 2}, "loss": {"pool_size": 3},
        "synth": {"margin": [4, 4, 4]}, "train": {"steps": 4, "val_samples": 2, "precision": "fp32"}}


@pytest.fixture(scope="module")
def unit_cts():
    """Unit-range CTs (window [-1000, 1000]), their labels and MRs of other phantoms."""
    cts, labels, mrs = [], [], []
    for seed in (0, 1):
        p = make_phantom(seed, shape=(48, 48, 16))
        cts.append(np.clip(p.ct / 1000.0, -1, 1).astype(np.float32))
        labels.append(p.labels.astype(np.int32))
        q = make_phantom(seed + 5, shape=(48, 48, 16))
        mrs.append(np.clip(q.mr / np.percentile(q.mr, 99.5) * 2 - 1, -1, 1).astype(np.float32))
    return cts, labels, mrs


def test_pairs_are_exact_same_patch_same_geometry():
    # a CT whose every voxel value is unique: the target tells exactly where it was cut
    shape = (30, 26, 12)
    ct = (np.arange(np.prod(shape)).reshape(shape) / np.prod(shape) * 1.6 - 0.8).astype(np.float32)
    classes = render_classes(None, unit_to_hu(ct), n_label_ids=0)
    flat = RenderConfig(std=[0, 0], blur_mm=[0, 0], resolution_prob=0.0, bias_std=[0, 0], gamma_std=0.0,
                        noise_std=[0, 0])  # the rendering is one intensity per class
    sampler = SynthPairSampler([ct], [classes], [np.ones(shape, bool)], spacing=(1, 1, 1), render=flat,
                               patch_size=(8, 8), context=3, margin=(2, 2, 2), seed=4)
    pair = sampler.sample(6)
    assert pair.image.shape == pair.target.shape == pair.classes.shape == (6, 3, 8, 8)
    for i in range(6):
        target = pair.target[i].numpy()
        if target.min() <= -1.0:  # a patch partly outside the volume: check the inside part only
            continue
        x0, y0, z0 = np.unravel_index(int(np.argmin(np.abs(ct - target[0, 0, 0]))), shape)
        crop = ct[x0:x0 + 8, y0:y0 + 8, z0:z0 + 3]
        np.testing.assert_array_equal(np.moveaxis(crop, 2, 0), target)            # the same CT patch
        np.testing.assert_array_equal(np.moveaxis(classes[x0:x0 + 8, y0:y0 + 8, z0:z0 + 3], 2, 0),
                                      pair.classes[i].numpy())                     # rendered from its classes
        image, cls = pair.image[i], pair.classes[i]
        for k in torch.unique(cls):   # one intensity per class: the render is on the target's grid
            values = image[cls == k]
            assert float(values.max() - values.min()) < 1e-5
    # a resumed sampler draws the same pairs
    state = sampler.state_dict()
    again = sampler.sample(2)
    sampler.load_state_dict(state)
    replay = sampler.sample(2)
    assert torch.equal(again.image, replay.image) and torch.equal(again.target, replay.target)


def test_physics_prior_renders_air_dark_and_replays_for_a_seed(unit_cts):
    from medgen.data.mr_physics import physics_means
    bands = TranslatorConfig().synth.hu_bands
    a, b = physics_means(bands, np.random.RandomState(3)), physics_means(bands, np.random.RandomState(3))
    assert np.array_equal(a, b) and a.shape == (len(bands) + 1,) and a.max() == pytest.approx(1.0)
    cts, _, _ = unit_cts
    config = TranslatorConfig.model_validate(TINY)
    classes, dark = synth_classes(cts, [None, None], config)
    flat = RenderConfig(std=[0, 0], blur_mm=[0, 0], resolution_prob=0.0, bias_std=[0, 0], gamma_std=0.0,
                        noise_std=[0, 0])
    sampler = SynthPairSampler(cts, classes, spacing=(2, 2, 3), render=flat, dark_classes=dark, hu_bands=bands,
                               physics_prob=1.0, patch_size=(16, 16), context=1, margin=(2, 2, 0), seed=0)
    pair = sampler.sample(8)
    air = pair.classes == dark[0]
    assert bool(air.any()) and float(pair.image[air].max()) < -0.9  # no protons, no signal, in every draw
    with pytest.raises(ValueError, match="hu_bands"):
        SynthPairSampler(cts, classes, spacing=(2, 2, 3), physics_prob=0.5, patch_size=(16, 16))


def test_classes_keep_labels_and_cut_the_rest_into_hu_bands(unit_cts):
    cts, labels, _ = unit_cts
    config = TranslatorConfig.model_validate(TINY)
    classes, dark = synth_classes(cts, labels, config)
    n_ids = max(int(lab.max()) for lab in labels) + 1
    assert dark == (n_ids,)
    for c, lab, ct in zip(classes, labels, cts):
        assert np.array_equal(c[lab > 0], lab[lab > 0])
        assert (c[lab == 0] >= n_ids).all()
        assert (c[(lab == 0) & (ct <= -0.9)] == n_ids).all()  # air is the dark class
    plain, dark = synth_classes(cts, [None, None], config)
    assert dark == (0,) and int(plain[0].max()) <= len(config.synth.hu_bands)


def test_config_checks():
    with pytest.raises(ValueError, match="hu_bands"):
        TranslatorConfig.model_validate({**TINY, "preprocess": {"ct": {"modality": "ct", "ct": {"window": [-100, 400]}}}})
    with pytest.raises(ValueError, match="lambda_synth_l1"):
        TranslatorConfig.model_validate({**TINY, "loss": {"lambda_synth_l1": 0}})
    assert TranslatorConfig().objective == "cyclegan"


def _task(unit_cts, *, with_mr: bool, run_dir=None):
    cts, labels, mrs = unit_cts
    config = TranslatorConfig.model_validate(TINY)
    classes, dark = synth_classes(cts, labels, config)
    seed_everything(0)
    return SynthTranslatorTask(config, cts, classes, dark_classes=dark, mr_volumes=mrs if with_mr else None,
                               run_dir=run_dir)


@pytest.mark.parametrize("with_mr", [False, True])
def test_resume_reproduces_uninterrupted_training(unit_cts, tmp_path, with_mr):
    settings = dict(checkpoint_every=2, validate_every=100, log_every=1)
    straight = _task(unit_cts, with_mr=with_mr)
    run_training(straight, tmp_path / "a", LoopSettings(max_steps=4, **settings))
    first = _task(unit_cts, with_mr=with_mr)
    run_training(first, tmp_path / "b", LoopSettings(max_steps=2, **settings))
    resumed = _task(unit_cts, with_mr=with_mr)
    seed_everything(99)
    run_training(resumed, tmp_path / "b", LoopSettings(max_steps=4, **settings), resume=True)
    a, b = straight.state_dict(), resumed.state_dict()
    assert set(a["nets"]) == ({"g_mr2ct", "g_ct2mr", "d_ct", "d_mr"} if with_mr else {"g_mr2ct"})
    for name in a["nets"]:
        for key, value in a["nets"][name].items():
            assert torch.allclose(value.float(), b["nets"][name][key].float(), atol=1e-6), (name, key)
    rows = [r for r in read_history(tmp_path / "b") if r["phase"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert ("g_adv_ct" in rows[0] and "d_ct" in rows[0]) == with_mr and "g_synth_l1" in rows[0]


def test_tiny_run_learns_exports_and_translates_on_the_mr_grid(phantom_files, tmp_path):
    run = tmp_path / "run"
    args = ["train", "translator", "-c", "translator/synth_25d", "--ct", str(phantom_files / "ct0.nii.gz"),
            "--ct-labels", str(phantom_files / "lab0.nii.gz"), "-o", str(run), "--max-steps", "60", "--no-mlflow", "-q",
            "--set", "train.validate_every=60", "--set", "train.lr=0.002"]
    for item in TINY_SET:
        args += ["--set", item]
    assert main(args) == 0
    rows = [r for r in read_history(run) if r["phase"] == "train"]
    first = np.mean([r["g_synth_l1"] for r in rows[:10]])
    last = np.mean([r["g_synth_l1"] for r in rows[-10:]])
    assert last < 0.8 * first, (first, last)
    val = [r for r in read_history(run) if r["phase"] == "val"][-1]
    assert 0 < val["synth_mae_hu"] < 1000
    desc = json.loads((run / "bundle" / "medgen.json").read_text())
    assert desc["kind"] == "translator" and desc["extra"]["context"] == 3 and desc["preprocess"]["modality"] == "mr"
    assert list((run / "samples").glob("synth_*.png"))
    # the bundle works with medgen translate on a real-MR-like scan it never saw
    sct_path = tmp_path / "sct.nii.gz"
    assert main(["translate", "-i", str(phantom_files / "mr1.nii.gz"), "-o", str(sct_path), "-m", str(run),
                 "--precision", "fp32", "-q"]) == 0
    mr, sct = read_volume(phantom_files / "mr1.nii.gz"), read_volume(sct_path)
    assert sct.same_grid(mr)
    assert sct.array.min() >= -1000.0 - 1e-3 and sct.array.max() <= 1000.0 + 1e-3
    body = read_volume(phantom_files / "ct1.nii.gz").array > -500
    assert float(np.median(sct.array[body])) > -500 > float(np.median(sct.array[~body]))


def test_3d_variant_with_real_mr_trains_and_exports(phantom_files, tmp_path):
    run = tmp_path / "run3d"
    args = ["train", "translator", "-c", "translator/synth_3d", "--ct", str(phantom_files / "ct0.nii.gz"),
            "--mr", str(phantom_files / "mr1.nii.gz"), "-o", str(run), "--max-steps", "2", "--no-mlflow", "-q"]
    for item in TINY_SET + ["model.stem_kernel=3", "model.disc_layers=2", "inference.window_size=[32,32,16]"]:
        args += ["--set", item if item != "data.patch_size=[32,32]" else "data.patch_size=[16,16,16]"]
    assert main(args) == 0
    desc = json.loads((run / "bundle" / "medgen.json").read_text())
    assert desc["extra"]["spatial_dims"] == 3 and desc["extra"]["context"] == 1
    rows = [r for r in read_history(run) if r["phase"] == "train"]
    assert {"g_synth_l1", "g_adv_ct", "g_cycle_mr", "d_ct"} <= set(rows[-1])


@pytest.mark.parametrize("argv,flag", [(["-c", "translator/synth_25d"], "--ct"),
                                       (["--ct", "CT"], "--mr"),
                                       (["--mr", "MR", "--ct", "CT", "--ct-labels", "L"], "--ct-labels")])
def test_cli_refuses_missing_inputs_with_one_line(tmp_path, capsys, argv, flag):
    for name in ("CT", "MR", "L"):
        argv = [str(tmp_path / name) if a == name else a for a in argv]
    code = main(["train", "translator", *argv, "-o", str(tmp_path / "run"), "--no-mlflow"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].split("ERROR medgen: ")[-1].startswith(flag), err
    assert "Fix:" in err[0] and not (tmp_path / "run").exists()
