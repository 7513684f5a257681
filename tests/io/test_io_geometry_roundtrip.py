"""Geometry round trips: asymmetric phantoms in many orientations through every format.

Every image voxel has a unique value, so an exact array match after a round trip proves there was
no flip, axis swap or shift; the label blobs are looked up from world points to prove the affine
read back places them where they were.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medgen.io import Volume, read_volume, write_volume
from medgen.io.dicom_write import write_dicom_series
from medgen.io.geometry import reorient, resample_like, resample_to_grid
from medgen.io.testing import ORIENTATIONS, asymmetric_phantom
from medgen.io.volume import voxel_to_world, world_to_voxel

CASES = [(name, negate) for name in ORIENTATIONS for negate in (False, True)]
CASE_IDS = [f"{name}{'-negated' if negate else ''}" for name, negate in CASES]
FILE_FORMATS = [".nii.gz", ".nrrd", ".mha"]


def _flip_k_affine(affine: np.ndarray, n_slices: int) -> np.ndarray:
    """The affine of the same grid with the slice axis reversed."""
    flip = np.eye(4)
    flip[2, 2] = -1
    flip[2, 3] = n_slices - 1
    return affine @ flip


def _assert_blobs_at_world_points(original: Volume, read_label: Volume) -> None:
    """Each blob's voxels, taken to world and back into the read volume, land on the same label."""
    for value in range(1, int(original.array.max()) + 1):
        ijk = np.argwhere(original.array == value)
        world = voxel_to_world(original.affine, ijk.astype(float))
        back = np.rint(world_to_voxel(read_label.affine, world)).astype(int)
        assert np.all(back >= 0) and np.all(back < np.asarray(read_label.shape))
        assert np.all(read_label.array[tuple(back.T)] == value), f"blob {value} moved"


@pytest.mark.parametrize("orientation,negate", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("suffix", FILE_FORMATS)
def test_file_round_trip_is_exact(tmp_path, orientation, negate, suffix):
    image, label = asymmetric_phantom(orientation, negate_slices=negate)
    write_volume(image, tmp_path / f"image{suffix}")
    write_volume(label, tmp_path / f"label{suffix}")
    image_back = read_volume(tmp_path / f"image{suffix}")
    label_back = read_volume(tmp_path / f"label{suffix}", kind="label")
    for original, back in ((image, image_back), (label, label_back)):
        assert back.shape == original.shape
        np.testing.assert_allclose(back.affine, original.affine, atol=1e-3)
        np.testing.assert_array_equal(back.array, original.array)
    assert label_back.orientation == label.orientation
    _assert_blobs_at_world_points(label, label_back)


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
@pytest.mark.parametrize("orientation,negate", CASES, ids=CASE_IDS)
def test_dicom_series_round_trip(tmp_path, orientation, negate, order):
    image, label = asymmetric_phantom(orientation, negate_slices=negate)
    folder = write_dicom_series(image, tmp_path / "series", modality="CT", instance_order=order, seed=3)
    back = read_volume(folder)
    nk = image.shape[2]
    # Readers order slices along the plane normal (row x column): a negated slice axis comes back reversed.
    expected_affine = _flip_k_affine(image.affine, nk) if negate else image.affine
    expected_array = image.array[:, :, ::-1] if negate else image.array
    assert back.shape == image.shape
    np.testing.assert_allclose(back.affine, expected_affine, atol=1e-3)
    np.testing.assert_array_equal(back.array, expected_array)  # whole numbers: stored exactly
    # In world coordinates it is the same image whatever the slice order.
    np.testing.assert_array_equal(resample_like(back, image, order=0).array, image.array)
    np.testing.assert_array_equal(resample_like(back, image, order=1).array, image.array)
    label_series = write_dicom_series(label.with_array(label.array.astype(np.float32)), tmp_path / "labels",
                                      modality="MR", instance_order=order)
    label_back = read_volume(label_series, kind="label")
    _assert_blobs_at_world_points(label, label_back)


def test_dicom_headers_follow_the_standard(tmp_path):
    image, _ = asymmetric_phantom("coronal", spacing=(0.7, 0.9, 2.5))
    folder = write_dicom_series(image, tmp_path / "s", modality="MR", instance_order="reversed",
                                series_description="coronal test", patient_id="P1")
    headers = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    assert len(headers) == image.shape[2]
    first = headers[0]
    assert first.SOPClassUID == pydicom.uid.MRImageStorage
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    # PixelSpacing = (between rows, between columns) = (j spacing, i spacing); Rows = J, Columns = I.
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([0.9, 0.7])
    assert (first.Rows, first.Columns) == (image.shape[1], image.shape[0])
    assert float(first.SliceThickness) == pytest.approx(2.5)
    assert float(first.SpacingBetweenSlices) == pytest.approx(2.5)
    # coronal: rows run to patient left (LPS +x), columns down (LPS -z)
    assert [float(v) for v in first.ImageOrientationPatient] == pytest.approx([1, 0, 0, 0, 0, -1])
    assert len({h.FrameOfReferenceUID for h in headers}) == 1
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert len({h.SOPInstanceUID for h in headers}) == len(headers)
    assert {h.SeriesDescription for h in headers} == {"coronal test"} and first.PatientID == "P1"
    # InstanceNumber runs against the slice position: readers must sort by position.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    for h in headers:
        k = image.shape[2] - int(h.InstanceNumber)
        np.testing.assert_allclose([float(v) for v in h.ImagePositionPatient], lps[:3, 2] * k + lps[:3, 3], atol=1e-4)
        np.testing.assert_array_equal(h.pixel_array, image.array[:, :, k].T)  # MR values here are whole numbers
    ct = write_dicom_series(image, tmp_path / "ct", modality="CT")
    assert pydicom.dcmread(next(ct.glob("*.dcm"))).SOPClassUID == pydicom.uid.CTImageStorage


def test_dicom_rescale_keeps_fractional_values_within_half_a_step(tmp_path):
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(0.3, 50.0, (9, 8, 6)).astype(np.float32), np.diag([1.2, 1.2, 3.0, 1.0]))
    back = read_volume(write_dicom_series(image, tmp_path / "s", modality="CT"))
    ds = pydicom.dcmread(next((tmp_path / "s").glob("*.dcm")))
    slope = float(ds.RescaleSlope)
    assert slope < 0.01 and ds.pixel_array.dtype == np.int16
    assert np.abs(back.array - image.array).max() <= slope / 2 + 1e-4


def test_dicom_writer_refuses_sheared_grids_and_existing_folders(tmp_path):
    image, _ = asymmetric_phantom("axial_ras")
    sheared = image.affine.copy()
    sheared[0, 2] = 0.5
    with pytest.raises(ValueError, match="sheared"):
        write_dicom_series(Volume(image.array, sheared), tmp_path / "sheared")
    folder = write_dicom_series(image, tmp_path / "s")
    from medgen.errors import OutputError

    with pytest.raises(OutputError, match="already exists"):
        write_dicom_series(image, folder)
    before = sorted(p.name for p in folder.iterdir())
    write_dicom_series(image.with_array(image.array + 1), folder, overwrite=True)
    assert read_volume(folder).array.max() == image.array.max() + 1
    assert len(list(folder.iterdir())) == len(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary folders left


def test_dicom_writer_is_atomic(tmp_path, monkeypatch):
    image, _ = asymmetric_phantom("axial_lps")
    calls = {"n": 0}
    original_save = pydicom.dataset.Dataset.save_as

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(28, "No space left on device")
        return original_save(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", failing_save)
    from medgen.errors import OutputError

    with pytest.raises(OutputError, match="could not be written"):
        write_dicom_series(image, tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("orientation,negate", CASES, ids=CASE_IDS)
def test_reorient_to_ras_and_back_is_exact(orientation, negate):
    image, label = asymmetric_phantom(orientation, negate_slices=negate)
    ras = reorient(image, "RAS")
    assert ras.orientation == "RAS"
    back = reorient(ras, image.orientation)
    np.testing.assert_array_equal(back.array, image.array)
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-9)
    # the RAS copy is the same image in world coordinates
    np.testing.assert_array_equal(resample_like(ras, image, order=1).array, image.array)
    label_ras = reorient(label, "RAS")
    np.testing.assert_array_equal(resample_like(label_ras, label, order=0).array, label.array)
    _assert_blobs_at_world_points(label, label_ras)


def test_nearest_neighbour_keeps_edge_slices_despite_float_noise():
    """Grids that coincide up to float rounding must map exactly (no slice lost at an edge)."""
    label = Volume(np.ones((4, 5, 3), np.uint8), np.array([[-0.810547, 0, 0, 235.2],
                                                            [0, -0.810547, 0, 226.8],
                                                            [0, 0, 1.0, -128.69], [0, 0, 0, 1]]))
    flipped = reorient(label, "LPI")
    flipped.affine[2, 3] += 1e-9  # what a float32 header round trip typically adds
    out = resample_like(flipped, label, order=0)
    assert out.array.min() == 1
    out_linear = resample_like(flipped.with_array(flipped.array.astype(np.float32)), label, order=1, cval=-5)
    assert out_linear.array.min() == 1


def test_resampling_outside_the_field_of_view_uses_cval():
    vol = Volume(np.full((4, 4, 4), 7.0, np.float32), np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 2.4  # target voxels 0, 1 sit at source 2.4, 3.4 (inside); 2, 3 beyond 3.5
    out = resample_to_grid(vol, shifted, (4, 4, 4), order=1, cval=-1.0)
    assert out.array[:, 0, 0].tolist() == [7.0, 7.0, -1.0, -1.0]
    out0 = resample_to_grid(Volume(np.ones((4, 4, 4), np.uint8), np.eye(4)), shifted, (4, 4, 4), order=0)
    assert out0.array[:, 0, 0].tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize("orientation,negate", [("oblique", True), ("coronal", False)])
def test_multiframe_dicom_is_placed_by_frame_positions(tmp_path, orientation, negate):
    import highdicom as hd

    image, _ = asymmetric_phantom(orientation, negate_slices=negate)
    series = write_dicom_series(image, tmp_path / "series", instance_order="shuffled")
    datasets = [pydicom.dcmread(p) for p in sorted(series.glob("*.dcm"))]  # InstanceNumber order, not position
    multi = hd.legacy.LegacyConvertedEnhancedCTImage(datasets, hd.UID(), 2, hd.UID(), 1)
    (tmp_path / "mf").mkdir()
    multi.save_as(tmp_path / "mf" / "enhanced.dcm")
    back = read_volume(tmp_path / "mf")
    assert back.meta["multiframe"] and back.meta["modality"] == "CT"
    assert sorted(back.shape) == sorted(image.shape)
    np.testing.assert_array_equal(resample_like(back, image, order=0).array, image.array)


def test_nifti_with_only_a_qform_or_conflicting_forms(tmp_path):
    import nibabel as nib

    image, _ = asymmetric_phantom("oblique")
    qform_only = nib.Nifti1Image(image.array, None)
    qform_only.set_qform(image.affine, code=1)
    qform_only.set_sform(None, code=0)
    nib.save(qform_only, str(tmp_path / "q.nii.gz"))
    np.testing.assert_allclose(read_volume(tmp_path / "q.nii.gz").affine, image.affine, atol=1e-4)
    # sform wins over a different qform (NIfTI rule, as in ITK for scanner-space sforms)
    both = nib.Nifti1Image(image.array, None)
    both.set_qform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    both.set_sform(image.affine, code=2)
    nib.save(both, str(tmp_path / "qs.nii.gz"))
    np.testing.assert_allclose(read_volume(tmp_path / "qs.nii.gz").affine, image.affine, atol=1e-4)


def test_dicom_slices_with_different_rescale_are_decoded_each_with_its_own(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 3.0, (8, 9, 5)).astype(np.float32)
    folder = write_dicom_series(Volume(values, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "s")
    first = pydicom.dcmread(folder / "IM00001.dcm")  # slice 0: whole numbers, slope 1 (the rest: fractional slope)
    first.RescaleSlope, first.RescaleIntercept = "1", "0"
    first.PixelData = np.round(values[:, :, 0].T).astype("<i2").tobytes()
    first.save_as(folder / "IM00001.dcm")
    back = read_volume(folder)
    np.testing.assert_array_equal(back.array[:, :, 0], np.round(values[:, :, 0]))
    assert np.abs(back.array[:, :, 1:] - values[:, :, 1:]).max() < 1e-3
