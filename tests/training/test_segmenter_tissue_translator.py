"""A contrast-agnostic segmenter that learns the whole render class map (``synth.target: classes``)
and its export as a tissue-painting MR -> CT translator (``RUN/translator``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from medgen.data.phantoms import make_phantom
from medgen.io.volume import Volume
from medgen.io.writers import write_volume

pytestmark = pytest.mark.slow

GRID = {"shape": (48, 48, 24), "spacing": (4.0, 4.0, 6.0)}  # the segmenter's own spacing: no resampling
TINY = ["data.spacing=[4,4,6]", "data.patch_size=[32,32,16]", "network.channels=[8,16,32]", "network.strides=[2,2]",
        "train.validate_every=1000", "train.checkpoint_every=1000", "train.lr=0.005", "train.log_every=50",
        "train.precision=fp32",
        "synth.target=classes"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from medgen.config import load_config
    from medgen.pipelines.train_segmenter import train_segmenter
    from medgen.training.segmenter import SegmenterConfig
    root = tmp_path_factory.mktemp("tissue_seg")
    images, labels, phantoms = [], [], []
    for seed in (0, 1):
        p = make_phantom(seed, **GRID)
        # a body voxel left unlabelled: it must become its HU band's tissue class, not background
        lab = p.labels.copy()
        lab[lab == {v: k for k, v in p.label_names.items()}["muscle"]] = 0
        images.append(write_volume(Volume(p.ct, p.affine), root / "ct" / f"c{seed}.nii.gz"))
        labels.append(write_volume(Volume(lab, p.affine), root / "lab" / f"c{seed}.nii.gz"))
        phantoms.append((p, lab))
    names = {k: v for k, v in p.label_names.items() if v != "muscle"}
    config = load_config(None, SegmenterConfig, default="segmenter/synth_unet", overrides=TINY)
    train_segmenter(config, images=images, labels=labels, output=root / "run", label_names=names,
                    max_steps=40, mlflow=False)
    return root, phantoms, names


def test_it_learns_every_tissue_and_records_each_class_mean_hu(trained):
    from medgen.transforms.render import TISSUE_NAMES, tissue_classes
    root, phantoms, names = trained
    desc = json.loads((root / "run" / "bundle" / "medgen.json").read_text())
    model_names = {int(k): v for k, v in desc["label_names"].items()}
    first_band = len(names)  # the labels are numbered 0..len(names)-1, then the bands
    assert [model_names[first_band + b] for b in range(len(TISSUE_NAMES))] == [f"tissue_{n}" for n in TISSUE_NAMES]
    means = {int(k): v for k, v in desc["extra"]["class_mean_hu"].items()}
    ct = np.concatenate([p.ct.ravel() for p, _ in phantoms])
    lab = np.concatenate([lab.ravel() for _, lab in phantoms])
    liver = {v: k for k, v in model_names.items()}["liver"]
    source_liver = {v: k for k, v in names.items()}["liver"]
    assert means[liver] == pytest.approx(float(ct[lab == source_liver].mean()), abs=0.01)
    # the unlabelled muscle (about 50 HU) is the fluid/soft-tissue bands, air the darkest band; the
    # bands are cut from the CT after a 3-voxel median filter (synth.class_median), the means are raw HU
    smoothed = np.concatenate([ndimage.median_filter(p.ct.astype(np.float32), size=3).ravel() for p, _ in phantoms])
    band = tissue_classes(smoothed[lab == 0]) + first_band
    for b in np.unique(band):
        assert means[int(b)] == pytest.approx(float(ct[lab == 0][band == b].mean()), abs=0.01)
    assert means[first_band] < -900
    translator = json.loads((root / "run" / "translator" / "medgen.json").read_text())
    assert translator["kind"] == "translator"
    painted = translator["extra"]["painted_classes"]
    assert painted[str(liver)] == {"name": "liver", "hu": means[liver]}


def test_the_translator_sees_and_decides_exactly_what_the_segmenter_does(trained):
    from medgen.inference.translate import load_translator
    from medgen.models.segmenters import load_segmenter
    from medgen.transforms.recipes import PreprocessConfig, preprocess
    root, _, _ = trained
    translator, segmenter = load_translator(root / "run" / "translator"), load_segmenter(root / "run")
    test = make_phantom(77, mr_weighting="t2", **GRID)
    mr = Volume(test.mr * 3.7 + 120.0, test.affine)  # any MR scale: both normalise by the image's percentiles
    ours = preprocess(mr, PreprocessConfig.model_validate(translator.preprocess)).image
    theirs = segmenter.prepare(mr)
    assert ours.shape == theirs.shape and np.allclose(ours.affine, theirs.affine)
    np.testing.assert_allclose(ours.array, theirs.array, atol=1e-5)
    x = torch.from_numpy(theirs.array[:32, :32, :16].copy())[None, None]
    with torch.no_grad():
        _, logits = translator.network(x, return_logits=True)
        expected = segmenter.network(x)
    torch.testing.assert_close(logits[:, 0], expected)


def test_segmenting_with_it_gives_the_structures_only(trained):
    """The tissue bands are painting classes: a mask (and its names, volumes, agreement) leaves them out."""
    from medgen.models.segmenters import NetworkSegmenter, load_segmenter
    root, _, _ = trained
    desc = json.loads((root / "run" / "bundle" / "medgen.json").read_text())
    model_names = {int(k): v for k, v in desc["label_names"].items()}
    tissue = desc["extra"]["tissue_class_ids"]
    assert tissue == sorted(k for k, v in model_names.items() if v.startswith("tissue_")) and tissue
    segmenter = load_segmenter(root / "run")
    assert segmenter.label_names == {k: v for k, v in model_names.items() if k not in tissue}
    test = make_phantom(79, mr_weighting="t1", **GRID)
    mr = Volume(test.mr, test.affine)
    mask = segmenter.segment(mr).array
    every_class = NetworkSegmenter(segmenter.network, segmenter.spec, model_names).segment(mr).array
    assert np.isin(every_class, tissue).any()  # the network does decide tissue bands here
    np.testing.assert_array_equal(mask, np.where(np.isin(every_class, tissue), 0, every_class))
    assert set(np.unique(mask).tolist()) <= set(segmenter.label_names)


def test_translate_cli_writes_painted_ct_on_the_mr_grid(trained, tmp_path, capsys):
    from medgen.cli import main
    from medgen.io.readers import read_volume
    root, _, _ = trained
    test = make_phantom(78, mr_weighting="t1", **GRID)
    affine = test.affine.copy()
    affine[:3, 3] += (5.0, -3.0, 2.0)
    write_volume(Volume(test.mr, affine), tmp_path / "in" / "case.nii.gz")
    assert main(["translate", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m",
                 str(root / "run" / "translator"), "-q"]) == 0
    sct = read_volume(next((tmp_path / "out").glob("case*.nii.gz")))
    assert sct.shape == test.mr.shape and np.allclose(sct.affine, affine)
    values = [v["hu"] for v in json.loads((root / "run" / "translator" / "medgen.json").read_text())
              ["extra"]["painted_classes"].values()]
    assert min(values) - 1 <= sct.array.min() and sct.array.max() <= max(values) + 1
    assert sct.array.std() > 50  # air and body differ
    # the segmenter's run folder instead of its translator: one line naming the right folder
    capsys.readouterr()
    assert main(["translate", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out2"), "-m", str(root / "run")]) != 0
    assert f"pass {root / 'run' / 'translator'} as the translator" in capsys.readouterr().err


def test_a_ct_window_segmenter_cannot_be_exported(tmp_path):
    from medgen.errors import ModelError
    from medgen.models.tissue_translator import export_tissue_translator
    from tests.seg_models import medgen_segmenter_bundle
    bundle = medgen_segmenter_bundle(tmp_path / "seg")
    with pytest.raises(ModelError, match="CT-window segmenter"):
        export_tissue_translator(bundle, tmp_path / "tr", {0: -1000.0, 1: 60.0})
    assert not (tmp_path / "tr").exists()


def test_scans_edge_is_air_not_background():
    """Outside the scan (patch padding) the target is the air band, a class the model learns."""
    from medgen.training.segmenter import (SegmenterConfig, SegmenterTask, crop, input_spec, plan_labels,
                                           prepare_case, training_label_names)
    p = make_phantom(3, **GRID)
    config = SegmenterConfig(network={"channels": [4, 8], "strides": [2]},
                             data={"spacing": [4.0, 4.0, 6.0], "patch_size": [16, 16, 8], "intensity": "percentile"},
                             synth={"enabled": True, "target": "classes"})
    plan = plan_labels(p.label_names, None)
    case = prepare_case("c", Volume(p.ct, p.affine), Volume(p.labels, p.affine), input_spec(config), plan,
                        synth=config.synth)
    np.testing.assert_array_equal(case.label, case.classes)
    assert not (case.label == 0).any()
    names = training_label_names(plan, config.synth)
    task = SegmenterTask(config, [case], [], names, device=torch.device("cpu"), seed=0)
    assert names[task.air_class] == "tissue_air_lung" and task.label_pad == task.air_class
    corner = crop(case.label, np.array([-8, -8, -4]), (16, 16, 8), task.label_pad)
    assert (corner[:8] == task.air_class).all()
    x, y = task.batch(1)
    assert int(y.max()) < len(names) and not (y == 0).any()


@pytest.mark.parametrize("override, words", [("network.name=segresnet", "network.name unet"),
                                             ("data.intensity=hu_window", "data.intensity percentile")])
def test_what_cannot_become_a_translator_is_refused_before_training(override, words):
    from medgen.config import load_config
    from medgen.errors import ConfigError
    from medgen.training.segmenter import SegmenterConfig
    with pytest.raises(ConfigError, match=words):
        load_config(None, SegmenterConfig, default="segmenter/synth_unet", overrides=["synth.target=classes", override])


def test_unlabelled_cts_train_a_tissue_segmenter_from_the_cli(tmp_path, capsys):
    """No --labels: the classes are the CTs' HU tissue bands; without synth.target classes: one line."""
    from medgen.cli import main
    p = make_phantom(4, **GRID)
    write_volume(Volume(p.ct, p.affine), tmp_path / "cts" / "a.nii.gz")
    base = ["train", "segmenter", "-c", "segmenter/synth_unet", "--images", str(tmp_path / "cts"), "--no-mlflow",
            "--max-steps", "4"] + [a for o in TINY[:-1] for a in ("--set", o)]
    assert main(base + ["-o", str(tmp_path / "plain")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--labels: no label maps given" in err[0] and "synth.target=classes" in err[0]
    assert main(base + ["--set", "synth.target=classes", "-o", str(tmp_path / "run")]) == 0
    desc = json.loads((tmp_path / "run" / "bundle" / "medgen.json").read_text())
    assert desc["label_names"]["0"] == "background" and desc["label_names"]["1"] == "tissue_air_lung"
    assert all(v.startswith("tissue_") for k, v in desc["label_names"].items() if k != "0")
    assert (tmp_path / "run" / "translator" / "medgen.json").exists()
