"""Bad inputs at the reader level and unsafe writes: one clear error naming the file and the fix."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medgen.errors import InputError, OutputError
from medgen.io import Volume, read_volume, write_volume
from medgen.io.dicom_write import write_dicom_series
from medgen.io.testing import asymmetric_phantom


def _assert_clear(exc_info, path, *words):
    """The error names the path, says how to fix it and contains the given words."""
    text = str(exc_info.value)
    assert str(path) in text, text
    assert "Fix:" in text, text
    for word in words:
        assert word.lower() in text.lower(), (word, text)
    assert "\n" not in exc_info.value.one_line()


def _save_nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture()
def real_nifti(tmp_path):
    """A genuine gzip-compressed NIfTI, large enough that cutting it truncates the voxel data."""
    rng = np.random.default_rng(0)
    return _save_nifti(tmp_path / "good.nii.gz", rng.normal(size=(40, 40, 30)).astype(np.float32))


def test_truncated_nifti(tmp_path, real_nifti):
    data = real_nifti.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        read_volume(cut)
    _assert_clear(info, cut, "truncated")


@pytest.mark.parametrize("content", [b"patient,age\n1,42\n", gzip.compress(b"not an image at all " * 50)],
                         ids=["text", "gzipped-text"])
def test_non_image_file_with_nifti_extension(tmp_path, content):
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_volume(path)
    _assert_clear(info, path, "NIfTI")


@pytest.mark.parametrize("name", ["empty.nii.gz", "empty.nrrd", "empty.mha"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.touch()
    with pytest.raises(InputError) as info:
        read_volume(path)
    _assert_clear(info, path)


def test_unsupported_extension_and_missing_path(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(InputError) as info:
        read_volume(path)
    _assert_clear(info, path, "unsupported")
    with pytest.raises(InputError) as info:
        read_volume(tmp_path / "nope.nii.gz")
    _assert_clear(info, tmp_path / "nope.nii.gz", "does not exist")


def test_empty_folder_and_folder_without_dicom(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as info:
        read_volume(empty)
    _assert_clear(info, empty, "empty")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(InputError) as info:
        read_volume(junk)
    _assert_clear(info, junk, "no readable DICOM")


def test_folder_with_two_series_lists_them(tmp_path):
    image, _ = asymmetric_phantom("axial_lps", shape=(8, 9, 5))
    ct = write_dicom_series(image, tmp_path / "a", modality="CT", series_description="venous phase")
    mr = write_dicom_series(image.with_array(image.array + 1), tmp_path / "b", modality="MR",
                            series_description="t2 axial")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for prefix, folder in (("ct", ct), ("mr", mr)):
        for f in folder.glob("*.dcm"):
            shutil.copy(f, mixed / f"{prefix}_{f.name}")
    uid_ct = pydicom.dcmread(next(ct.glob("*.dcm"))).SeriesInstanceUID
    uid_mr = pydicom.dcmread(next(mr.glob("*.dcm"))).SeriesInstanceUID
    (mixed / "mr_IM00005.dcm").unlink()  # the MR series keeps 4 slices: counts differ
    with pytest.raises(InputError) as info:
        read_volume(mixed)
    _assert_clear(info, mixed, uid_ct, uid_mr, "venous phase", "t2 axial", "CT", "MR", "5 slices", "4 slices",
                  "--series-uid")
    picked = read_volume(mixed, series_uid=uid_ct)
    assert picked.series_uid == uid_ct and picked.meta["modality"] == "CT"
    np.testing.assert_array_equal(picked.array, image.array)
    with pytest.raises(InputError) as info:
        read_volume(mixed, series_uid="1.2.3.4")
    _assert_clear(info, mixed, "1.2.3.4", uid_ct)


def test_dicom_series_with_a_missing_slice(tmp_path):
    image, _ = asymmetric_phantom("sagittal", shape=(8, 9, 7))
    folder = write_dicom_series(image, tmp_path / "s", instance_order="shuffled")
    (folder / "IM00004.dcm").unlink()
    with pytest.raises(InputError) as info:
        read_volume(folder)
    _assert_clear(info, folder, "missing slice")


def test_dicom_series_with_uneven_spacing(tmp_path):
    image, _ = asymmetric_phantom("axial_lps", shape=(8, 9, 7))
    folder = write_dicom_series(image, tmp_path / "s")
    path = folder / "IM00006.dcm"
    ds = pydicom.dcmread(path)
    position = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [position[0], position[1], position[2] - 0.6]  # 1.4 mm gap then 2.6 mm
    ds.save_as(path)
    with pytest.raises(InputError) as info:
        read_volume(folder)
    _assert_clear(info, folder, "uneven slice spacing")


def test_2d_images(tmp_path):
    nii = _save_nifti(tmp_path / "slice.nii.gz", np.zeros((16, 12), np.float32))
    with pytest.raises(InputError) as info:
        read_volume(nii)
    _assert_clear(info, nii, "2D")
    mha = tmp_path / "slice.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((12, 16), np.float32)), str(mha))
    with pytest.raises(InputError) as info:
        read_volume(mha)
    _assert_clear(info, mha, "2D")


def test_4d_images(tmp_path):
    frames = np.random.default_rng(0).normal(size=(6, 7, 5, 3)).astype(np.float32)
    nii = _save_nifti(tmp_path / "dynamic.nii.gz", frames)
    with pytest.raises(InputError) as info:
        read_volume(nii)
    _assert_clear(info, nii, "4D", "frame")
    mha = tmp_path / "dynamic.mha"
    sitk.WriteImage(sitk.GetImageFromArray(frames.transpose(3, 2, 1, 0), isVector=False), str(mha))
    with pytest.raises(InputError) as info:
        read_volume(mha)
    _assert_clear(info, mha, "4D")
    # a trailing singleton 4th axis is just a 3D volume
    affine = np.diag([0.5, 0.6, 2.0, 1.0])
    single = _save_nifti(tmp_path / "single.nii.gz", frames[..., :1], affine)
    vol = read_volume(single)
    assert vol.shape == (6, 7, 5)
    np.testing.assert_array_equal(vol.array, frames[..., 0])
    np.testing.assert_allclose(vol.affine, affine)
    single_mha = tmp_path / "single.mha"
    sitk.WriteImage(sitk.GetImageFromArray(frames[..., :1].transpose(3, 2, 1, 0), isVector=False), str(single_mha))
    vol = read_volume(single_mha)
    assert vol.shape == (6, 7, 5)
    np.testing.assert_array_equal(vol.array, frames[..., 0])


def test_nan_voxels(tmp_path):
    array = np.ones((6, 7, 5), np.float32)
    array[2, 3, 1] = np.nan
    array[0, 0, 0] = np.inf
    path = _save_nifti(tmp_path / "nan.nii.gz", array)
    with pytest.raises(InputError) as info:
        read_volume(path)
    _assert_clear(info, path, "2 NaN/Inf")


def test_label_maps_must_hold_whole_non_negative_ids(tmp_path):
    probabilities = _save_nifti(tmp_path / "prob.nii.gz", np.linspace(0, 1, 210, dtype=np.float32).reshape(6, 7, 5))
    with pytest.raises(InputError) as info:
        read_volume(probabilities, kind="label")
    _assert_clear(info, probabilities, "non-integer")
    negative = _save_nifti(tmp_path / "neg.nii.gz", -np.ones((6, 7, 5), np.int16))
    with pytest.raises(InputError) as info:
        read_volume(negative, kind="label")
    _assert_clear(info, negative, "negative")
    whole = _save_nifti(tmp_path / "whole.nii.gz", np.arange(210, dtype=np.float32).reshape(6, 7, 5) % 4)
    assert read_volume(whole, kind="label").array.dtype == np.uint8
    big = _save_nifti(tmp_path / "big.nii.gz", (np.arange(210, dtype=np.int32).reshape(6, 7, 5) * 300))
    assert read_volume(big, kind="label").array.max() == 209 * 300


def test_writer_refuses_to_overwrite_and_to_write_onto_inputs(tmp_path):
    image, _ = asymmetric_phantom("axial_ras", shape=(6, 7, 5))
    path = write_volume(image, tmp_path / "out.nii.gz")
    with pytest.raises(OutputError) as info:
        write_volume(image, path)
    assert str(path) in str(info.value) and "--overwrite" in str(info.value)
    write_volume(image.with_array(image.array * 2), path, overwrite=True)
    np.testing.assert_array_equal(read_volume(path).array, image.array * 2)
    read_back = read_volume(path)
    with pytest.raises(OutputError, match="is an input"):
        write_volume(read_back, path, overwrite=True)  # its own source
    other = tmp_path / "other.nrrd"
    with pytest.raises(OutputError, match="is an input"):
        write_volume(image, other, overwrite=True, inputs=(str(other),))
    with pytest.raises(OutputError, match="unsupported extension"):
        write_volume(image, tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_writer_is_atomic(tmp_path, monkeypatch):
    image, _ = asymmetric_phantom("axial_ras", shape=(6, 7, 5))
    previous = write_volume(image, tmp_path / "kept.nii.gz")

    def broken_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OutputError, match="could not be written"):
        write_volume(image, tmp_path / "new.nii.gz")
    with pytest.raises(OutputError):
        write_volume(image.with_array(image.array + 5), previous, overwrite=True)
    monkeypatch.setattr(nib, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash mid-write")))
    with pytest.raises(RuntimeError):
        write_volume(image, tmp_path / "new.nii.gz")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.nii.gz"]  # no output, no temp files
    np.testing.assert_array_equal(read_volume(previous).array, image.array)  # old file untouched


def test_detached_header_formats_are_written_atomically(tmp_path):
    image, _ = asymmetric_phantom("oblique", shape=(6, 7, 5))
    for name in ("vol.mhd", "vol.nhdr"):
        path = write_volume(image, tmp_path / name)
        back = read_volume(path)
        np.testing.assert_array_equal(back.array, image.array)
        np.testing.assert_allclose(back.affine, image.affine, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary names left or referenced
    assert "ElementDataFile = vol.zraw" in (tmp_path / "vol.mhd").read_text()


def test_writer_stores_awkward_dtypes(tmp_path):
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    mask = Volume(np.random.default_rng(0).random((6, 7, 5)) > 0.5, affine)
    ids = Volume(np.arange(210, dtype=np.int64).reshape(6, 7, 5), affine)
    for vol, name in ((mask, "mask.nii.gz"), (ids, "ids.nii.gz"), (mask, "mask.nrrd")):
        back = read_volume(write_volume(vol, tmp_path / name), kind="label")
        np.testing.assert_array_equal(back.array, vol.array.astype(np.int64))


def _edit_slices(folder, edit):
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)


def test_dicom_series_with_gantry_tilt_or_mixed_orientations(tmp_path):
    image, _ = asymmetric_phantom("axial_lps", shape=(8, 9, 6))
    tilted = write_dicom_series(image, tmp_path / "tilted")

    def tilt(ds):  # each slice 0.5 mm further posterior: a sheared stack
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.25 * (z + 101.0), z]

    _edit_slices(tilted, tilt)
    with pytest.raises(InputError) as info:
        read_volume(tilted)
    _assert_clear(info, tilted, "gantry tilt")
    mixed = write_dicom_series(image, tmp_path / "mixed")
    odd = pydicom.dcmread(mixed / "IM00003.dcm")
    odd.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    odd.save_as(mixed / "IM00003.dcm")
    with pytest.raises(InputError) as info:
        read_volume(mixed)
    _assert_clear(info, mixed, "different orientations")
