"""Sliding-window segmentation and the chain's geometry with an oracle segmenter.

The oracle is a TorchScript "network" that thresholds its input, so the expected mask is known
on any grid: these tests check that masks land on the MR exactly, whatever its orientation.
"""

import json

import numpy as np
import pytest
import torch
import yaml

from medgen.data.phantoms import make_phantom
from medgen.inference.baselines import normalised_mr_as_ct
from medgen.inference.chain import segment_mr_volume
from medgen.inference.segment import segment_array, sliding_window_scores
from medgen.io.geometry import reorient, resample_to_grid
from medgen.io.readers import read_volume
from medgen.io.volume import Volume
from medgen.io.writers import write_volume
from medgen.models.segmenters import load_segmenter


class Threshold(torch.nn.Module):
    """Class 1 where the scaled input is above 0 (HU > 0 with a [-1000, 1000] window)."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x * 50.0], dim=1)


def _oracle(tmp_path, spacing=None, patch=(16, 16, 16)):
    path = tmp_path / "oracle.ts"
    torch.jit.script(Threshold()).save(str(path))
    (tmp_path / "oracle.ts.yaml").write_text(yaml.safe_dump(
        {"spacing": spacing, "hu_window": [-1000, 1000], "patch_size": list(patch),
         "label_names": {0: "background", 1: "bright"}}))
    return load_segmenter(path)


def _oblique_affine(base: np.ndarray, degrees: float = 20.0) -> np.ndarray:
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(t / 2), -np.sin(t / 2)], [0, np.sin(t / 2), np.cos(t / 2)]])
    out = base.copy()
    out[:3, :3] = rot @ base[:3, :3]
    return out


def _phantom_mr(orientation: str):
    p = make_phantom(3, shape=(40, 36, 20), spacing=(3.0, 3.0, 5.0), mr_weighting="t1")
    mr = Volume(p.mr, p.affine)
    if orientation == "oblique":
        mr = resample_to_grid(mr, _oblique_affine(p.affine), mr.shape, order=1)
    elif orientation != "RAS":
        mr = reorient(mr, orientation)
    return mr


def test_sliding_window_blends_to_the_network_output_for_a_pointwise_network():
    image = np.random.default_rng(0).uniform(-1, 1, size=(23, 17, 11)).astype(np.float32)
    scores = sliding_window_scores(Threshold(), image, patch_size=(8, 8, 8), overlap=0.5)
    assert scores.shape == (2, 23, 17, 11)
    expected = (image > 0).astype(np.uint8)
    assert np.array_equal(segment_array(Threshold(), image, patch_size=(8, 8, 8)), expected)
    # bf16 compute gives the same labels away from the threshold
    bf = segment_array(Threshold(), image, patch_size=(8, 8, 8), dtype=torch.bfloat16)
    clear = np.abs(image) > 0.02
    assert np.array_equal(bf[clear], expected[clear])


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIL", "oblique"])
def test_chain_mask_lands_exactly_on_the_mr_grid(tmp_path, orientation):
    mr = _phantom_mr(orientation)
    seg = _oracle(tmp_path)
    result = segment_mr_volume(mr, translator="none", segmenter=seg)
    assert result.mask.shape == mr.shape and np.array_equal(result.mask.affine, mr.affine)
    expected = (normalised_mr_as_ct(mr, (-1000, 1000)).array > 0).astype(np.uint8)
    assert np.array_equal(result.mask.array, expected)
    assert result.label_names == {0: "background", 1: "bright"}


@pytest.mark.parametrize("orientation", ["LPS", "oblique"])
def test_chain_with_resampling_segmenter_keeps_anatomy_in_place(tmp_path, orientation):
    """A segmenter working at another spacing: the mask still overlaps the truth in world space."""
    from medgen.metrics.segmentation import dice
    mr = _phantom_mr(orientation)
    seg = _oracle(tmp_path, spacing=[2.0, 2.0, 2.0])
    result = segment_mr_volume(mr, translator="none", segmenter=seg)
    expected = normalised_mr_as_ct(mr, (-1000, 1000)).array > 0
    assert result.mask.shape == mr.shape
    assert dice(result.mask.array > 0, expected) > 0.9
    # the asymmetric phantom: the mask's centroid in world space matches the expected one
    def centroid(m):
        idx = np.argwhere(m)
        return (idx.mean(0) @ mr.affine[:3, :3].T) + mr.affine[:3, 3]
    assert np.linalg.norm(centroid(result.mask.array > 0) - centroid(expected)) < 1.5


def test_segment_mr_cli_writes_mask_labels_qc_and_sct(tmp_path):
    from medgen.cli import main
    mr = _phantom_mr("LPS")
    src = write_volume(mr, tmp_path / "mr.nii.gz")
    _oracle(tmp_path)
    out = tmp_path / "out" / "mask.nii.gz"
    rc = main(["segment-mr", "-q", "-i", str(src), "-o", str(out), "--translator", "histogram",
               "--segmenter", str(tmp_path / "oracle.ts"), "--ct-reference", str(src), "--qc", "--save-sct",
               "--device", "cpu", "--precision", "fp32"])
    assert rc == 0
    mask = read_volume(out, kind="label")
    assert mask.shape == mr.shape and np.allclose(mask.affine, mr.affine, atol=1e-5)
    info = json.loads((tmp_path / "out" / "mask.labels.json").read_text())
    assert info["label_names"]["1"] == "bright"
    assert (tmp_path / "out" / "mask_qc.png").stat().st_size > 1000
    assert read_volume(tmp_path / "out" / "mask_sct.nii.gz").shape == mr.shape
    # existing outputs are refused without --overwrite (exit code 2, one-line error)
    assert main(["segment-mr", "-q", "-i", str(src), "-o", str(out), "--translator", "none",
                 "--segmenter", str(tmp_path / "oracle.ts")]) == 2


def test_batch_continues_past_a_bad_scan_and_resumes(tmp_path):
    from medgen.cli import main
    scans = tmp_path / "scans"
    scans.mkdir()
    for name, orientation in (("a", "RAS"), ("b", "LPS")):
        write_volume(_phantom_mr(orientation), scans / f"{name}.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"not a nifti at all")
    _oracle(tmp_path)
    out = tmp_path / "masks"
    args = ["segment-mr", "-q", "-i", str(scans), "-o", str(out), "--translator", "none",
            "--segmenter", str(tmp_path / "oracle.ts")]
    assert main(args) == 1  # one scan failed
    summary = json.loads((out / "segment_mr_summary.json").read_text())
    status = {c["case_id"]: c["status"] for c in summary["cases"]}
    assert status == {"a": "ok", "b": "ok", "broken": "failed"}
    assert (out / "a.nii.gz").exists() and (out / "b.labels.json").exists()
    (scans / "broken.nii.gz").unlink()
    assert main(args) == 0  # rerun: finished scans are skipped
    summary = json.loads((out / "segment_mr_summary.json").read_text())
    assert {c["status"] for c in summary["cases"]} == {"skipped"}


def test_dicom_seg_matches_the_nifti_mask_voxel_for_voxel(tmp_path):
    from medgen.cli import main
    from medgen.io.dicom_seg import read_dicom_seg
    from medgen.io.dicom_write import write_dicom_series
    mr = _phantom_mr("LPS")
    series = write_dicom_series(mr.with_array(np.rint(mr.array * 10)), tmp_path / "mr_dicom", modality="MR",
                                instance_order="shuffled")
    _oracle(tmp_path)
    out = tmp_path / "mask.nii.gz"
    rc = main(["segment-mr", "-q", "-i", str(series), "-o", str(out), "--translator", "none",
               "--segmenter", str(tmp_path / "oracle.ts"), "--dicom-seg", str(tmp_path / "mask_seg.dcm")])
    assert rc == 0
    nifti = read_volume(out, kind="label")
    seg, names = read_dicom_seg(tmp_path / "mask_seg.dcm", series)
    assert names.get(1) == "bright"
    assert seg.shape == nifti.shape and np.allclose(seg.affine, nifti.affine, atol=1e-4)
    assert np.array_equal(seg.array, nifti.array)
    assert nifti.array.any()


class WindowPosition(torch.nn.Module):
    """Scores that depend on where a voxel sits in its window (class 1 in the window's first half
    along x): the kind of window-grid artefact test-time augmentation averages out."""

    def forward(self, x):
        first_half = torch.zeros_like(x)
        first_half[:, :, : x.shape[2] // 2] = 5.0
        return torch.cat([torch.zeros_like(x), first_half], dim=1)


def test_tta_averages_a_second_window_grid_half_a_stride_away():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, size=(40, 24, 20)).astype(np.float32)
    args = dict(patch_size=(16, 16, 16), overlap=0.25, softmax=True)
    # a pointwise network scores every voxel alike on any grid: TTA changes nothing
    plain = sliding_window_scores(Threshold(), image, **args)
    tta = sliding_window_scores(Threshold(), image, tta=True, **args)
    assert tta.shape == plain.shape == (2, 40, 24, 20)
    np.testing.assert_allclose(tta.numpy(), plain.numpy(), atol=1e-5)
    # a window-position artefact: the shifted grid (6 voxels = half the 12-voxel stride) disagrees
    # with the first grid, and the TTA scores are exactly the mean of the two grids
    plain = sliding_window_scores(WindowPosition(), image, **args)
    tta = sliding_window_scores(WindowPosition(), image, tta=True, **args)
    moved = np.pad(image, [(6, 0), (6, 0), (6, 0)], constant_values=-1.0)
    shifted = sliding_window_scores(WindowPosition(), moved, **args)[:, 6:, 6:, 6:]
    assert not torch.allclose(plain, shifted, atol=1e-3)
    np.testing.assert_allclose(tta.numpy(), ((plain + shifted) / 2).numpy(), atol=1e-5)
    np.testing.assert_allclose(tta.sum(0).numpy(), 1.0, atol=1e-5)  # still probabilities


def _ball_scores(shape, spacing, radius_mm):
    """(2, *shape) probabilities of a ball (class 1) centred in the grid: a logistic of the distance."""
    centre = (np.asarray(shape) - 1) / 2
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    dist = np.linalg.norm((coords - centre) * np.asarray(spacing), axis=-1)
    inside = 1.0 / (1.0 + np.exp((dist - radius_mm) / 1.5))
    return np.stack([1.0 - inside, inside]).astype(np.float32), dist


def test_scores_interpolated_onto_a_finer_grid_give_a_truer_mask_than_nearest_neighbour():
    from medgen.inference.segment import argmax_on_grid
    from medgen.io.geometry import grid_for_spacing

    coarse = Volume(np.zeros((16, 16, 16), np.float32), np.diag([6.0, 6.0, 6.0, 1.0]))
    scores, _ = _ball_scores(coarse.shape, coarse.spacing, 20.0)
    fine_affine, fine_shape = grid_for_spacing(coarse, (1.5, 1.5, 1.5))
    truth = _ball_scores(fine_shape, (1.5, 1.5, 1.5), 20.0)[1] < 20.0

    interpolated = argmax_on_grid(scores, coarse.affine, fine_affine, fine_shape)
    nearest = resample_to_grid(coarse.with_array(scores.argmax(0).astype(np.uint8)), fine_affine, fine_shape,
                               order=0).array

    def dice(mask):
        return 2 * (mask & truth).sum() / (mask.sum() + truth.sum())

    assert interpolated.shape == fine_shape and interpolated.dtype == np.uint8
    assert dice(interpolated == 1) > 0.98
    assert dice(interpolated == 1) > dice(nearest == 1) + 0.02  # 6 mm blocks vs a smooth boundary


def test_scores_on_the_same_lattice_map_exactly_like_the_labels_and_outside_is_background():
    from medgen.inference.segment import argmax_on_grid

    rng = np.random.default_rng(0)
    scores = rng.random((4, 6, 5, 3)).astype(np.float32)
    grid = Volume(np.zeros((6, 5, 3), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    labels = grid.with_array(scores.argmax(0).astype(np.uint8))
    flipped = reorient(labels, "LPI")  # same voxels, axes flipped
    assert np.array_equal(argmax_on_grid(scores, grid.affine, flipped.affine, flipped.shape), flipped.array)
    # a grid reaching past the scores' field of view: beyond it every voxel is background
    wider = grid.affine.copy()
    wider[:3, 3] -= [20.0, 0.0, 0.0]
    out = argmax_on_grid(scores, grid.affine, wider, (16, 5, 3))
    assert (out[:9] == 0).all() and np.array_equal(out[10:], labels.array)


def test_a_slab_shorter_than_the_window_is_extended_along_the_body_not_padded_with_air():
    """The network must see the anatomy go on above and below a thin slab, not end in air; in-plane,
    beyond the scan's border, it still sees air. Whatever the stored orientation."""
    from medgen.models.segmenters import NetworkSegmenter
    from medgen.models.input_spec import InputSpec

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return torch.cat([torch.zeros_like(x), x], dim=1)

    body = np.full((12, 10, 4), 200.0, np.float32)  # 4 slices of soft tissue, nothing else
    slab = reorient(Volume(body, np.diag([3.0, 3.0, 3.0, 1.0])), "LPI")
    spec = InputSpec(spacing=(3.0, 3.0, 3.0), a_min=-1000, a_max=1000, b_min=-1, b_max=1, patch_size=(16, 16, 8))
    mask = NetworkSegmenter(Recorder(), spec, {0: "background", 1: "tissue"}).segment(slab)

    assert mask.same_grid(slab) and (mask.array == 1).all()
    windows = torch.cat(seen)[:, 0]
    air = float(spec.scale(np.array([-1024.0]))[0])
    tissue = torch.isclose(windows, torch.tensor(0.2))
    # every one of the 8 window slices (4 of them repeated) holds the whole 12 x 10 cross-section ...
    assert (tissue.sum(dim=(1, 2)) == 12 * 10).all()
    # ... and the rest, beyond the scan's in-plane border, is air
    assert torch.isclose(windows[~tissue], torch.tensor(air)).all()


def test_extended_grid_keeps_every_scan_voxel_at_its_world_position():
    from medgen.inference.segment import body_axis, extend_along_body_axis

    rng = np.random.default_rng(1)
    scan = reorient(Volume(rng.random((6, 5, 3)).astype(np.float32), np.diag([2.0, 2.0, 5.0, 1.0])), "SAR")
    assert body_axis(scan.affine) == 0  # stored superior-first: the body axis is the first array axis
    extended = extend_along_body_axis(scan, (8, 4, 4))
    assert scan.shape == (3, 5, 6) and extended.shape == (8, 5, 6)
    assert extend_along_body_axis(scan, (3, 4, 4)) is scan
    back = resample_to_grid(extended, scan.affine, scan.shape, order=0)
    np.testing.assert_array_equal(back.array, scan.array)
    np.testing.assert_array_equal(extended.array[0], scan.array[0])  # the added slices repeat the ends
    np.testing.assert_array_equal(extended.array[-1], scan.array[-1])
