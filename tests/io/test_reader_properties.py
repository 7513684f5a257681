"""Property test: whatever a header says, the readers return a valid Volume or one MedgenError.

Hypothesis writes NIfTI and MetaImage/NRRD files with random shapes, voxel types, affines,
``pixdim``, sform/qform codes, spacings, directions and voxel values (NaN and Inf included), and
builds random in-memory volumes for :func:`check_volume`. Each must either raise a
:class:`MedgenError` whose message names the file, or give a 3D :class:`Volume` with a finite,
invertible affine and finite voxels; never another exception. Bounded (a few dozen examples per
property, small arrays) so it runs in seconds.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medgen.errors import MedgenError  # noqa: E402
from medgen.io.readers import check_volume, read_volume  # noqa: E402
from medgen.io.volume import Volume  # noqa: E402

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)

NIFTI_DTYPES = ["uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64", "complex64"]
SITK_DTYPES = ["uint8", "int16", "uint16", "int32", "float32", "float64"]
odd_float = st.one_of(st.floats(-1e4, 1e4), st.sampled_from([0.0, -0.0, 1e-12, 1e30, -1e30, np.nan, np.inf, -np.inf]))
#: half 3D volumes (so the geometry and value checks are reached), half any rank 1..5
shapes = st.one_of(st.tuples(st.integers(2, 5), st.integers(2, 5), st.integers(2, 5)),
                   st.lists(st.integers(1, 5), min_size=1, max_size=5).map(tuple))


def _values(shape, dtype: str, draw) -> np.ndarray:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    array = rng.normal(0, 500, size=shape)
    if draw(st.booleans()):
        array.flat[0] = draw(odd_float)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        array = np.clip(np.nan_to_num(array), info.min, info.max)
    return array.astype(dtype)


def _assert_valid(result, path: Path, kind: str) -> None:
    assert isinstance(result, Volume)
    assert result.array.ndim == 3 and min(result.array.shape) >= 1
    assert np.all(np.isfinite(result.affine)) and abs(np.linalg.det(result.affine[:3, :3])) > 0
    if kind == "image":
        assert result.array.dtype == np.float32 and np.all(np.isfinite(result.array))
    else:
        assert np.issubdtype(result.array.dtype, np.integer) and result.array.min(initial=0) >= 0


def _read(path: Path, kind: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = read_volume(path, kind=kind)
    except MedgenError as exc:
        assert path.name in exc.one_line(), exc.one_line()
        assert "\n" not in exc.one_line()
        hypothesis.event(f"refused: {exc.message[:40]}")
        return
    hypothesis.event("read as a volume")
    _assert_valid(result, path, kind)


@st.composite
def nifti_files(draw):
    shape = draw(shapes)
    dtype = draw(st.sampled_from(NIFTI_DTYPES))
    array = _values(shape, dtype, draw)
    affine = np.array(draw(st.lists(odd_float, min_size=12, max_size=12)), float).reshape(3, 4)
    if draw(st.booleans()):  # mostly sane geometry, so the property also reaches the value checks
        affine = np.hstack([np.diag(draw(st.lists(st.floats(0.1, 5), min_size=3, max_size=3))),
                            np.zeros((3, 1))])
    affine = np.vstack([affine, [0, 0, 0, 1]])
    header = {"sform_code": draw(st.integers(0, 4)), "qform_code": draw(st.integers(0, 4)),
              "pixdim": draw(st.lists(odd_float, min_size=3, max_size=3))}
    return array, affine, header


@given(case=nifti_files(), kind=st.sampled_from(["image", "label"]))
@SETTINGS
def test_random_nifti_headers_give_a_volume_or_one_medgen_error(case, kind):
    array, affine, header = case
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "random.nii.gz"
        image = nib.Nifti1Image(array, None, dtype=array.dtype)
        try:
            image.set_sform(affine, code=header["sform_code"])
            image.set_qform(affine if np.all(np.isfinite(affine)) else None, code=header["qform_code"])
        except Exception:  # noqa: BLE001 - nibabel refuses some qforms (e.g. singular): keep the sform only
            image.set_qform(None, code=0)
        image.header["pixdim"][1:4] = header["pixdim"]
        try:
            nib.save(image, str(path))
        except Exception:  # noqa: BLE001 - nibabel would not write this header; nothing to read
            hypothesis.assume(False)
        _read(path, kind)


@st.composite
def sitk_files(draw):
    shape = draw(st.one_of(st.tuples(st.integers(2, 5), st.integers(2, 5), st.integers(2, 5)),
                           st.lists(st.integers(1, 5), min_size=2, max_size=4).map(tuple)))
    dtype = draw(st.sampled_from(SITK_DTYPES))
    array = _values(shape, dtype, draw)
    dim = len(shape)
    spacing = draw(st.lists(st.one_of(st.floats(1e-3, 10), st.sampled_from([1e-9, 1e9])), min_size=dim, max_size=dim))
    origin = draw(st.lists(st.floats(-1e4, 1e4), min_size=dim, max_size=dim))
    # a random rotation or reflection (SimpleITK itself refuses non-orthonormal directions)
    random = np.array(draw(st.lists(st.floats(-1, 1), min_size=dim * dim, max_size=dim * dim))).reshape(dim, dim)
    q, r = np.linalg.qr(random + np.eye(dim) * 1e-3)
    direction = (q * np.sign(np.diag(r) + 1e-12)).ravel() if draw(st.booleans()) else np.eye(dim).ravel()
    suffix = draw(st.sampled_from([".mha", ".nrrd"]))
    return array, spacing, origin, direction, suffix


@given(case=sitk_files(), kind=st.sampled_from(["image", "label"]))
@SETTINGS
def test_random_sitk_headers_give_a_volume_or_one_medgen_error(case, kind):
    array, spacing, origin, direction, suffix = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"random{suffix}"
        image = sitk.GetImageFromArray(array)
        try:
            image.SetSpacing(spacing)
            image.SetOrigin(origin)
            image.SetDirection(direction.tolist())
        except RuntimeError:  # SimpleITK refuses a singular direction itself
            hypothesis.assume(False)
        sitk.WriteImage(image, str(path))
        _read(path, kind)


@given(shape=shapes, dtype=st.sampled_from(NIFTI_DTYPES + ["bool", "float16"]),
       affine=st.lists(odd_float, min_size=16, max_size=16), seed=st.integers(0, 2**16),
       odd=odd_float, kind=st.sampled_from(["image", "label"]))
@SETTINGS
def test_check_volume_accepts_or_refuses_any_array_and_affine(shape, dtype, affine, seed, odd, kind):
    array = np.random.default_rng(seed).normal(0, 100, size=shape)
    array.flat[0] = odd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = array.astype(dtype)
    volume = Volume(array, np.array(affine, float).reshape(4, 4), source="memory.nii.gz")
    try:
        result = check_volume(volume, kind=kind)
    except MedgenError as exc:
        assert "memory.nii.gz" in exc.one_line()
        hypothesis.event(f"refused: {exc.message[:40]}")
        return
    hypothesis.event("checked as a volume")
    _assert_valid(result, Path("memory.nii.gz"), kind)
