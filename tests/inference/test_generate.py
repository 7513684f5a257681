"""``medgen generate``: labelled synthetic volumes, deterministic per seed, ready for segmenter training."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medgen.data.label_image_pairs import prepare_pair
from medgen.data.phantoms import make_phantom
from medgen.errors import InputError
from medgen.io.volume import Volume
from medgen.io.writers import write_volume
from medgen.training.generator import GeneratorConfig, GeneratorTask

SHAPE, SPACING = (32, 32, 16), (8.0, 7.0, 10.0)


def _tiny(modality: str) -> GeneratorConfig:
    return GeneratorConfig.model_validate({
        "data": {"modality": modality, "patch_size": [16, 16, 16], "batch_size": 1},
        "network": {"channels": [4, 8], "spade_hidden": 4, "noise_channels": 1},
        "discriminator": {"channels": 4, "num_layers": 1}})


def _bundle(folder, modality: str):
    phantoms = [make_phantom(s, shape=SHAPE, spacing=SPACING, mr_weighting="t1") for s in (0, 1)]
    pairs = [prepare_pair(f"case{i}", Volume(p.ct if modality == "ct" else p.mr, p.affine), Volume(p.labels, p.affine))
             for i, p in enumerate(phantoms)]
    task = GeneratorTask(_tiny(modality), pairs, run_dir=folder, label_names=phantoms[0].label_names)
    for step in (1, 2):
        task.train_step(step)
    return task.export(folder / "bundle")


@pytest.fixture(scope="module")
def ct_bundle(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("ct_gen"), "ct")


def _read(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def test_generated_pairs_share_geometry_and_come_with_names_and_a_datalist(ct_bundle, tmp_path):
    from medgen.inference.generate import AnatomyGenerator, generate_dataset
    gen = AnatomyGenerator(ct_bundle, device="cpu")
    entries = generate_dataset(gen, tmp_path / "out", n=3, seed=5)
    assert [e["case_id"] for e in entries] == ["synth_0000", "synth_0001", "synth_0002"]
    for e in entries:
        image, a_img = _read(tmp_path / "out" / e["image"])
        label, a_lab = _read(tmp_path / "out" / e["label"])
        assert image.shape == label.shape == SHAPE and np.allclose(a_img, a_lab)
        assert label.dtype == np.uint8 and set(np.unique(label)) <= set(range(11))
        means = {v: image[label == v].mean() for v in (0, 1, 3, 7)}
        assert means[0] < means[1] < means[3] < means[7]  # air < fat < liver < bone (HU)
        assert -1000.5 <= image.min() and image.max() <= 1000.5
    names = json.loads((tmp_path / "out" / "label_names.json").read_text())
    assert names["3"] == "liver"
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert datalist["training"][1] == {"image": "images/synth_0001.nii.gz", "label": "labels/synth_0001.nii.gz"}
    assert datalist["label_names"] == names
    # the image and label folders pair up by case id, as `medgen train segmenter --images --labels` pairs them
    from medgen.data.inputs import collect_pairs
    pairs = collect_pairs([tmp_path / "out" / "images"], [tmp_path / "out" / "labels"])
    assert [(i.case_id, i.path.name, lab.path.name) for i, lab in pairs][0] == (
        "synth_0000", "synth_0000.nii.gz", "synth_0000.nii.gz")


def test_same_seed_same_volumes_and_new_seed_new_anatomy(ct_bundle, tmp_path):
    from medgen.inference.generate import AnatomyGenerator, generate_dataset
    gen = AnatomyGenerator(ct_bundle, device="cpu")
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        generate_dataset(gen, tmp_path / name, n=2, seed=seed)
    for kind in ("images", "labels"):
        a, _ = _read(tmp_path / "a" / kind / "synth_0001.nii.gz")
        b, _ = _read(tmp_path / "b" / kind / "synth_0001.nii.gz")
        c, _ = _read(tmp_path / "c" / kind / "synth_0001.nii.gz")
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
    # case i does not depend on how many cases were generated before it
    single = gen.sample(1, 1)[1].array
    np.testing.assert_array_equal(single, _read(tmp_path / "a" / "labels" / "synth_0001.nii.gz")[0])


def test_given_label_maps_keep_their_own_grid_and_orientation(ct_bundle, tmp_path):
    from medgen.inference.generate import AnatomyGenerator, generate_dataset
    p = make_phantom(9, shape=SHAPE, spacing=SPACING)
    # the same anatomy stored LPS: array flipped along x and y, affine adjusted to match in the world
    lps = Volume(np.ascontiguousarray(p.labels[::-1, ::-1]), p.affine @ np.array(
        [[-1, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    assert lps.orientation == "LPS"
    write_volume(lps, tmp_path / "lps_labels.nii.gz")
    gen = AnatomyGenerator(ct_bundle, device="cpu")
    entries = generate_dataset(gen, tmp_path / "out", labels=[tmp_path / "lps_labels.nii.gz"], seed=0)
    assert len(entries) == 1 and entries[0]["case_id"] == "lps_labels"
    image, a_img = _read(tmp_path / "out" / entries[0]["image"])
    label, a_lab = _read(tmp_path / "out" / entries[0]["label"])
    assert np.allclose(a_img, lps.affine) and np.allclose(a_lab, lps.affine)
    np.testing.assert_array_equal(label, lps.array)
    assert image[label == 7].mean() > image[label == 3].mean() > image[label == 1].mean()


def test_label_ids_the_model_does_not_know_are_refused(ct_bundle, tmp_path):
    from medgen.inference.generate import AnatomyGenerator
    gen = AnatomyGenerator(ct_bundle, device="cpu")
    labels = np.zeros(SHAPE, np.uint8)
    labels[8:20, 8:20, 4:10] = 42
    with pytest.raises(InputError, match="42"):
        gen.image_for_labels(Volume(labels, np.diag([*SPACING, 1.0])))
    # matched by name instead, "liver" (their id 42) is the model's label 3
    image = gen.image_for_labels(Volume(labels, np.diag([*SPACING, 1.0])), label_names={42: "Liver"})
    assert image.array[labels == 42].mean() > image.array[labels == 0].mean() + 500


@pytest.mark.slow
def test_mr_generator_turns_ct_label_maps_into_labelled_mr(tmp_path):
    from medgen.inference.generate import AnatomyGenerator, generate_dataset
    bundle = _bundle(tmp_path / "mr_gen", "mr")
    ct_phantom = make_phantom(11, shape=SHAPE, spacing=SPACING)  # its CT labels, never seen by the MR model
    write_volume(Volume(ct_phantom.labels, ct_phantom.affine), tmp_path / "ct_labels.nii.gz")
    gen = AnatomyGenerator(bundle, device="cpu")
    assert gen.modality == "mr"
    entries = generate_dataset(gen, tmp_path / "mr", labels=[tmp_path / "ct_labels.nii.gz"])
    mr, _ = _read(tmp_path / "mr" / entries[0]["image"])
    label, _ = _read(tmp_path / "mr" / entries[0]["label"])
    means = {v: mr[label == v].mean() for v in np.unique(label)}
    # T1 contrast, unlike CT: fat brightest, then liver, then muscle; gas and air dark
    assert means[1] > means[3] > means[2] > means[9]
    assert mr.min() >= 0


def test_cli_generates_and_refuses_to_overwrite(ct_bundle, tmp_path, capsys):
    from medgen.cli import main
    out = tmp_path / "cli"
    assert main(["generate", "-m", str(ct_bundle), "-n", "1", "-o", str(out), "--no-mlflow", "--device", "cpu",
                 "--precision", "fp32", "-q"]) == 0
    assert (out / "images" / "synth_0000.nii.gz").exists() and (out / "qc_generated.png").exists()
    assert main(["generate", "-m", str(ct_bundle), "-n", "1", "-o", str(out), "--no-mlflow", "-q"]) == 2
    assert main(["generate", "-m", str(tmp_path / "nothing"), "-n", "1", "-o", str(out), "--no-mlflow", "-q"]) == 2


def test_generate_never_replaces_a_users_file_in_the_output_folder(ct_bundle, tmp_path, capsys):
    """medgen generate claims -o like the batch commands: a user's label_names.json there is refused up front."""
    from medgen.cli import main
    out = tmp_path / "gen"
    out.mkdir()
    mine = out / "label_names.json"
    mine.write_text("my notes")
    code = main(["generate", "-m", str(ct_bundle), "-n", "1", "-o", str(out), "--no-mlflow", "--device", "cpu",
                 "--precision", "fp32", "-q"])
    assert code == 2 and mine.read_text() == "my notes"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label_names.json" in err[0] and "Traceback" not in err[0]
    assert not (out / "images").exists()  # refused before any volume was generated


def test_realism_report_compares_a_generated_folder_with_real_data(ct_bundle, tmp_path):
    from medgen.inference.generate import AnatomyGenerator, generate_dataset
    from medgen.pipelines.generate import realism_report
    generate_dataset(AnatomyGenerator(ct_bundle, device="cpu"), tmp_path / "gen", n=2, seed=0)
    for folder in ("img", "lbl"):
        (tmp_path / folder).mkdir()
    for s in (20, 21):
        p = make_phantom(s, shape=SHAPE, spacing=SPACING)
        write_volume(Volume(p.ct, p.affine), tmp_path / "img" / f"r{s}.nii.gz")
        write_volume(Volume(p.labels, p.affine), tmp_path / "lbl" / f"r{s}.nii.gz")
    report = realism_report(tmp_path / "gen", [tmp_path / "img"], [tmp_path / "lbl"])
    assert report["n_generated"] == 2 and report["n_real"] == 2
    assert set(report["wasserstein"]) >= {"fat", "liver", "vertebrae"}
    assert all(0 <= v < 500 for v in report["wasserstein"].values())
    assert report["frechet_random_conv"] >= 0
    from medgen.cli import main
    out = tmp_path / "realism.json"
    assert main(["evaluate", "generator", "--generated", str(tmp_path / "gen"), "--real-images",
                 str(tmp_path / "img"), "--real-labels", str(tmp_path / "lbl"), "-o", str(out), "-q"]) == 0
    assert json.loads(out.read_text())["wasserstein"] == pytest.approx(report["wasserstein"])
