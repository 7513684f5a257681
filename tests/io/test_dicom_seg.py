"""DICOM SEG: written from label maps in any orientation, read back voxel for voxel."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medgen.errors import InputError, OutputError
from medgen.io import Volume, read_volume, write_volume
from medgen.io.dicom_seg import read_dicom_seg, write_dicom_seg
from medgen.io.dicom_write import write_dicom_series
from medgen.io.geometry import reorient, resample_like
from medgen.io.testing import asymmetric_phantom

NAMES = {1: "liver", 2: "kidney_left", 3: "aorta", 4: "tiny_lesion"}


def _round_trip(tmp_path, series_folder, label: Volume, names: dict[int, str]):
    """Write the mask as NIfTI, build the SEG from the NIfTI, read both back on the series grid."""
    nifti = write_volume(label, tmp_path / "mask.nii.gz")
    mask = read_volume(nifti, kind="label")
    seg_path = write_dicom_seg(mask, series_folder, tmp_path / "mask_seg.dcm", names)
    seg, seg_names = read_dicom_seg(seg_path, series_folder)
    series = read_volume(series_folder)
    assert seg.same_grid(series)
    return mask, seg, seg_names, seg_path


@pytest.mark.parametrize("orientation,negate,order", [("axial_lps", False, "natural"),
                                                      ("oblique", True, "shuffled"),
                                                      ("sagittal", True, "reversed")])
def test_seg_round_trip_on_written_series(tmp_path, orientation, negate, order):
    image, label = asymmetric_phantom(orientation, negate_slices=negate)
    series_folder = write_dicom_series(image, tmp_path / "series", modality="MR", instance_order=order)
    # hand the writer the mask in another voxel order (RAS), as the pipeline produces it
    mask, seg, seg_names, seg_path = _round_trip(tmp_path, series_folder, reorient(label, "RAS"), NAMES)
    assert seg_names == NAMES
    # voxel for voxel equal to the NIfTI mask, compared in world coordinates ...
    np.testing.assert_array_equal(resample_like(seg, mask, order=0).array, mask.array)
    np.testing.assert_array_equal(resample_like(seg, label, order=0).array, label.array)
    # ... and the single-voxel label is at its world position
    ds = pydicom.dcmread(seg_path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.SegmentationType == "BINARY"
    assert [item.SegmentLabel for item in ds.SegmentSequence] == list(NAMES.values())
    series_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series_folder.glob("*.dcm")}
    referenced = {item.ReferencedSOPInstanceUID
                  for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == series_uids
    assert ds.FrameOfReferenceUID == pydicom.dcmread(next(series_folder.glob("*.dcm"))).FrameOfReferenceUID
    # Without the reference series the SEG places itself by its own plane positions.
    own, _ = read_dicom_seg(seg_path)
    np.testing.assert_array_equal(resample_like(own, label, order=0).array, label.array)


def test_seg_keeps_non_contiguous_label_ids_and_unnamed_labels(tmp_path):
    image, label = asymmetric_phantom("axial_ras", shape=(10, 9, 6))
    remapped = np.select([label.array == 1, label.array == 2, label.array == 3], [5, 9, 200], 0).astype(np.uint8)
    series_folder = write_dicom_series(image, tmp_path / "series", modality="CT")
    path = write_dicom_seg(label.with_array(remapped), series_folder, tmp_path / "seg.dcm", {5: "spleen", 200: "bone"})
    seg, names = read_dicom_seg(path, series_folder)
    assert names == {5: "spleen", 9: "label_9", 200: "bone"}
    np.testing.assert_array_equal(seg.array, remapped)


def test_seg_writer_refuses_bad_requests(tmp_path):
    image, label = asymmetric_phantom("axial_lps", shape=(8, 8, 5))
    series_folder = write_dicom_series(image, tmp_path / "series")
    with pytest.raises(InputError, match="empty"):
        write_dicom_seg(label.with_array(np.zeros_like(label.array)), series_folder, tmp_path / "a.dcm", NAMES)
    far = label.affine.copy()
    far[:3, 3] += 500.0
    with pytest.raises(InputError, match="does not overlap"):
        write_dicom_seg(Volume(label.array, far), series_folder, tmp_path / "b.dcm", NAMES)
    with pytest.raises(InputError, match="not an integer label map"):
        write_dicom_seg(label.with_array(label.array * 0.5), series_folder, tmp_path / "d.dcm", NAMES)
    path = write_dicom_seg(label.with_array(label.array.astype(np.float32)), series_folder, tmp_path / "c.dcm", NAMES)
    assert read_dicom_seg(path, series_folder)[1] == NAMES
    with pytest.raises(OutputError, match="already exists"):
        write_dicom_seg(label, series_folder, path, NAMES)
    with pytest.raises(OutputError, match="input"):
        write_dicom_seg(label, series_folder, next(series_folder.glob("*.dcm")), NAMES, overwrite=True)
    with pytest.raises(InputError, match="DICOM SEG"):
        read_dicom_seg(next(series_folder.glob("*.dcm")), series_folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.dcm", "series"]


@pytest.mark.real_data
def test_seg_round_trip_on_real_mr_series(sample_path, tmp_path):
    series_folder = sample_path("mridir_phantom", "mr_t2_dicom_subset")
    series = read_volume(series_folder)
    label = np.zeros(series.shape, np.uint8)
    label[100:180, 300:420, 2:9] = 1  # asymmetric blocks
    label[350:380, 60:90, 15:23] = 2
    label[40, 470, 20] = 3
    mask_lps = series.with_array(label)
    mask, seg, names, _ = _round_trip(tmp_path, series_folder, reorient(mask_lps, "RAS"),
                                      {1: "muscle", 2: "fat", 3: "marker"})
    assert names == {1: "muscle", 2: "fat", 3: "marker"}
    np.testing.assert_array_equal(seg.array, label)
    np.testing.assert_array_equal(resample_like(seg, mask, order=0).array, mask.array)


@pytest.mark.real_data
def test_read_dcmqi_liver_seg_matches_its_nrrd(sample_path):
    folder = sample_path("dcmqi_ct_seg")
    seg, names = read_dicom_seg(folder / "liver.dcm", folder / "ct-3slice")
    assert names == {1: "Liver"}
    ct = read_volume(folder / "ct-3slice")
    assert seg.same_grid(ct) and seg.shape == (512, 512, 3)
    nrrd = read_volume(folder / "liver_seg.nrrd", kind="label")
    assert nrrd.same_grid(ct)
    # the SEG is the liver of liver_seg.nrrd, voxel for voxel, on all three slices
    np.testing.assert_array_equal(seg.array, nrrd.array)
    assert all(int((seg.array[:, :, k] == 1).sum()) > 30000 for k in range(3))
    both = read_volume(folder / "liver_spine_seg.nrrd", kind="label")
    np.testing.assert_array_equal(seg.array == 1, both.array == 1)
    # liver on CT is soft tissue
    assert 0 < float(ct.array[seg.array == 1].mean()) < 200
