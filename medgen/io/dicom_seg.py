"""DICOM SEG output (and read-back) with highdicom, referencing the source DICOM series.

Writing maps the label map onto the source series in WORLD coordinates: the series is read with
:func:`medgen.io.read_volume` (slices ordered by position), the labels are resampled onto that
grid by nearest neighbour (an exact copy when the grids coincide, whatever the voxel order),
and frame ``k`` of the SEG pixel array is slice ``k`` of that grid, paired with the source
dataset at the same position. The pairing is checked against each dataset's own
ImagePositionPatient / ImageOrientationPatient before anything is written, so a wrong slice
order or a flipped plane is an error, never a silently mirrored mask.

One BINARY segment per label present. DICOM numbers segments 1..N; the original label id is
kept in each segment's free-text SegmentDescription (``"medgen label id 5"``) so that
:func:`read_dicom_seg` restores the same ids. Each segment carries what a viewer needs: coded
anatomy (SNOMED CT, with laterality; :mod:`medgen.io.seg_codes`), a distinct recommended display
colour and the algorithm identification (model name, medgen version).

Checked by other tools in CI (``tests/io/test_dicom_seg_validators.py``): dicom3tools' ``dciodvfy``
reports no errors, and dcmqi's ``segimage2itkimage`` reads it back voxel for voxel.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from medgen.errors import InputError, OutputError
from medgen.io.atomic import atomic_path, check_output_path
from medgen.io.dicom import volume_from_highdicom
from medgen.io.geometry import resample_like
from medgen.io.readers import read_volume
from medgen.io.volume import Volume
from medgen import __version__
from medgen.io.seg_codes import display_colors, segment_codes

log = logging.getLogger(__name__)

_ID_PATTERN = re.compile(r"medgen label id (\d+)")
_POSITION_TOL_MM = 0.01


def _source_datasets(series: Volume) -> list[pydicom.Dataset]:
    """The series' headers in slice (position) order, checked against the volume's geometry."""
    files = series.meta.get("files") or []
    if len(files) != series.shape[2]:
        raise InputError(f"the series has {len(files)} files for {series.shape[2]} slices", path=series.source,
                         fix="pass a folder holding exactly one single-frame DICOM series")
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    missing = sorted({key for ds in datasets for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                                          "SOPClassUID", "FrameOfReferenceUID")
                      if not str(ds.get(key, "") or "").strip()})
    if missing:
        raise InputError(f"the series' files have empty {', '.join(missing)} (anonymised without UIDs), so a DICOM "
                         "SEG cannot reference them", path=series.source,
                         fix="use a series exported with its UIDs, or keep the NIfTI mask instead of --dicom-seg")
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ series.affine
    spacing = np.asarray(series.spacing)
    row_dir, col_dir = affine_lps[:3, 0] / spacing[0], affine_lps[:3, 1] / spacing[1]
    for k, ds in enumerate(datasets):
        expected = affine_lps[:3, :3] @ np.array([0.0, 0.0, k]) + affine_lps[:3, 3]
        position = np.asarray(ds.ImagePositionPatient, np.float64)
        orientation = np.asarray(ds.ImageOrientationPatient, np.float64)
        if (np.abs(position - expected).max() > _POSITION_TOL_MM
                or np.abs(orientation[:3] - row_dir).max() > 1e-4 or np.abs(orientation[3:] - col_dir).max() > 1e-4
                or (int(ds.Rows), int(ds.Columns)) != (series.shape[1], series.shape[0])):
            raise RuntimeError(f"internal geometry check failed: slice {k} ({files[k]}) is not where the series "
                               f"volume puts it (position {position} vs {expected})")
    return datasets


def _label_on_series(label: Volume, series: Volume) -> np.ndarray:
    """The label map on the series grid (nearest neighbour in world coordinates)."""
    matrix = np.linalg.inv(series.affine) @ label.affine
    aligned = (np.allclose(np.abs(matrix[:3, :3]).sum(axis=0), 1.0, atol=1e-4)
               and np.allclose(np.abs(matrix[:3, :3]).max(axis=0), 1.0, atol=1e-4)
               and np.allclose(matrix[:3, 3], np.round(matrix[:3, 3]), atol=1e-3))
    if not aligned:
        log.warning("label map %s is not on the voxel grid of series %s; resampling it by nearest neighbour",
                    label.name, series.name)
    array = np.asarray(label.array)
    if array.dtype.kind not in "iub":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError("is not an integer label map (non-integer or NaN values)", path=label.name,
                             fix="pass a label map (whole-number ids), not a probability map or image")
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise InputError("is a label map with negative ids", path=label.name, fix="label ids must be >= 0")
    label = label.with_array(array.astype(np.uint8) if array.dtype == np.bool_ else array)
    mapped = resample_like(label, series, order=0, cval=0)
    if np.any(label.array) and not np.any(mapped.array):
        raise InputError("the label map does not overlap the DICOM series in world coordinates", path=label.name,
                         fix="pass the series the mask was computed on (same frame of reference)")
    return np.asarray(mapped.array)


def write_dicom_seg(label: Volume, source_series_folder: str | Path, out_path: str | Path,
                    label_names: dict[int, str], *, overwrite: bool = False, inputs: tuple = (),
                    series_uid: str | None = None, algorithm_name: str = "medgen", algorithm_version: str | None = None,
                    series_description: str = "medgen segmentation", series_number: int = 300,
                    manufacturer: str = "medgen") -> Path:
    """Write ``label`` as a DICOM SEG (BINARY, one segment per label present) for a DICOM series.

    Args:
        label: integer label map in any orientation, normally on the series' own grid
            (e.g. a mask mapped back onto the MR); other grids are resampled by nearest neighbour.
        source_series_folder: the DICOM series the mask belongs to (the SEG references it).
        out_path: the ``.dcm`` file to write.
        label_names: label id -> name; names become SegmentLabel. Ids without a name are called
            ``label_<id>``. Id 0 is background and never a segment.
        overwrite: replace an existing file (never an input).
        inputs: paths that must never be overwritten.
        series_uid: the series to use when the folder holds several.
        algorithm_name, algorithm_version: the algorithm identification stored per segment (name:
            the model; version: medgen's version by default).
        series_description, series_number, manufacturer: SEG header values.

    Returns:
        ``out_path``.

    Raises:
        InputError: the series cannot be read, the label does not overlap it or is empty.
        OutputError: the output exists (without ``overwrite``), is an input or cannot be written.
    """
    import highdicom as hd

    algorithm_version = algorithm_version or __version__
    source_series_folder = Path(source_series_folder)
    out_path = check_output_path(out_path, overwrite=overwrite,
                                 inputs=tuple(inputs) + (label.source, str(source_series_folder)))
    series = read_volume(source_series_folder, series_uid=series_uid)
    datasets = _source_datasets(series)
    for f in series.meta.get("files", []):
        if Path(f).resolve() == out_path.resolve():
            raise OutputError("is a file of the source series (an input); medgen never overwrites its inputs", path=out_path, fix="choose another output path")
    array = _label_on_series(label, series)
    ids = [int(i) for i in np.unique(array) if i != 0]
    if not ids:
        raise InputError("the label map is empty on the series grid: a DICOM SEG needs at least one segment",
                         path=label.name, fix="check the mask, or skip DICOM SEG output for empty masks")
    lut = np.zeros(int(array.max()) + 1, dtype=np.uint16 if len(ids) > 255 else np.uint8)
    descriptions = _segment_descriptions(hd, ids, label_names, algorithm_name, algorithm_version)
    for number, label_id in enumerate(ids, start=1):
        lut[label_id] = number
    # (i, j, k) -> (frames = k, rows = j, columns = i): frame k pairs with datasets[k] (checked above).
    frames = np.ascontiguousarray(lut[array].transpose(2, 1, 0))
    with warnings.catch_warnings():  # highdicom re-validates the source's PatientName; not ours to fix
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        seg = _segmentation(hd, datasets, frames, descriptions, series_number, manufacturer, algorithm_version,
                            series_description)
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp)
    log.info("wrote DICOM SEG with %d segments (%s) for series %s to %s", len(ids),
             ", ".join(d.SegmentLabel for d in descriptions), series.series_uid, out_path)
    return out_path


def _segment_descriptions(hd, ids: list[int], label_names: dict, algorithm_name: str, algorithm_version: str) -> list:
    """One SegmentDescription per label id: coded anatomy (:mod:`medgen.io.seg_codes`), laterality,
    a distinct recommended display colour, and the algorithm (name = model, version = medgen's)."""
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name[:64], version=algorithm_version[:64],
                                                   family=codes.cid7162.ArtificialIntelligence)
    colors = display_colors(len(ids))
    out = []
    for number, label_id in enumerate(ids, start=1):
        name = str(label_names.get(label_id, label_names.get(str(label_id), f"label_{label_id}")))
        if label_id not in label_names and str(label_id) not in label_names:
            log.warning("label id %d has no name; calling it %s", label_id, name)
        coded = segment_codes(name)
        desc = hd.seg.SegmentDescription(segment_number=number, segment_label=name[:64],
                                         segmented_property_category=coded.category,
                                         segmented_property_type=coded.type,
                                         algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                         algorithm_identification=algorithm,
                                         display_color=hd.color.CIELabColor.from_rgb(*colors[number - 1]))
        if coded.modifier is not None:
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept.from_code(coded.modifier)]
        desc.SegmentDescription = f"{name[:40]} (medgen label id {label_id})"
        out.append(desc)
    return out


def _segmentation(hd, datasets, frames, descriptions, series_number, manufacturer, version, description):
    return hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=manufacturer,
        manufacturer_model_name="medgen", software_versions=version, device_serial_number="0",
        series_description=description, content_label="MEDGEN", content_description=description[:64],
        omit_empty_frames=True)


def _segment_ids(seg) -> dict[int, tuple[int, str]]:
    """Segment number -> (label id, name). The id comes from medgen's SegmentDescription, else the number."""
    out = {}
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        match = _ID_PATTERN.search(str(item.get("SegmentDescription", "")))
        out[number] = (int(match.group(1)) if match else number, str(item.get("SegmentLabel", f"segment_{number}")))
    ids = [v[0] for v in out.values()]
    if len(set(ids)) != len(ids):  # foreign descriptions clashing: fall back to segment numbers
        out = {n: (n, name) for n, (_, name) in out.items()}
    return out


def read_dicom_seg(path: str | Path, reference_series_folder: str | Path | None = None, *,
                   series_uid: str | None = None) -> tuple[Volume, dict[int, str]]:
    """Read a DICOM SEG as one label map, on the reference series' grid when one is given.

    Frames are matched to the reference series through their ReferencedSOPInstanceUIDs (the
    series' slices in position order); a SEG that does not reference those instances is placed
    by its own plane positions and resampled onto the series grid in world coordinates. Without a
    reference series the SEG's own geometry is used.

    Args:
        path: the DICOM SEG file.
        reference_series_folder: the source DICOM series (optional).
        series_uid: the reference series when its folder holds several.

    Returns:
        (label map, {label id: segment label}). Where segments overlap (possible in foreign SEGs)
        only one id can be kept per voxel: a warning says so.

    Raises:
        InputError: the file is not a readable DICOM SEG or does not fit the reference series.
    """
    import highdicom as hd

    path = Path(path)
    if not path.is_file():
        raise InputError("does not exist or is not a file", path=path, fix="pass the DICOM SEG (.dcm) file")
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001 - pydicom/highdicom raise many types for bad files
        raise InputError(f"cannot be read as a DICOM SEG ({type(exc).__name__}: {str(exc)[:160]})", path=path,
                         fix="pass a DICOM Segmentation Storage file") from exc
    segments = _segment_ids(seg)
    names = {label_id: name for label_id, name in segments.values()}
    max_id = max([0] + list(names))
    lut = np.zeros(max(segments) + 1 if segments else 1, dtype=np.uint16 if max_id > 255 else np.uint8)
    for number, (label_id, _) in segments.items():
        lut[number] = label_id

    def combined(getter, **kwargs):
        try:
            return getter(combine_segments=True, relabel=False, skip_overlap_checks=False, **kwargs)
        except (ValueError, RuntimeError) as exc:
            if "overlap" not in str(exc).lower():
                raise
            log.warning("%s: segments overlap; a label map keeps one segment per voxel there", path)
            return getter(combine_segments=True, relabel=False, skip_overlap_checks=True, **kwargs)

    if reference_series_folder is None:
        return _volume_from_seg(seg, combined, lut, path), names

    series = read_volume(reference_series_folder, series_uid=series_uid)
    files = series.meta.get("files") or []
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            for f in files]
    referenced = {str(sop) for _, _, sop in seg.get_source_image_uids()}
    if referenced and referenced.issubset(set(uids)) and len(uids) == series.shape[2]:
        try:
            frames = combined(seg.get_pixels_by_source_instance, source_sop_instance_uids=uids,
                              assert_missing_frames_are_empty=True)
        except (ValueError, KeyError, AttributeError, RuntimeError) as exc:
            log.info("%s: frames not indexable by source instance (%s); using plane positions", path, exc)
        else:
            if frames.shape[1:] != (series.shape[1], series.shape[0]):
                raise InputError(f"SEG frames are {frames.shape[1:]} pixels but the series slices are "
                                 f"{(series.shape[1], series.shape[0])}", path=path,
                                 fix="pass the series the SEG was made for")
            array = lut[np.asarray(frames).transpose(2, 1, 0)]
            return series.with_array(np.ascontiguousarray(array), source=str(path), meta={
                "reference_series": str(series.source), "segment_labels": names}), names
    elif referenced and not referenced & set(uids):
        log.warning("%s references none of the instances of series %s; placing it by world coordinates",
                    path, series.source)
    own = _volume_from_seg(seg, combined, lut, path)
    mapped = resample_like(own, series, order=0, cval=0)
    if np.any(own.array) and not np.any(mapped.array):
        raise InputError("the SEG does not overlap the reference series in world coordinates", path=path,
                         fix="pass the series the SEG was made for")
    return series.with_array(mapped.array, source=str(path), meta={
        "reference_series": str(series.source), "segment_labels": names}), names


def _volume_from_seg(seg, combined, lut: np.ndarray, path: Path) -> Volume:
    """The SEG on its own regular grid (from its plane positions)."""
    try:
        hd_volume = combined(seg.get_volume)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"its frames do not form a regular 3D grid ({exc})", path=path,
                         fix="pass the reference DICOM series so frames can be matched by instance") from exc
    volume = volume_from_highdicom(hd_volume, source=str(path))
    return volume.with_array(np.ascontiguousarray(lut[volume.array]))

