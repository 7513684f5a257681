"""Behavioural tests of the procedural abdomen phantom (medgen.data.phantoms)."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import nibabel as nib
import numpy as np
import pytest

from medgen.data.phantoms import LABEL_NAMES, Phantom, label_names, make_phantom

SMALL = (32, 32, 16)
DEFAULT = (96, 96, 48)
EXPECTED_NAMES = {
    0: "background", 1: "fat", 2: "muscle", 3: "liver", 4: "spleen", 5: "kidney_left",
    6: "kidney_right", 7: "vertebrae", 8: "aorta", 9: "bowel_gas", 10: "soft_tissue",
}


@lru_cache(maxsize=None)
def phantom(seed: int, shape=DEFAULT, weighting: str = "t1") -> Phantom:
    """Cached generation: several tests look at the same phantoms."""
    return make_phantom(seed, shape=shape, mr_weighting=weighting)


def median(p: Phantom, image: np.ndarray, *labels: int) -> float:
    return float(np.median(image[np.isin(p.labels, labels)]))


def centroid_world(p: Phantom, label: int) -> np.ndarray:
    ijk = np.argwhere(p.labels == label).mean(axis=0)
    return (p.affine @ np.r_[ijk, 1.0])[:3]


def test_label_names_are_fixed_and_copied():
    assert LABEL_NAMES == EXPECTED_NAMES
    names = label_names()
    assert names == EXPECTED_NAMES
    names[1] = "changed"
    assert label_names()[1] == "fat"
    assert phantom(0, SMALL).label_names == EXPECTED_NAMES


def test_default_shapes_dtypes_and_metadata():
    p = phantom(0)
    for arr in (p.ct, p.mr, p.labels):
        assert arr.shape == DEFAULT
    assert p.ct.dtype == np.float32 and p.mr.dtype == np.float32 and p.labels.dtype == np.uint8
    assert p.seed == 0 and p.mr_weighting == "t1"
    assert np.isfinite(p.ct).all() and np.isfinite(p.mr).all()
    assert p.mr.min() >= 0.0
    assert p.ct.min() >= -1024.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize("shape, spacing", [(DEFAULT, (2.0, 2.0, 3.0)), ((40, 36, 20), (1.5, 1.25, 2.5))])
def test_affine_is_ras_diagonal_and_centred(shape, spacing):
    p = make_phantom(3, shape=shape, spacing=spacing)
    assert p.ct.shape == p.mr.shape == p.labels.shape == shape
    assert p.affine.shape == (4, 4) and p.affine.dtype == np.float64
    np.testing.assert_allclose(p.affine[:3, :3], np.diag(spacing))
    np.testing.assert_allclose(p.affine[3], [0.0, 0.0, 0.0, 1.0])
    centre = p.affine @ np.r_[(np.array(shape) - 1) / 2.0, 1.0]
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
    assert nib.orientations.aff2axcodes(p.affine) == ("R", "A", "S")


def test_same_seed_is_bitwise_identical():
    a = make_phantom(11, shape=SMALL)
    b = make_phantom(11, shape=SMALL)
    for x, y in ((a.ct, b.ct), (a.mr, b.mr), (a.labels, b.labels), (a.affine, b.affine)):
        assert x.tobytes() == y.tobytes()


def test_different_seeds_give_different_anatomy():
    a, b = phantom(0), phantom(1)
    assert np.mean(a.labels != b.labels) > 0.05
    assert not np.array_equal(a.ct, b.ct)
    counts = [np.bincount(phantom(s).labels.ravel(), minlength=11) for s in (0, 1)]
    assert not np.array_equal(counts[0], counts[1])


@pytest.mark.parametrize("shape, seeds", [(SMALL, range(8)), (DEFAULT, range(2))])
def test_every_class_is_present(shape, seeds):
    for seed in seeds:
        present = set(np.unique(phantom(seed, shape).labels).tolist())
        assert present == set(EXPECTED_NAMES), f"seed {seed}: missing {set(EXPECTED_NAMES) - present}"


@pytest.mark.parametrize("shape", [SMALL, DEFAULT])
def test_body_fits_with_air_margin_and_fills_every_slice(shape):
    labels = phantom(0, shape).labels
    # Air margin around the body in-plane.
    for face in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        assert not face.any()
    # Superior-inferior coverage: every axial slice contains body.
    assert (labels.reshape(-1, labels.shape[2]) > 0).any(axis=0).all()


def test_anatomy_keeps_real_size_in_a_large_field_of_view():
    p = make_phantom(2, shape=(220, 180, 6), spacing=(2.0, 2.0, 3.0))
    body = p.labels > 0
    width_mm = np.ptp(np.nonzero(body.any(axis=(1, 2)))[0]) * 2.0
    depth_mm = np.ptp(np.nonzero(body.any(axis=(0, 2)))[0]) * 2.0
    assert 260.0 < width_mm < 400.0
    assert 180.0 < depth_mm < 300.0
    assert width_mm > depth_mm


def test_organs_vary_along_z():
    labels = phantom(0).labels
    per_slice = np.stack([np.bincount(labels[:, :, k].ravel(), minlength=11) for k in range(labels.shape[2])])
    half = labels.shape[2] // 2
    liver_sup, liver_inf = per_slice[half:, 3].sum(), per_slice[:half, 3].sum()
    assert liver_sup > liver_inf  # liver is an upper-abdominal organ (+z = superior)
    assert len({tuple(row) for row in per_slice}) == labels.shape[2]  # no two slices alike


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ct_hounsfield_ordering(seed):
    p = phantom(seed)
    bone, aorta = median(p, p.ct, 7), median(p, p.ct, 8)
    kidney, liver = median(p, p.ct, 5, 6), median(p, p.ct, 3)
    muscle, fat, gas, air = median(p, p.ct, 2), median(p, p.ct, 1), median(p, p.ct, 9), median(p, p.ct, 0)
    assert bone > aorta > kidney > liver > muscle > fat > gas > air
    assert -1010.0 < air < -990.0
    assert -130.0 < fat < -60.0
    assert 20.0 < muscle < 80.0
    # Cortical bone reaches the expected high HU somewhere in every phantom.
    assert np.percentile(p.ct[p.labels == 7], 95) > 600.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mr_contrast_t1_and_t2(seed):
    t1, t2 = phantom(seed, DEFAULT, "t1"), phantom(seed, DEFAULT, "t2")
    assert t1.mr_weighting == "t1" and t2.mr_weighting == "t2"
    # T1: fat bright, cortical bone (dense voxels by CT) darker than muscle.
    assert median(t1, t1.mr, 1) > 1.5 * median(t1, t1.mr, 2)
    cortical = (t1.labels == 7) & (t1.ct > 600.0)
    assert cortical.sum() > 10
    assert np.median(t1.mr[cortical]) < median(t1, t1.mr, 2)
    # T2: spleen brighter than liver (T1 the other way round), so the contrasts really differ.
    assert median(t2, t2.mr, 4) > 1.5 * median(t2, t2.mr, 3)
    assert median(t1, t1.mr, 3) > median(t1, t1.mr, 4)
    # Air and gas are dark in both.
    for p in (t1, t2):
        assert median(p, p.mr, 0) < 0.1 * median(p, p.mr, 1)


def test_weighting_only_changes_mr():
    t1, t2 = phantom(4, SMALL, "t1"), phantom(4, SMALL, "t2")
    assert t1.ct.tobytes() == t2.ct.tobytes()
    assert t1.labels.tobytes() == t2.labels.tobytes()
    assert not np.array_equal(t1.mr, t2.mr)
    assert make_phantom(4, shape=SMALL, mr_weighting="T2").mr.tobytes() == t2.mr.tobytes()


@pytest.mark.parametrize("seed", range(6))
def test_left_right_asymmetry_and_ras_placement(seed):
    """RAS+: +x is the subject's Right, +y Anterior. Liver right, spleen left, spine posterior."""
    p = phantom(seed, SMALL)
    liver, spleen = centroid_world(p, 3), centroid_world(p, 4)
    kid_l, kid_r = centroid_world(p, 5), centroid_world(p, 6)
    spine, aorta = centroid_world(p, 7), centroid_world(p, 8)
    assert liver[0] > 0.0 > spleen[0]
    assert kid_l[0] < 0.0 < kid_r[0]
    assert spine[1] < 0.0 and spine[1] < liver[1]
    assert aorta[1] > spine[1] and aorta[0] < spine[0]
    assert kid_l[1] < liver[1] and kid_r[1] < liver[1]  # kidneys are retroperitoneal (posterior)
    assert (p.labels[::-1] != p.labels).mean() > 0.05  # not mirror symmetric


@pytest.mark.parametrize("kwargs", [
    {"mr_weighting": "pd"},
    {"shape": (32, 32)},
    {"shape": (32, 0, 16)},
    {"spacing": (1.0, -1.0, 1.0)},
    {"spacing": (1.0, float("nan"), 1.0)},
])
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        make_phantom(0, **kwargs)


def test_negative_seed_raises():
    with pytest.raises(ValueError):
        make_phantom(-1, shape=SMALL)
