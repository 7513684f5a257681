"""Pipeline: translate MR files or DICOM series to synthetic CT files (HU, MR grid).

Read -> :func:`medgen.inference.translate.translate_volume` (preprocess, translate, invert) ->
write atomically beside nothing it read. Used by ``medgen translate``.

One scan: :func:`translate_file`. Many scans (``-i`` a folder / manifest / several inputs, ``-o``
a folder): :func:`translate_batch` writes ``<case>_sct.nii.gz`` per scan through the shared batch
machinery (:mod:`medgen.pipelines.batch`): failures are isolated and reported, finished scans are
skipped on rerun, ``--workers N`` processes hold one scan each, and ``translate_summary.json``
records every case.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from medgen.pipelines.batch import BatchJob, CaseReport, run_batch, write_summary
from medgen.models.cache import ModelCache
from medgen.data.dicomweb_cases import collect_cases, local_source
from medgen.errors import InputError, OutputError
from medgen.inference.translate import load_translator, translate_volume
from medgen.io.atomic import check_output_path
from medgen.io.dicomweb import is_dicomweb_url
from medgen.io.outdir import check_folder_name, claim_output_dir
from medgen.io.readers import read_volume
from medgen.io.writers import write_volume

log = logging.getLogger(__name__)

SUMMARY_NAME = "translate_summary.json"


def translate_file(mr_path: str | Path, out_path: str | Path, model, *, device: str = "auto",
                   precision: str = "auto", overwrite: bool = False, series_uid: str | None = None,
                   mask_background: bool | None = None) -> Path:
    """Translate ``mr_path`` with ``model`` and write the synthetic CT to ``out_path``.

    ``model``: a run dir, bundle dir, MLflow URI or a loaded ``Translator`` (load once for many scans).

    Raises:
        OutputError: ``out_path`` exists (without ``overwrite``) or is one of the inputs.
        InputError / ModelError: unreadable MR or model.
    """
    if is_dicomweb_url(str(mr_path)):  # a DICOMweb series: translate a temporary local copy
        check_output_path(out_path, overwrite=overwrite)
        with local_source(str(mr_path)) as local:
            return translate_file(local, out_path, model, device=device, precision=precision, overwrite=overwrite,
                                  series_uid=series_uid, mask_background=mask_background)

    check_output_path(out_path, overwrite=overwrite, inputs=(mr_path,))  # fail before the work
    translator = load_translator(model)
    mr = read_volume(mr_path, series_uid=series_uid)
    start = time.perf_counter()
    sct = translate_volume(mr, translator, device=device, precision=precision, mask_background=mask_background)
    log.info("translated %s (%s, %s) in %.1f s", mr.name, "x".join(map(str, mr.shape)), mr.orientation,
             time.perf_counter() - start)
    import numpy as np
    sct = sct.with_array(np.rint(sct.array).astype(np.int16))  # whole HU, like scanner CTs
    path = write_volume(sct, out_path, overwrite=overwrite, inputs=(mr_path,))
    log.info("wrote %s", path)
    return Path(path)


_MODELS = ModelCache()


def _cached_translator(model: str | Path):
    """The translator, loaded once per process (a batch worker translates many scans)."""
    return _MODELS.get(str(model), lambda: load_translator(model))


@dataclass
class TranslateOptions:
    """How every scan of a batch is translated (picklable: sent to the worker processes)."""

    model: str
    device: str = "auto"
    precision: str = "auto"
    overwrite: bool = False
    series_uid: str | None = None
    mask_background: bool | None = None


def _translate_case(path: Path, files: list[Path], payload, *, case_id: str) -> CaseReport:
    """Batch work function (:mod:`medgen.pipelines.batch`): one scan (file, folder or DICOMweb URL) to ``files[0]``."""
    options, path = payload
    start = time.perf_counter()
    out = translate_file(path, files[0], _cached_translator(options.model), device=options.device, precision=options.precision,
                         overwrite=options.overwrite, series_uid=options.series_uid,
                         mask_background=options.mask_background)
    return CaseReport(case_id, str(path), "ok", {"sct": str(out)},
                      {"total": round(time.perf_counter() - start, 3)})


def translate_batch(inputs: list[str | Path], output: str | Path, options: TranslateOptions, *,
                    workers: int = 1, executor: str | None = "local") -> list[CaseReport]:
    """Translate every scan of ``inputs`` into the folder ``output`` (``<case>_sct.nii.gz``).

    Args:
        inputs: MR files, DICOM series folders, folders of scans, a manifest CSV, or DICOMweb series /
            study URLs (a study: each of its MR series).
        output: the output folder (created); also receives ``translate_summary.json``.
        options: model and runtime settings shared by all scans.
        workers: parallel worker processes (each holds one scan at a time).
        executor: ``local`` or ``dask://HOST:PORT`` (:mod:`medgen.pipelines.executor`).

    Returns:
        One report per scan: ``ok``, ``skipped`` (output already there) or ``failed`` (with the error).

    Raises:
        InputError: no scans found. OutputError: ``output`` is an existing file.
        ModelError: the model cannot be loaded (checked once, before any scan).
    """
    output = Path(output)
    check_folder_name(output)  # -o out/sct.txt meant a file: say so before loading anything
    if output.exists() and not output.is_dir():
        raise OutputError("exists and is not a folder", path=output, fix="give a folder (or a .nii.gz for one scan)")
    cases = collect_cases(inputs, modality="MR")
    if not cases:
        raise InputError("no scans found", path=", ".join(map(str, inputs)))
    try:
        _cached_translator(options.model)  # a bad model is one error up front, not one per scan
        with claim_output_dir(output, inputs=[*inputs, *(c.path for c in cases)], overwrite=options.overwrite,
                              command="medgen translate", outputs=(SUMMARY_NAME,)):
            return _run_translate_jobs(cases, output, options, workers, executor)
    finally:
        _MODELS.clear()  # the next batch in this process reloads (the bundle may have changed)


def _run_translate_jobs(cases, output: Path, options: TranslateOptions, workers: int,
                        executor: str | None = "local") -> list[CaseReport]:
    jobs = []
    for case in cases:
        sct = output / f"{case.case_id}_sct.nii.gz"
        jobs.append(BatchJob(case.case_id, str(case.path), files=[sct], done=[sct], fn=_translate_case,
                             payload=(options, str(case.path)), outputs_when_done={"sct": str(sct)}))
    reports, seconds = run_batch(jobs, workers=workers, overwrite=options.overwrite, desc="translate",
                                 executor=executor)
    write_summary(output / SUMMARY_NAME, reports, seconds=seconds, model=str(options.model))
    return reports
