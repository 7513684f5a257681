"""The label-map sampler makes new anatomies that stay anatomically sensible (no confetti)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medgen.data.label_sampler import (MAX_DISPLACEMENT_GRADIENT, LabelMapSampler, LabelSamplerConfig,
                                       _smooth_displacement, remove_small_islands)
from medgen.data.phantoms import make_phantom

CONN = np.ones((3, 3, 3), bool)
IDENTITY = LabelSamplerConfig(rotation_deg=0, scale=0, axis_scale=0, translation_mm=0, elastic_mm=0)


def _components(labels: np.ndarray, value: int) -> np.ndarray:
    comp, n = ndimage.label(labels == value, structure=CONN)
    return np.sort(np.bincount(comp.ravel())[1:])[::-1] if n else np.zeros(0, int)


def _nested_boxes() -> np.ndarray:
    lab = np.zeros((28, 24, 20), np.uint8)
    lab[4:24, 4:20, 3:17] = 1
    lab[8:16, 8:16, 6:14] = 2
    lab[17:22, 9:14, 8:12] = 3
    return lab


def test_identity_settings_reproduce_the_source_map_exactly():
    lab = _nested_boxes()
    out, affine = LabelMapSampler([(lab, np.diag([2.0, 2.0, 3.0, 1.0]))], IDENTITY).sample(np.random.default_rng(0))
    np.testing.assert_array_equal(out, lab)
    np.testing.assert_array_equal(affine, np.diag([2.0, 2.0, 3.0, 1.0]))


def test_same_seed_same_map_and_different_seeds_differ():
    lab = _nested_boxes()
    sampler = LabelMapSampler([(lab, np.eye(4))])
    a, _ = sampler.sample(np.random.default_rng(7))
    b, _ = sampler.sample(np.random.default_rng(7))
    c, _ = sampler.sample(np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.005


def test_small_islands_are_given_to_the_surrounding_label():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:18, 2:18, 2:18] = 2
    lab[4:10, 4:10, 4:10] = 1          # the main liver-like component
    lab[14, 14, 14] = 1                # a one-voxel island inside label 2
    out = remove_small_islands(lab, min_fraction=0.05, min_voxels=8)
    assert out[14, 14, 14] == 2
    np.testing.assert_array_equal(out[4:10, 4:10, 4:10], 1)
    assert (out != lab).sum() == 1


def test_a_label_made_only_of_tiny_pieces_keeps_its_largest_piece():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[1, 1, 1] = lab[5, 5, 5] = lab[5, 5, 6] = 3
    out = remove_small_islands(lab, min_fraction=0.05, min_voxels=8)
    assert (out == 3).sum() == 2


def test_deformation_field_is_smooth_enough_to_never_fold():
    spacing = np.array([2.0, 2.0, 3.0])
    field = _smooth_displacement(np.random.default_rng(0), (40, 40, 20), spacing, amplitude_mm=30.0,
                                 control_mm=20.0)
    worst = max(np.abs(np.gradient(field[a], spacing[d], axis=d)).max() for a in range(3) for d in range(3))
    assert worst <= MAX_DISPLACEMENT_GRADIENT + 1e-5
    # the Jacobian determinant of x -> x + u(x) stays positive everywhere (no folding)
    grads = np.stack([np.stack(np.gradient(field[a], *spacing), 0) for a in range(3)], 0)  # (3, 3, X, Y, Z)
    jac = np.moveaxis(grads, (0, 1), (-2, -1)) + np.eye(3)
    assert np.linalg.det(jac).min() > 0


def _check_sensible(source: np.ndarray, out: np.ndarray, config: LabelSamplerConfig, min_voxels: int,
                    tolerance: float) -> None:
    for value in np.unique(source):  # background included: no holes punched into the anatomy
        src = _components(source, value)
        new = _components(out, value)
        assert new.size >= 1, f"label {value} vanished"
        # no tiny islands: every piece is a real fraction of the label's main component
        assert (new[1:] >= max(config.min_island_voxels, config.min_island_fraction * new[0]) - 1e-9).all()
        if src.sum() >= min_voxels:
            assert abs(new.sum() / src.sum() - 1) <= tolerance, (value, new.sum(), src.sum())
            if src.size == 1:
                assert new.size == 1, f"label {value} was one piece and became {new.size}"


def test_phantom_label_maps_stay_sensible():
    p = make_phantom(3, shape=(48, 48, 24), spacing=(6.0, 5.0, 8.0))
    config = LabelSamplerConfig()
    source = remove_small_islands(p.labels, min_fraction=config.min_island_fraction,
                                  min_voxels=config.min_island_voxels)
    sampler = LabelMapSampler([(source, p.affine)], config)
    for seed in range(3):
        out, affine = sampler.sample(np.random.default_rng(seed))
        assert out.shape == source.shape and out.dtype == source.dtype
        np.testing.assert_array_equal(affine, p.affine)
        # default strengths: isotropic +-6 %, per axis +-4 % -> volumes within about +-35 %
        _check_sensible(source, out, config, min_voxels=150, tolerance=0.35)


@pytest.mark.real_data
def test_real_brain_label_maps_stay_sensible(sample_data):
    import nibabel as nib
    path = sample_data / "synthseg_label_maps" / "training_seg_02.nii.gz"
    if not path.exists():
        pytest.skip("synthseg label maps not available")
    img = nib.load(str(path))
    labels = np.asarray(img.dataobj)[32:224:3, 32:224:3, 32:224:3].astype(np.int16)  # 64^3 at 3 mm
    affine = img.affine.copy()
    affine[:3, :3] *= 3
    config = LabelSamplerConfig()
    source = remove_small_islands(labels, min_fraction=config.min_island_fraction, min_voxels=config.min_island_voxels)
    out, _ = LabelMapSampler([(source, affine)], config).sample(np.random.default_rng(0))
    assert set(np.unique(out)) == set(np.unique(source))
    _check_sensible(source, out, config, min_voxels=400, tolerance=0.35)


STRUCTURE_ONLY = IDENTITY.model_copy(update={"structure_shift_mm": 8.0, "structure_scale": 0.12})


def test_structure_moves_change_organs_relative_to_each_other():
    """Per-structure moves (global warp off) shift organs against each other, keep them whole."""
    p = make_phantom(3, shape=(48, 48, 24), spacing=(6.0, 5.0, 8.0))
    source = remove_small_islands(p.labels, min_fraction=STRUCTURE_ONLY.min_island_fraction,
                                  min_voxels=STRUCTURE_ONLY.min_island_voxels)
    spacing = np.array([6.0, 5.0, 8.0])
    organs = [3, 4, 5, 6]  # liver, spleen, kidneys: compact organs with well-defined centroids

    def centroids(lab):
        return {v: np.argwhere(lab == v).mean(0) * spacing for v in organs}

    before = centroids(source)
    sampler = LabelMapSampler([(source, p.affine)], STRUCTURE_ONLY)
    relative_moves = []
    for seed in range(3):
        out, _ = sampler.sample(np.random.default_rng(seed))
        after = centroids(out)
        # distances between organ centroids change: the organs moved against each other
        for a in organs:
            for b in organs:
                if a < b:
                    relative_moves.append(abs(np.linalg.norm(after[a] - after[b]) - np.linalg.norm(before[a] - before[b])))
        # scaling up to +-12 % per organ, blended: volumes within about +-45 %, each organ still one piece
        _check_sensible(source, out, STRUCTURE_ONLY, min_voxels=150, tolerance=0.45)
    assert np.mean(relative_moves) > 1.5, relative_moves  # mm
    assert max(relative_moves) < 40.0


def test_structure_field_is_invertible_and_seeded():
    from medgen.data.label_sampler import structure_displacement
    p = make_phantom(1, shape=(48, 48, 24), spacing=(6.0, 5.0, 8.0))
    spacing = np.array([6.0, 5.0, 8.0])
    strong = STRUCTURE_ONLY.model_copy(update={"structure_shift_mm": 40.0, "structure_scale": 0.4})
    field, stride = structure_displacement(np.random.default_rng(0), p.labels, spacing, strong)
    again, _ = structure_displacement(np.random.default_rng(0), p.labels, spacing, strong)
    np.testing.assert_array_equal(field, again)
    coarse_spacing = spacing * stride
    assert field.shape == (3, *p.labels[::stride, ::stride, ::stride].shape)
    grads = np.stack([np.stack(np.gradient(field[a], *coarse_spacing), 0) for a in range(3)], 0)
    assert np.abs(grads).max() <= MAX_DISPLACEMENT_GRADIENT + 1e-5
    jac = np.eye(3) - np.moveaxis(grads, (0, 1), (-2, -1))  # the pull-back y -> y - P(y)
    assert np.linalg.det(jac).min() > 0
    assert np.abs(field).max() > 5.0  # the strong setting really moves things (mm)
