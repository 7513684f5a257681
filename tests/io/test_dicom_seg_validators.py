"""medgen's DICOM SEG accepted by other tools: dicom3tools ``dciodvfy`` and dcmqi ``segimage2itkimage``.

For an axial MR series (real, MRI-DIR), an oblique MR series and SEGs with many labels (the real
61-label TotalSegmentator map of the real example CT; 120 synthetic labels):

* ``dciodvfy`` reports no error. Accepted warnings (:data:`ACCEPTED_WARNINGS`), both copied from
  the source series, whose patient/study identity the SEG must repeat unchanged:
  the source has no Study ID (only a DICOMDIR builder needs it), and its Patient's Name has no
  ``^`` component separator ("retired person-name form"). Any other warning fails the test;
* dcmqi reads the SEG back equal to the NIfTI mask voxel for voxel (world coordinates), with the
  same label per voxel (segment numbers mapped back through medgen's SegmentDescription);
* the segment metadata carries SNOMED CT codes, laterality, distinct colours and the algorithm.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medgen import __version__
from medgen.io import read_volume, write_volume
from medgen.io.dicom_seg import write_dicom_seg
from medgen.io.dicom_write import write_dicom_series
from medgen.io.geometry import reorient, resample_like
from medgen.io.testing import asymmetric_phantom
from medgen.io.volume import Volume

DCIODVFY = shutil.which("dciodvfy")
SEGIMAGE2ITK = shutil.which("segimage2itkimage") or str(Path(sys.executable).with_name("segimage2itkimage"))
HAVE_DCMQI = Path(SEGIMAGE2ITK).exists()

ACCEPTED_WARNINGS = (
    re.compile(r"Missing attribute or value that would be needed to build DICOMDIR - Study ID"),
    re.compile(r"\(0x0010,0x0010\) PN Patient's Name .* Retired Person Name form"),
)
PHANTOM_NAMES = {1: "liver", 2: "kidney_left", 3: "aorta", 4: "vertebrae_L3", 5: "mystery_structure"}


def _dciodvfy(path: Path) -> list[str]:
    """dciodvfy's warnings; fails the test on any error or unaccepted warning."""
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(errors)
    warnings = [line for line in lines if line.startswith("Warning")]
    unexpected = [w for w in warnings if not any(p.search(w) for p in ACCEPTED_WARNINGS)]
    assert not unexpected, "\n".join(unexpected)
    return warnings


def _dcmqi_label_map(seg_path: Path, out_dir: Path) -> Volume:
    """dcmqi's reading of the SEG as one label map with medgen's label ids."""
    out_dir.mkdir()
    run = subprocess.run([SEGIMAGE2ITK, "--inputDICOM", str(seg_path), "--outputDirectory", str(out_dir),
                          "--outputType", "nifti", "--mergeSegments"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    [merged] = sorted(out_dir.glob("*.nii.gz"))  # non-overlapping segments: one file
    meta = json.loads((out_dir / "meta.json").read_text())
    lut = np.zeros(65536, np.uint16)
    for group in meta["segmentAttributes"]:
        for seg in group:
            lut[int(seg["labelID"])] = int(re.search(r"medgen label id (\d+)", seg["SegmentDescription"]).group(1))
    volume = read_volume(merged, kind="label")
    return volume.with_array(lut[np.asarray(volume.array, np.int64)])


def _check(tmp_path: Path, series: Path, label: Volume, names: dict[int, str]) -> pydicom.Dataset:
    """Write NIfTI + SEG from ``label``; both tools accept the SEG; dcmqi's reading equals the NIfTI."""
    mask = read_volume(write_volume(label, tmp_path / "mask.nii.gz"), kind="label")
    seg_path = write_dicom_seg(mask, series, tmp_path / "mask_seg.dcm", names, algorithm_name="medgen test-model")
    if DCIODVFY:
        _dciodvfy(seg_path)
    if HAVE_DCMQI:
        dcmqi = _dcmqi_label_map(seg_path, tmp_path / "dcmqi")
        on_mask = resample_like(dcmqi, mask, order=0, cval=0).array
        np.testing.assert_array_equal(on_mask, mask.array)
    ds = pydicom.dcmread(seg_path)
    colors = [tuple(item.RecommendedDisplayCIELabValue) for item in ds.SegmentSequence]
    assert len(set(colors)) == len(colors)  # distinct display colours
    for item in ds.SegmentSequence:
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("medgen test-model", __version__)
    return ds


def _shift(k0: int) -> np.ndarray:
    """Voxel-index shift by ``k0`` slices (the affine of a slab starting at slice ``k0``)."""
    out = np.eye(4)
    out[2, 3] = k0
    return out


def _codes(ds) -> dict[str, tuple[str, str, str | None]]:
    """SegmentLabel -> (category meaning, type code value, laterality meaning)."""
    out = {}
    for item in ds.SegmentSequence:
        ptype = item.SegmentedPropertyTypeCodeSequence[0]
        modifier = ptype.get("SegmentedPropertyTypeModifierCodeSequence")
        out[item.SegmentLabel] = (item.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning, ptype.CodeValue,
                                  modifier[0].CodeMeaning if modifier else None)
    return out


pytestmark = pytest.mark.skipif(not DCIODVFY and not HAVE_DCMQI,
                                reason="neither dciodvfy (apt-get install dicom3tools) nor dcmqi (pip install dcmqi) "
                                       "is installed")


@pytest.mark.real_data
def test_axial_real_mr_series(tmp_path, sample_data):
    series = sample_data / "mridir_phantom" / "mr_t2_dicom_subset"
    if not series.is_dir():
        pytest.skip(f"{series} not found")
    mr = read_volume(series)
    edges = np.quantile(mr.array, [0.5, 0.7, 0.85, 0.95, 0.99])
    label = mr.with_array(np.digitize(mr.array, edges).astype(np.uint8))  # 5 intensity classes
    ds = _check(tmp_path, series, reorient(label, "RAS"), PHANTOM_NAMES)
    codes = _codes(ds)
    assert codes["liver"] == ("Anatomical Structure", "10200004", None)
    assert codes["kidney_left"] == ("Anatomical Structure", "64033007", "Left")
    assert codes["vertebrae_L3"][1] == "51282000" and codes["aorta"][1] == "15825003"
    assert codes["mystery_structure"] == ("Tissue", "85756007", None)  # generic tissue for unknown names


def test_oblique_mr_series(tmp_path):
    image, label = asymmetric_phantom("oblique", shape=(24, 20, 12))
    series = write_dicom_series(image.with_array(np.rint(image.array * 100)), tmp_path / "series", modality="MR",
                                instance_order="shuffled")
    _check(tmp_path, series, label, PHANTOM_NAMES)


@pytest.mark.real_data
def test_many_labels_real_totalsegmentator_map_on_real_ct(tmp_path, sample_data):
    """The real 61-label TotalSegmentator map of the real example CT (written as a CT DICOM series:
    the DICOM example shipped there is anonymised without UIDs, so no SEG can reference it)."""
    folder = sample_data / "totalsegmentator"
    ct_path, seg_path = folder / "example_ct.nii.gz", folder / "example_seg_fast_force_split.nii.gz"
    if not ct_path.exists() or not seg_path.exists():
        pytest.skip("TotalSegmentator example not found")
    names = {int(k): v for k, v in
             json.loads((folder / "class_map_total_and_total_mr.json").read_text())["total"].items()}
    ct, label = read_volume(ct_path), read_volume(seg_path, kind="label")
    # the 6 axial slices with the most labels (dciodvfy's time grows with the number of frames)
    counts = [len(np.unique(label.array[:, :, k])) for k in range(label.shape[2])]
    k0 = int(np.argmax(np.convolve(counts, np.ones(6), mode="valid")))
    ct, label = (Volume(np.ascontiguousarray(v.array[:, :, k0:k0 + 6]), v.affine @ _shift(k0)) for v in (ct, label))
    series = write_dicom_series(ct.with_array(np.rint(ct.array)), tmp_path / "ct_series", modality="CT")
    ds = _check(tmp_path, series, label, names)
    assert len(ds.SegmentSequence) >= 25
    codes = _codes(ds)
    generic = sorted(name for name, c in codes.items() if c[1] == "85756007")
    assert len(generic) <= 0.1 * len(codes), generic  # nearly every class has its own SNOMED CT code
    assert codes["liver"][1] == "10200004" and codes["kidney_right"] == ("Anatomical Structure", "64033007", "Right")


def test_many_synthetic_labels(tmp_path):
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(0, 100, (31, 12, 4)).astype(np.float32), np.diag([1.2, 1.1, 3.0, 1.0]))
    series = write_dicom_series(image.with_array(np.rint(image.array)), tmp_path / "series", modality="MR")
    i, _, k = np.indices(image.shape)
    ids = np.where(i < 30, 1 + i + 30 * k, 0).astype(np.uint8)  # 120 labels, each on one slice (one frame)
    names = {i: f"structure_{i}" for i in range(1, 121)}
    ds = _check(tmp_path, series, image.with_array(ids), names)
    assert len(ds.SegmentSequence) == 120
