"""Real sample data (../shared/data): DICOM series and label maps land on the right physical grid.

The label maps are TotalSegmentator model predictions, not manual ground truth.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from medgen.io import read_volume
from medgen.io.geometry import reorient, resample_like

pytestmark = pytest.mark.real_data


def _same_lattice(a, b) -> bool:
    """True when two volumes' voxel centres coincide (same grid up to a permutation/flip of axes)."""
    matrix = np.linalg.inv(a.affine) @ b.affine
    perm = np.abs(np.round(matrix[:3, :3]))
    return (np.allclose(matrix, np.round(matrix), atol=1e-3) and np.array_equal(perm.sum(0), np.ones(3))
            and sorted(a.shape) == sorted(b.shape))


def test_totalsegmentator_dicom_matches_its_label_map_in_world_coordinates(sample_path):
    folder = sample_path("totalsegmentator")
    ct = read_volume(folder / "example_ct_dicom")
    labels = read_volume(folder / "example_seg_dicom.nii.gz", kind="label")
    assert ct.shape == (512, 512, 20) and ct.meta["modality"] == "CT"
    assert ct.spacing == pytest.approx((0.9765625, 0.9765625, 2.0), abs=1e-4)
    assert ct.orientation == "LPS" and labels.orientation == "LAS"  # different voxel orders ...
    assert _same_lattice(ct, labels)  # ... of one physical grid
    ids = {name: int(i) for i, name in json.loads((folder / "class_map_total_and_total_mr.json").read_text())["total"].items()}
    on_ct = resample_like(labels, ct, order=0)
    # the reoriented label map is a pure re-indexing: nothing lost or invented
    assert np.array_equal(np.bincount(on_ct.array.ravel(), minlength=256), np.bincount(labels.array.ravel(), minlength=256))
    liver, aorta = ct.array[on_ct.array == ids["liver"]], ct.array[on_ct.array == ids["aorta"]]
    assert liver.size > 1000 and aorta.size > 100
    assert float(liver.mean()) == pytest.approx(89.0, abs=5.0)
    assert float(aorta.mean()) == pytest.approx(177.0, abs=5.0)  # contrast-enhanced
    # array-to-array (ignoring the geometry) is wrong: this is what a flip bug looks like
    assert float(ct.array[labels.array == ids["liver"]].mean()) == pytest.approx(-75.0, abs=5.0)
    assert float(ct.array[labels.array == ids["aorta"]].mean()) == pytest.approx(-171.0, abs=5.0)
    # both ways round: the CT brought onto the label grid gives the same means
    ct_on_labels = resample_like(ct, labels, order=1)
    assert float(ct_on_labels.array[labels.array == ids["liver"]].mean()) == pytest.approx(float(liver.mean()), abs=1e-3)


def test_dicom_seg_refuses_a_series_anonymised_without_uids(sample_path, tmp_path):
    from medgen.errors import InputError
    from medgen.io.dicom_seg import write_dicom_seg

    folder = sample_path("totalsegmentator")
    labels = read_volume(folder / "example_seg_dicom.nii.gz", kind="label")
    with pytest.raises(InputError, match="SeriesInstanceUID") as info:
        write_dicom_seg(labels, folder / "example_ct_dicom", tmp_path / "seg.dcm", {5: "liver"})
    assert "Fix:" in str(info.value) and not (tmp_path / "seg.dcm").exists()


def test_mridir_mr_dicom_subset(sample_path):
    folder = sample_path("mridir_phantom", "mr_t2_dicom_subset")
    mr = read_volume(folder)
    assert mr.shape == (512, 512, 24)
    assert mr.spacing == pytest.approx((0.5, 0.5, 2.5), abs=1e-4)
    assert mr.meta["modality"] == "MR" and len(mr.meta["files"]) == 24
    assert float(mr.array.max()) > 100 and float(mr.array.std()) > 1
    # slices ordered by position (file names are not in position order here)
    import pydicom

    normal = np.cross(*np.asarray(pydicom.dcmread(mr.meta["files"][0]).ImageOrientationPatient, float).reshape(2, 3))
    positions = [float(np.dot(normal, np.asarray(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, float)))
                 for f in mr.meta["files"]]
    assert np.allclose(np.diff(positions), 2.5, atol=1e-3)
    ras = reorient(mr, "RAS")
    np.testing.assert_array_equal(reorient(ras, mr.orientation).array, mr.array)


def test_dcmqi_nrrd_label_maps_read_on_the_ct_grid(sample_path):
    folder = sample_path("dcmqi_ct_seg")
    ct = read_volume(folder / "ct-3slice")
    assert ct.shape == (512, 512, 3)
    expected = {"liver_seg": {0, 1}, "spine_seg": {0, 2}, "heart_seg": {0, 3}, "liver_spine_seg": {0, 1, 2}}
    for name, values in expected.items():
        label = read_volume(folder / f"{name}.nrrd", kind="label")
        assert label.same_grid(ct), name
        assert set(np.unique(label.array).tolist()) == values
        assert label.array.dtype == np.uint8
    liver = read_volume(folder / "liver_seg.nrrd", kind="label").array == 1
    spine = read_volume(folder / "spine_seg.nrrd", kind="label").array == 2
    assert float(ct.array[spine].mean()) > float(ct.array[liver].mean()) + 50  # bone brighter than liver
