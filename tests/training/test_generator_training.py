"""Training anatomy generators: export, per-label intensities, resume, 2D/2.5D/3D, real brain label maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medgen.config import validate
from medgen.data.label_image_pairs import prepare_pair
from medgen.data.phantoms import make_phantom
from medgen.errors import ConfigError
from medgen.io.volume import Volume
from medgen.io.writers import write_volume
from medgen.training.generator import GeneratorConfig, GeneratorTask


def tiny_config(**sections) -> GeneratorConfig:
    """A seconds-scale config: 16^3 patches, 4-8 channels."""
    data = {"data": {"patch_size": [16, 16, 16], "batch_size": 1},
            "network": {"channels": [4, 8], "spade_hidden": 4, "noise_channels": 1},
            "discriminator": {"channels": 4, "num_layers": 1},
            "train": {"steps": 6, "log_every": 2, "validate_every": 3, "checkpoint_every": 2}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return validate(data, GeneratorConfig, "tiny")


def _write_phantoms(folder, seeds, *, modality="ct", shape=(32, 32, 16)):
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "lbl").mkdir(parents=True, exist_ok=True)
    for s in seeds:
        p = make_phantom(s, shape=shape, spacing=(8.0, 7.0, 10.0), mr_weighting="t1")
        write_volume(Volume(p.ct if modality == "ct" else p.mr, p.affine), folder / "img" / f"case{s}.nii.gz")
        write_volume(Volume(p.labels, p.affine), folder / "lbl" / f"case{s}.nii.gz")
    names = folder / "names.json"
    names.write_text(json.dumps({str(k): v for k, v in p.label_names.items()}))
    return folder / "img", folder / "lbl", names


def _means(image: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    return {int(v): float(image[labels == v].mean()) for v in np.unique(labels)}


@pytest.mark.slow
def test_ct_generator_exports_a_bundle_that_keeps_geometry_and_tissue_order(tmp_path):
    from medgen.inference.generate import AnatomyGenerator
    from medgen.pipelines.train_generator import train_generator
    torch.manual_seed(0)
    img, lbl, names = _write_phantoms(tmp_path, [0, 1])
    bundle = train_generator(tiny_config(train={"steps": 8, "validate_every": 4}), images=[img], labels=[lbl],
                             output=tmp_path / "run", label_names=names, device="cpu", mlflow=False)
    desc = json.loads((bundle / "medgen.json").read_text())
    assert desc["kind"] == "generator" and desc["label_names"]["3"] == "liver"
    assert sorted(p.name for p in (bundle / "label_bank").iterdir()) == ["case0.nii.gz", "case1.nii.gz"]
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history if r["phase"] == "val"] == [4, 8]
    assert (tmp_path / "run" / "samples" / "step_000008.png").stat().st_size > 1000

    held_out = make_phantom(7, shape=(32, 32, 16), spacing=(8.0, 7.0, 10.0))
    gen = AnatomyGenerator(bundle, device="cpu")
    label = Volume(held_out.labels, held_out.affine)
    image = gen.image_for_labels(label, noise_seed=0)
    assert image.shape == label.shape and np.allclose(image.affine, label.affine)
    fake, real = _means(image.array, held_out.labels), _means(held_out.ct, held_out.labels)
    # air < bowel gas < fat < muscle < liver < vertebrae, as in the training CTs
    order = [0, 9, 1, 2, 3, 7]
    assert all(real[a] < real[b] for a, b in zip(order, order[1:]))
    assert all(fake[a] < fake[b] for a, b in zip(order, order[1:])), fake
    # soft tissues within 60 HU of this subject's real means after a few steps (bone varies more
    # between subjects: cortical/marrow mix)
    for value, tolerance in ((1, 60), (2, 60), (3, 60), (7, 150)):
        assert abs(fake[value] - real[value]) < tolerance, (value, fake[value], real[value])
    again = gen.image_for_labels(label, noise_seed=0)
    other = gen.image_for_labels(label, noise_seed=1)
    np.testing.assert_array_equal(image.array, again.array)
    assert not np.array_equal(image.array, other.array)


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    from medgen.pipelines.train_generator import train_generator
    from medgen.runtime import seed_everything
    img, lbl, names = _write_phantoms(tmp_path, [0])
    config = tiny_config(train={"steps": 4, "checkpoint_every": 2, "validate_every": 100, "validate_cases": 0})
    seed_everything(0)
    straight = train_generator(config, images=[img], labels=[lbl], output=tmp_path / "a", device="cpu", mlflow=False)
    train_generator(config, images=[img], labels=[lbl], output=tmp_path / "b", device="cpu", mlflow=False, max_steps=2)
    resumed = train_generator(config, images=[img], labels=[lbl], output=tmp_path / "b", device="cpu", mlflow=False,
                              resume=True)
    a = torch.load(straight / "models" / "model.pt", weights_only=True)
    b = torch.load(resumed / "models" / "model.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


@pytest.mark.parametrize("dims,context", [(2, 0), (2, 1), (3, 0)])
def test_2d_25d_and_3d_variants_train_and_synthesize_whole_volumes(tmp_path, dims, context):
    p = make_phantom(0, shape=(32, 32, 12), spacing=(8.0, 7.0, 10.0))
    pair = prepare_pair("p", Volume(p.ct, p.affine), Volume(p.labels, p.affine))
    config = tiny_config(network={"spatial_dims": dims, "context_slices": context})
    task = GeneratorTask(config, [pair], run_dir=tmp_path, label_names=p.label_names)
    assert task.generator.in_channels == 2 * context + 1 + 1
    losses = task.train_step(1)
    assert set(losses) >= {"g_adv", "g_fm", "g_l1", "d_real", "d_fake"}
    assert all(np.isfinite(v) for v in losses.values())
    unit = task.synthesize(0)
    assert unit.shape == p.labels.shape and unit.min() >= -1 and unit.max() <= 1
    # the per-label prior puts vertebrae above liver above fat straight away
    means = _means(unit, p.labels)
    assert means[7] > means[3] > means[1] > means[9]


def test_inconsistent_configs_are_rejected_with_the_key():
    # constructing the config validates it (no separate check a caller must remember)
    with pytest.raises(ConfigError, match="data.patch_size must be divisible"):
        tiny_config(data={"patch_size": [15, 16, 16]})
    with pytest.raises(ConfigError, match="network.context_slices"):
        tiny_config(network={"spatial_dims": 3, "context_slices": 1})
    with pytest.raises(ValueError, match="data.ct_window"):
        GeneratorConfig(data={"ct_window": [100.0, -100.0]})


# FreeSurfer ids of the SynthSeg maps, grouped into tissues with T1-like intensities
WHITE = (2, 7, 16, 28, 41, 46, 60)
GREY = (3, 8, 10, 11, 12, 13, 17, 18, 26, 42, 47, 49, 50, 51, 52, 53, 54, 58)
CSF = (4, 5, 14, 15, 24, 43, 44)


def _render_t1(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A T1-like MR of a brain label map (white > grey > CSF; other tissues in between)."""
    image = np.zeros(labels.shape, np.float32)
    for value in np.unique(labels):
        if value == 0:
            continue
        level = 110.0 if value in WHITE else 70.0 if value in GREY else 25.0 if value in CSF else 40.0 + (value % 7) * 5
        image[labels == value] = level
    return np.clip(image + rng.normal(0, 4.0, labels.shape), 0, None).astype(np.float32)


@pytest.mark.slow
@pytest.mark.real_data
def test_mr_generator_on_real_brain_label_maps_keeps_tissue_order(tmp_path, sample_data):
    import nibabel as nib

    from medgen.inference.generate import AnatomyGenerator
    folder = sample_data / "synthseg_label_maps"
    files = sorted(folder.glob("training_seg_*.nii.gz"))[:3]
    if len(files) < 3:
        pytest.skip("synthseg label maps not available")
    rng = np.random.default_rng(0)
    pairs, volumes = [], []
    for path in files:
        img = nib.load(str(path))
        labels = np.asarray(img.dataobj)[48:208:5, 48:208:5, 48:208:5].astype(np.int16)  # 32^3 at 5 mm
        affine = img.affine.copy()
        affine[:3, :3] *= 5
        affine[:3, 3] = img.affine[:3, :3] @ [48, 48, 48] + img.affine[:3, 3]
        volumes.append(Volume(labels, affine))
        pairs.append(prepare_pair(path.name[:15], Volume(_render_t1(labels, rng), affine), Volume(labels, affine)))
    config = tiny_config(data={"modality": "mr"}, train={"validate_every": 100})
    task = GeneratorTask(config, pairs[:2], run_dir=tmp_path, device="cpu")
    for step in range(1, 7):
        task.train_step(step)
    bundle = task.export(tmp_path / "bundle")
    gen = AnatomyGenerator(bundle, device="cpu")
    held_out = volumes[2]
    keep = np.isin(held_out.array, gen.channels.ids)  # ids the two training brains never had -> background
    label = held_out.with_array(np.where(keep, held_out.array, 0).astype(np.int16))
    image = gen.image_for_labels(label, noise_seed=0)
    assert image.shape == label.shape and np.allclose(image.affine, label.affine)
    arr, lab = image.array, label.array
    white, grey, csf = (float(arr[np.isin(lab, ids)].mean()) for ids in (WHITE, GREY, CSF))
    assert white > grey > csf > float(arr[lab == 0].mean())
