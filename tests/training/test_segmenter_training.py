"""Segmenter training: label handling, grid checks, a few steps, export and reload."""

import json

import numpy as np
import pytest

from medgen.config import load_config
from medgen.data.phantoms import make_phantom
from medgen.data.label_names import read_label_names
from medgen.errors import InputError
from medgen.io.geometry import reorient
from medgen.io.volume import Volume
from medgen.io.writers import write_volume
from medgen.training.segmenter import (SegmenterConfig, align_label, augment_intensity, augment_label_intensity,
                                       plan_labels, prepare_case, sample_patch)

TINY = ["data.patch_size=[32,32,16]", "network.channels=[4,8]", "network.strides=[2]", "data.spacing=[4,4,6]",
        "train.validate_every=4", "train.checkpoint_every=4", "train.log_every=2"]


def _write_phantoms(folder, seeds, shape=(48, 48, 24), spacing=(4.0, 4.0, 6.0)):
    imgs, labs = [], []
    for s in seeds:
        p = make_phantom(s, shape=shape, spacing=spacing)
        imgs.append(write_volume(Volume(p.ct, p.affine), folder / f"case{s}_ct.nii.gz"))
        labs.append(write_volume(Volume(p.labels, p.affine), folder / f"case{s}_seg.nii.gz"))
    names = folder / "names.json"
    names.write_text(json.dumps({"phantom": {str(k): v for k, v in p.label_names.items()}, "other": {"1": "x"}}))
    return imgs, labs, names


def test_label_names_from_class_map_entry(tmp_path):
    _, _, names = _write_phantoms(tmp_path, [0], shape=(24, 24, 12))
    with pytest.raises(InputError, match="several label maps"):
        read_label_names(names)
    assert read_label_names(f"{names}#phantom")[3] == "liver"
    with pytest.raises(InputError, match="no entry"):
        read_label_names(f"{names}#nope")


def test_include_remaps_to_consecutive_ids_and_rejects_unknown_names():
    names = {0: "background", 3: "liver", 4: "spleen", 7: "vertebrae_L1", 8: "vertebrae_L2"}
    plan = plan_labels(names, ["spleen", "spine=vertebrae_*"])
    assert plan.names == {0: "background", 1: "spleen", 2: "spine"}
    lab = np.array([0, 3, 4, 7, 8])
    assert plan.apply(lab, "x").tolist() == [0, 0, 1, 2, 2]
    with pytest.raises(InputError, match="matches no label name"):
        plan_labels(names, ["pancreas"])
    with pytest.raises(InputError, match=r"\[9\]"):
        plan.apply(np.array([0, 9]), "lab.nii.gz")


def test_grid_mismatch_names_both_files_and_voxel_order_is_resolved():
    p = make_phantom(1, shape=(24, 24, 12), spacing=(4, 4, 6))
    image = Volume(p.ct, p.affine, source="ct.nii.gz")
    label = Volume(p.labels, p.affine, source="seg.nii.gz")
    lps = reorient(label, "LPS")  # same physical grid, other voxel order
    aligned = align_label(image, lps)
    assert np.array_equal(aligned.array, p.labels)
    affine = p.affine.copy()
    affine[0, 3] += 5.0  # shifted by 5 mm: a different physical grid
    with pytest.raises(InputError) as err:
        align_label(image, Volume(p.labels, affine, source="seg.nii.gz"))
    assert "ct.nii.gz" in str(err.value) and "seg.nii.gz" in str(err.value)


def test_intensity_augmentation_stays_in_range_and_changes_values():
    import torch
    cfg = SegmenterConfig().augment.model_copy(update={"prob": 1.0})
    x = torch.linspace(-1, 1, 16 ** 3).reshape(1, 1, 16, 16, 16)
    y = augment_intensity(x, cfg, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert not torch.allclose(x, y)
    off = cfg.model_copy(update={"prob": 0.0})
    assert torch.allclose(augment_intensity(x, off, torch.Generator().manual_seed(0)), x, atol=1e-6)


def test_label_intensity_shift_moves_each_structure_by_its_own_offset():
    import torch
    cfg = SegmenterConfig().augment.model_copy(update={"prob": 1.0, "label_shift": 0.3})
    y = torch.zeros(1, 1, 8, 8, 4, dtype=torch.long)
    y[..., :4, :, :] = 1
    y[..., 4:6, :, :] = 2  # label 3 absent; rows 6-7 background
    x = torch.rand(1, 1, 8, 8, 4, generator=torch.Generator().manual_seed(1)) * 0.4 - 0.2
    out = augment_label_intensity(x, y, cfg, torch.Generator().manual_seed(0))
    delta = out - x
    assert torch.all(delta[y == 0] == 0)                       # background untouched
    for label in (1, 2):                                       # one offset per structure, within bounds
        d = delta[y == label]
        assert torch.allclose(d, d[0].expand_as(d), atol=1e-6) and 0 < d[0].abs() <= 0.3
    assert not torch.isclose(delta[y == 1][0], delta[y == 2][0])
    shifts = [augment_label_intensity(x, y, cfg, torch.Generator().manual_seed(s))[y == 1][0] - x[y == 1][0]
              for s in range(200)]
    assert min(shifts) < -0.2 and max(shifts) > 0.2             # both directions, full range used
    assert torch.equal(augment_label_intensity(x, y, cfg.model_copy(update={"label_shift": 0.0}),
                                               torch.Generator().manual_seed(0)), x)
    assert augment_label_intensity(torch.full_like(x, 0.95), y, cfg, torch.Generator().manual_seed(3)).max() <= 1


@pytest.mark.slow
def test_train_few_steps_export_and_reload(tmp_path):
    from medgen.models.segmenters import load_segmenter
    from medgen.pipelines.train_segmenter import train_segmenter
    from medgen.training.loop import read_history

    imgs, labs, names = _write_phantoms(tmp_path, [0, 1])
    config = load_config(None, SegmenterConfig, default="segmenter/ct_unet", overrides=TINY)
    run = tmp_path / "run"
    bundle = train_segmenter(config, images=imgs, labels=labs, output=run, label_names=f"{names}#phantom",
                             include=["liver", "spleen", "kidney_left"], max_steps=4, mlflow=False)
    assert (bundle / "models" / "model.pt").exists()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] == "liver"
    history = read_history(run)
    assert any(r["phase"] == "val" and "fit_dice/liver" in r for r in history)
    seg = load_segmenter(run)
    assert seg.label_names == {0: "background", 1: "liver", 2: "spleen", 3: "kidney_left"}
    assert seg.spec.spacing == (4.0, 4.0, 6.0) and seg.spec.patch_size == (32, 32, 16)
    q = seg.extra["ct_reference_quantiles"]
    assert len(q) == 101 and q == sorted(q)
    # the model segments a CT on another grid and returns labels on that grid
    p = make_phantom(5, shape=(40, 44, 20), spacing=(3.0, 3.0, 5.0))
    ct = reorient(Volume(p.ct, p.affine), "LPS")
    out = seg.segment(ct)
    assert out.shape == ct.shape and np.allclose(out.affine, ct.affine)
    assert set(np.unique(out.array)) <= {0, 1, 2, 3}
    # resume continues to more steps without complaint
    train_segmenter(config, images=imgs, labels=labs, output=run, label_names=f"{names}#phantom",
                    include=["liver", "spleen", "kidney_left"], max_steps=6, resume=True, mlflow=False)
    assert max(r["step"] for r in read_history(run)) == 6

    # fine-tuning start (train.init_from): the exported weights, exactly; another network is refused
    from medgen.errors import ModelError
    from medgen.training.segmenter import build_network, load_initial_weights
    import torch
    net, _ = build_network(config, 4)
    load_initial_weights(net, str(run))
    exported = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in exported.items())
    wider = load_config(None, SegmenterConfig, default="segmenter/ct_unet", overrides=[*TINY, "network.channels=[8,8]"])
    with pytest.raises(ModelError, match="network differs"):
        load_initial_weights(build_network(wider, 4)[0], str(run))


def test_label_ids_without_names_are_an_error(tmp_path):
    from medgen.pipelines.train_segmenter import train_segmenter
    imgs, labs, _ = _write_phantoms(tmp_path, [0], shape=(24, 24, 12), spacing=(8, 8, 12))
    config = load_config(None, SegmenterConfig, default="segmenter/ct_unet", overrides=TINY)
    with pytest.raises(InputError, match="does not name"):
        train_segmenter(config, images=imgs, labels=labs, output=tmp_path / "r",
                        label_names={0: "background", 3: "liver"}, max_steps=1, mlflow=False)


def test_init_from_a_missing_model_is_one_clear_error(tmp_path, capsys):
    from medgen.cli import main
    imgs, labs, names = _write_phantoms(tmp_path, [0], shape=(24, 24, 12), spacing=(8, 8, 12))
    code = main(["train", "segmenter", "--images", str(imgs[0]), "--labels", str(labs[0]), "--label-names",
                 f"{names}#phantom", "-o", str(tmp_path / "run"), "--init-from", str(tmp_path / "no_model"),
                 "--max-steps", "1", "--no-mlflow", "-q", *[a for o in TINY for a in ("--set", o)]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no_model" in err[0] and "does not exist" in err[0]
    assert not (tmp_path / "run" / "bundle").exists()


def test_patches_of_a_thin_scan_repeat_its_end_slices_along_the_body_and_pad_air_in_plane():
    """Training patches see beyond a scan what inference windows see: the anatomy going on above and
    below (end slices repeated, labels with them), air beyond the in-plane border."""
    import torch
    from medgen.models.input_spec import InputSpec

    hu = np.full((20, 20, 3), -1000.0, np.float32)
    hu[4:16, 4:16] = 40.0
    labels = np.zeros(hu.shape, np.uint8)
    labels[6:12, 6:12] = 1
    labels[6:12, 6:12, 2] = 2  # the top slice holds another structure
    ct = reorient(Volume(hu, np.diag([4.0, 4.0, 6.0, 1.0])), "LPI")  # stored inferior-first
    lab = reorient(Volume(labels, np.diag([4.0, 4.0, 6.0, 1.0])), "LPI")
    spec = InputSpec(spacing=(4.0, 4.0, 6.0), a_min=-1000, a_max=1000, b_min=-1, b_max=1, patch_size=(32, 32, 16))
    plan = plan_labels({0: "background", 1: "liver", 2: "spleen"}, None)
    case = prepare_case("thin", ct, lab, spec, plan)
    assert case.body_axis == 2 and case.image.shape == (20, 20, 3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        img, seg = sample_patch(case, (32, 32, 16), gen, foreground_fraction=1.0)
        body = img > -0.5
        assert (body.sum(axis=(0, 1)) == 144).all()  # every slice of the patch holds the 12 x 12 body
        per_slice = [int(seg[..., z].max()) for z in range(16)]
        # inferior to superior: liver slices, then the spleen's top slice repeated (labels follow the image)
        assert set(per_slice) <= {1, 2} and per_slice == sorted(per_slice)
