"""The tissue-painting synthesis translator (model.generator tissue_unet) and the pairs' random warp."""

import json

import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.data.synth_pairs import SynthPairSampler
from medgen.io.readers import read_volume
from medgen.models.bundle import load_bundle
from medgen.networks.registry import build_network
from medgen.networks.tissue_generator import TISSUE_GENERATOR_NAME, TissueGenerator
from medgen.training.loop import read_history
from medgen.training.synth_translator import class_mean_values
from medgen.training.translator import TranslatorConfig
from medgen.transforms.random_warp import WarpRanges
from medgen.transforms.render import RenderConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_output_is_the_class_values_mixed_by_the_class_probabilities():
    net = TissueGenerator(spatial_dims=3, in_channels=1, out_channels=1, n_classes=3, channels=[4, 8], strides=[2])
    net.set_class_values(torch.tensor([-0.9, 0.1, 0.7]))
    x = torch.randn(2, 1, 9, 10, 5)  # odd sizes: padded to the stride inside, cropped back
    sct, logits = net(x, return_logits=True)
    assert sct.shape == x.shape and logits.shape == (2, 1, 3, 9, 10, 5)
    expected = (torch.softmax(logits, dim=2) * torch.tensor([-0.9, 0.1, 0.7]).view(1, 1, 3, 1, 1, 1)).sum(2)
    assert torch.allclose(sct, expected, atol=1e-6)
    assert torch.equal(net(x), sct)
    # a confident decision paints exactly the class value (bulk density)

    class Confident(torch.nn.Module):
        def forward(self, padded):
            logits = torch.zeros(padded.shape[0], 3, *padded.shape[2:])
            logits[:, 2] = 50.0
            return logits

    net.unet = Confident()
    out = net(x)
    assert out.shape == x.shape and torch.allclose(out, torch.full_like(out, 0.7), atol=1e-5)
    assert "class_values" in net.state_dict()


def test_2p5d_stack_gives_one_class_map_per_slice():
    net = TissueGenerator(spatial_dims=2, in_channels=3, out_channels=3, n_classes=4, channels=[4, 8], strides=[2])
    sct, logits = net(torch.randn(2, 3, 16, 12), return_logits=True)
    assert sct.shape == (2, 3, 16, 12) and logits.shape == (2, 3, 4, 16, 12)


def test_class_mean_values_are_each_classes_mean_ct_value():
    ct = [np.array([[[-1.0, -0.5], [0.2, 0.4]]], np.float32), np.array([[[0.6, 0.0]]], np.float32)]
    classes = [np.array([[[0, 0], [2, 2]]]), np.array([[[2, 4]]])]
    values = class_mean_values(ct, classes)
    assert values.tolist() == pytest.approx([-0.75, -1.0, 0.4, -1.0, 0.0])  # classes 1, 3 absent -> air


def test_config_refuses_the_tissue_generator_outside_objective_synth():
    with pytest.raises(ValueError, match="objective synth"):
        TranslatorConfig.model_validate({"model": {"generator": "tissue_unet"}})
    with pytest.raises(ValueError, match="multiples of 8"):
        TranslatorConfig.model_validate({"objective": "synth", "model": {"generator": "tissue_unet"},
                                         "data": {"patch_size": [36, 32]}})
    with pytest.raises(ValueError, match="unet_channels"):
        TranslatorConfig.model_validate({"objective": "synth", "model": {"generator": "tissue_unet",
                                                                         "unet_strides": [2, 2]}})


def test_warp_moves_the_pair_together_and_keeps_class_ids_exact():
    shape = (40, 36, 20)
    classes = np.zeros(shape, np.int16)
    classes[10:30, 8:28, 4:16] = 3
    classes[16:24, 14:22, 7:13] = 5
    value = {0: -1.0, 3: 0.1, 5: 0.6}
    ct = np.vectorize(value.get)(classes).astype(np.float32)
    flat = RenderConfig(std=[0, 0], blur_mm=[0, 0], resolution_prob=0.0, bias_std=[0, 0], gamma_std=0.0,
                        noise_std=[0, 0])
    kwargs = dict(spacing=(2, 2, 3), render=flat, spatial_dims=3, patch_size=(24, 24, 12), context=1,
                  margin=(4, 4, 4), dark_classes=[0], foreground_prob=1.0)
    plain = SynthPairSampler([ct], [classes], seed=3, **kwargs).sample(4)
    warped = SynthPairSampler([ct], [classes], seed=3, warp=WarpRanges(rotate_deg=20, elastic_vox=2.0),
                              **kwargs).sample(4)
    assert warped.classes.shape == plain.classes.shape
    assert set(torch.unique(warped.classes).tolist()) <= {0, 3, 5}
    assert set(torch.unique(warped.mask).tolist()) <= {0.0, 1.0}
    assert not torch.equal(warped.classes, plain.classes)
    # the CT moved with the classes: away from edges (linear vs nearest) each class keeps its CT value
    for k, v in value.items():
        inside = warped.classes == k
        assert inside.any()
        assert float((warped.target[inside] - v).abs().median()) < 1e-4, k
    # the image was rendered from the warped classes: one intensity per class (a flat rendering)
    for image, cls in zip(warped.image, warped.classes):  # each sample has its own contrast
        for k in (3, 5):
            assert float(image[cls == k].std()) < 0.05


def test_tiny_run_learns_the_classes_exports_and_translates_on_the_mr_grid(phantom_files, tmp_path):
    run = tmp_path / "run"
    args = ["train", "translator", "-c", "translator/synth_tissue_3d", "--ct", str(phantom_files / "ct0.nii.gz"),
            "--ct-labels", str(phantom_files / "lab0.nii.gz"), "-o", str(run), "--max-steps", "40", "--no-mlflow",
            "-q"]
    for item in ["model.unet_channels=[4,8,16]", "model.unet_strides=[2,2]", "data.patch_size=[32,32,16]",
                 "data.batch_size=1", "train.val_samples=2", "train.log_every=1", "train.validate_every=40",
                 "train.precision=fp32", "synth.margin=[4,4,4]", "inference.window_size=[32,32,16]"]:
        args += ["--set", item]
    assert main(args) == 0
    rows = [r for r in read_history(run) if r["phase"] == "train"]
    first = np.mean([r["g_synth_class"] for r in rows[:8]])
    last = np.mean([r["g_synth_class"] for r in rows[-8:]])
    assert last < 0.85 * first, (first, last)
    desc = json.loads((run / "bundle" / "medgen.json").read_text())
    assert desc["network"]["name"] == TISSUE_GENERATOR_NAME and desc["extra"]["spatial_dims"] == 3
    spec = load_bundle(run / "bundle", kind="translator")
    net = build_network(spec.network["name"], spec.network["kwargs"])
    assert isinstance(net, TissueGenerator) and net.n_classes == spec.network["kwargs"]["n_classes"]
    sct_path = tmp_path / "sct.nii.gz"
    assert main(["translate", "-i", str(phantom_files / "mr1.nii.gz"), "-o", str(sct_path), "-m", str(run),
                 "--precision", "fp32", "-q"]) == 0
    mr, sct = read_volume(phantom_files / "mr1.nii.gz"), read_volume(sct_path)
    assert sct.same_grid(mr)
    body = read_volume(phantom_files / "ct1.nii.gz").array > -500
    assert float(np.median(sct.array[body])) > -500 > float(np.median(sct.array[~body]))


def test_tissue_generator_with_real_mr_is_refused_with_one_line(phantom_files, tmp_path, capsys):
    code = main(["train", "translator", "-c", "translator/synth_tissue_3d", "--ct", str(phantom_files / "ct0.nii.gz"),
                 "--mr", str(phantom_files / "mr1.nii.gz"), "-o", str(tmp_path / "run"), "--no-mlflow", "-q",
                 "--max-steps", "1", "--set", "data.patch_size=[32,32,16]", "--set", "synth.margin=[4,4,4]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "tissue_unet" in err[0] and "Fix:" in err[0], err
    assert not (tmp_path / "run").exists()  # refused before any loading or writing
