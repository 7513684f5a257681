"""Pipeline: segment volumes with a segmenter, no translation (``medgen segment``).

The plain counterpart of ``segment-mr``: a CT (or any volume the segmenter was made for) goes
straight into the segmenter, and the mask comes back on the input's exact grid with
``<mask>.labels.json``. Any segmenter :func:`medgen.models.segmenters.load_segmenter` accepts
works (medgen bundle, MONAI bundle, TorchScript + sidecar, TotalSegmentator).

One volume: ``-i CT -o MASK.nii.gz``. Many: ``-i`` a folder / manifest / several inputs and ``-o`` a
folder, run by the shared batch engine (:mod:`medgen.pipelines.batch`): per-case isolation,
resume, ``--workers N``, ``segment_summary.json``. Each call is one MLflow run (parameters, counts,
seconds, the summary and the labels JSON as artifacts). Used e.g. to make label maps from
unlabelled CTs for the synthesis route.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from medgen.errors import InputError, OutputError
from medgen.io.readers import VOLUME_SUFFIXES, labels_json_path, read_volume
from medgen.data.dicomweb_cases import collect_cases, is_dicom_source, run_on_source
from medgen.pipelines.batch import BatchJob, CaseReport, run_batch, write_summary
from medgen.models.cache import ModelCache
from medgen.pipelines.segment_mr import (AUTO, CaseOutputs, _batch_outputs, _case_files, _single, is_dicom_input,
                                         write_mask_outputs)
from medgen.io.atomic import check_output_path
from medgen.io.outdir import claim_output_dir
from medgen.io.volume import Volume
from medgen.models.segmenters import load_segmenter
from medgen.runtime import resolve_device, resolve_precision
from medgen.tracking import start_run, write_run_info

log = logging.getLogger(__name__)

SUMMARY_NAME = "segment_summary.json"


@dataclass
class SegmentOptions:
    """How every volume of a call is segmented (picklable: sent to batch worker processes)."""

    segmenter: str
    trust_bundle: bool = False
    device: str = "auto"
    precision: str = "auto"
    overwrite: bool = False
    series_uid: str | None = None
    tta: bool = False
    push_seg: bool = False  # store each DICOM SEG back into the DICOMweb study it came from


_MODELS = ModelCache()


def cached_segmenter(options: SegmentOptions):
    """The segmenter, loaded once per process (a batch worker segments many volumes)."""
    key = (options.segmenter, options.trust_bundle, options.tta)
    return _MODELS.get(key, lambda: load_segmenter(options.segmenter, trust_bundle=options.trust_bundle,
                                                   tta=options.tta))


def segment_volume(image, segmenter, *, device: str = "auto", precision: str = "auto"):
    """``(mask, label_names)`` of one volume: uint8 (uint16 beyond 255 ids) on the volume's exact grid."""
    import numpy as np

    dev = resolve_device(device)
    labels = segmenter.segment(image, device=dev, precision=resolve_precision(precision, dev))
    names = dict(segmenter.label_names)
    dtype = np.uint8 if max(names) < 256 else np.uint16
    mask = Volume(np.asarray(labels.array).astype(dtype), image.affine.copy(), None, image.series_uid,
                  {"label_names": names, "modality": "SEG"})
    return mask, names


def segment_one(path: Path, outputs: CaseOutputs, options: SegmentOptions, *, case_id: str = "") -> CaseReport:
    """Segment one volume and write its outputs (mask and labels JSON last)."""
    for out in (outputs.mask, outputs.labels_json, outputs.dicom_seg):
        if out is not None:  # fail before the work
            check_output_path(out, overwrite=options.overwrite, inputs=(str(path),))
    if outputs.dicom_seg is not None and not is_dicom_input(path):
        raise InputError("--dicom-seg needs a DICOM series as input (the SEG references its instances)",
                         path=path, fix="pass the DICOM series folder, or drop --dicom-seg")
    segmenter = cached_segmenter(options)
    t0 = time.perf_counter()
    image = read_volume(path, series_uid=options.series_uid)
    t1 = time.perf_counter()
    mask, names = segment_volume(image, segmenter, device=options.device, precision=options.precision)
    t2 = time.perf_counter()
    written: dict = {}
    found = write_mask_outputs(mask, names, outputs, written, source=path, image=image, overwrite=options.overwrite,
                               series_uid=options.series_uid, model_name=Path(str(options.segmenter)).name,
                               info={"image": str(path), "segmenter": str(options.segmenter)})
    timings = {"read": t1 - t0, "segment": t2 - t1, "write": time.perf_counter() - t2}
    log.info("%s: %d labels found (%s) in %.1f s", case_id or path.name, len(found), ", ".join(found[:8]),
             sum(timings.values()))
    return CaseReport(case_id or path.name, str(path), "ok", written, {k: round(v, 3) for k, v in timings.items()},
                      found)


def _segment_case(path: Path, files: list[Path], payload, *, case_id: str) -> CaseReport:
    """Batch work function (:mod:`medgen.pipelines.batch`): one volume (file, folder or DICOMweb URL)."""
    outputs, options, source = payload
    return run_on_source(source, lambda local: segment_one(local, outputs, options, case_id=case_id),
                         push_seg=options.push_seg)


def segment(inputs: list[str | Path], output: str | Path, options: SegmentOptions, *, dicom_seg: str | None = None,
            workers: int = 1, mlflow: bool = True, modality: str | None = "CT",
            executor: str | None = "local") -> list[CaseReport]:
    """Segment one volume (``output`` a volume file) or a batch (``output`` a folder).

    Args:
        inputs: volume files, DICOM series folders, folders of volumes, a manifest CSV, or DICOMweb
            series / study URLs (a study: each of its ``modality`` series).
        output: mask file (one volume) or output folder (batch: ``<case>.nii.gz`` +
            ``<case>.labels.json`` per volume, ``segment_summary.json``).
        options: segmenter and runtime settings.
        dicom_seg: a ``.dcm`` path (one volume) or any value (batch: ``<case>_seg.dcm``) to also
            write a DICOM SEG for DICOM inputs (on with ``options.push_seg``).
        workers: parallel worker processes for a batch.
        executor: ``local`` or ``dask://HOST:PORT`` for a batch (:mod:`medgen.pipelines.executor`).
        mlflow: log the call as one MLflow run (store: ``MLFLOW_TRACKING_URI`` or
            ``mlflow.db`` in the output folder).

    Returns:
        One report per volume (``ok``, ``skipped`` or ``failed``).

    Raises:
        MedgenError: bad inputs or model, or (one volume) the problem with it.
    """
    output = Path(output)
    single = output.name.lower().endswith(VOLUME_SUFFIXES)
    if not single and output.exists() and not output.is_dir():
        raise OutputError("exists and is not a folder", path=output, fix="give a folder (or a .nii.gz for one volume)")
    dicom_seg = dicom_seg or (AUTO if options.push_seg else None)
    cases = collect_cases(inputs, modality=modality)
    if not cases:
        raise InputError("no volumes found", path=", ".join(map(str, inputs)))
    if single and len(cases) != 1:
        raise InputError(f"{len(cases)} volumes found but -o is one file", path=output,
                         fix="pass an output folder for several volumes")
    try:
        cached_segmenter(options)  # a bad model is one error up front, not one per case
        run_dir = output.parent if single else output
        # a batch folder is claimed like every batch command's (checked, locked, ownership-guarded)
        claim = contextlib.nullcontext() if single else claim_output_dir(
            output, inputs=[*map(str, inputs), *(str(c.path) for c in cases)], overwrite=options.overwrite,
            command="medgen segment", outputs=[SUMMARY_NAME])
        with claim, start_run("segment", output_dir=run_dir, enabled=mlflow) as tracker:
            tracker.log_params({"segmenter": options.segmenter, "n_inputs": len(cases), "workers": workers,
                                "device": options.device, "precision": options.precision, "tta": options.tta,
                                "dicom_seg": bool(dicom_seg)})
            start = time.perf_counter()
            if single:
                outs = CaseOutputs(mask=output, labels_json=labels_json_path(output),
                                   dicom_seg=_single(dicom_seg, output, "_seg.dcm"))
                reports = [_segment_case(Path(str(cases[0].path)), [], (outs, options, str(cases[0].path)),
                                         case_id=cases[0].case_id)]
                tracker.log_artifact(outs.labels_json)
            else:
                reports = _run_jobs(cases, output, options, dicom_seg=bool(dicom_seg), workers=workers,
                                    executor=executor)
                tracker.log_artifact(output / SUMMARY_NAME)
            tracker.log_metrics({"ok": sum(r.status == "ok" for r in reports),
                                 "skipped": sum(r.status == "skipped" for r in reports),
                                 "failed": sum(r.status == "failed" for r in reports),
                                 "seconds": time.perf_counter() - start})
            if not single:
                write_run_info(output, tracker)
        return reports
    finally:
        _MODELS.clear()  # the next call in this process reloads (the model may have changed)


def _run_jobs(cases, output: Path, options: SegmentOptions, *, dicom_seg: bool, workers: int,
              executor: str | None = "local") -> list[CaseReport]:
    output.mkdir(parents=True, exist_ok=True)
    jobs = []
    for case in cases:
        dicom_ok = is_dicom_source(case.path)
        outs = _batch_outputs(output, case.case_id, sct=False, qc=False, dicom_seg=dicom_seg, dicom_ok=dicom_ok)
        if dicom_seg and not dicom_ok:
            log.warning("%s: not a DICOM series; no DICOM SEG written", case.case_id)
        jobs.append(BatchJob(case.case_id, str(case.path), files=_case_files(outs), done=[outs.mask, outs.labels_json],
                             fn=_segment_case, payload=(outs, options, str(case.path)), outputs_when_done={"mask": str(outs.mask)}))
    reports, seconds = run_batch(jobs, workers=workers, overwrite=options.overwrite, desc="segment",
                                 executor=executor)
    write_summary(output / SUMMARY_NAME, reports, seconds=seconds, segmenter=str(options.segmenter))
    return reports
