"""Pipeline: segment MR scans with a CT segmenter through synthetic CT (``medgen segment-mr``).

One scan: ``-i MR -o MASK.nii.gz``. Many scans: ``-i`` a folder / manifest / several inputs and
``-o`` a folder; every scan is independent (a failure is reported and the batch goes on), a scan
whose outputs already exist is skipped (resume), and each worker process holds one scan at a
time, so memory does not grow with the batch. Per scan it writes the mask on the MR's exact
grid, ``<mask>.labels.json`` (label names and provenance), and optionally the synthetic CT, a
DICOM SEG (DICOM input) and a QC picture. A batch also writes ``segment_mr_summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from medgen.errors import InputError, OutputError
from medgen.io.readers import VOLUME_SUFFIXES, labels_json_path, read_volume
from medgen.pipelines.batch import BatchJob, CaseReport, run_batch, write_summary
from medgen.models.cache import ModelCache
from medgen import __version__
from medgen.data.dicomweb_cases import collect_cases, is_dicom_source, run_on_source
from medgen.inference.chain import load_chain_translator, segment_mr_volume
from medgen.inference.qc import save_chain_qc
from medgen.io.atomic import check_output_path, write_text_atomic
from medgen.io.dicom_seg import write_dicom_seg
from medgen.io.outdir import claim_output_dir
from medgen.io.writers import write_volume
from medgen.models.segmenters import load_segmenter

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass
class ChainOptions:
    """Everything about how to run the chain, shared by all scans of a batch."""

    translator: str
    segmenter: str
    trust_bundle: bool = False
    device: str = "auto"
    precision: str = "auto"
    overwrite: bool = False
    series_uid: str | None = None
    ct_reference: str | None = None
    tta: bool = False
    agreement: bool = False  # second, perturbed pass: per-structure agreement and a reliability flag
    agreement_threshold: float = 0.7
    push_seg: bool = False  # DICOMweb input: store the DICOM SEG back into the study
    push_sct: bool = False  # DICOMweb input: store the synthetic CT as a new series of the study


@dataclass
class CaseOutputs:
    mask: Path
    labels_json: Path
    sct: Path | None = None
    dicom_seg: Path | None = None
    qc: Path | None = None


def is_dicom_input(path: Path) -> bool:
    return path.is_dir() or path.name.lower().endswith(".dcm")


# ---------------------------------------------------------------------------------------------
# one scan
# ---------------------------------------------------------------------------------------------

_MODELS = ModelCache()


def _models(options: ChainOptions):
    """Translator and segmenter, loaded once per process."""
    key = (options.translator, options.segmenter, options.trust_bundle, options.tta)
    return _MODELS.get(key, lambda: (load_chain_translator(options.translator),
                                     load_segmenter(options.segmenter, trust_bundle=options.trust_bundle,
                                                    tta=options.tta)))


def segment_one(mr_path: Path, outputs: CaseOutputs, options: ChainOptions, *, case_id: str = "") -> CaseReport:
    """Run the chain on one scan and write its outputs (mask and labels JSON last)."""
    import numpy as np


    inputs = (str(mr_path),)
    for path in (outputs.mask, outputs.labels_json, outputs.sct, outputs.dicom_seg, outputs.qc):
        if path is not None:  # fail before the work
            check_output_path(path, overwrite=options.overwrite, inputs=inputs)
    if outputs.dicom_seg is not None and not is_dicom_input(mr_path):
        raise InputError("--dicom-seg needs a DICOM series as input (the SEG references its instances)",
                         path=mr_path, fix="pass the MR DICOM series folder, or drop --dicom-seg")
    translator, segmenter = _models(options)
    t0 = time.perf_counter()
    mr = read_volume(mr_path, series_uid=options.series_uid)
    t_read = time.perf_counter() - t0
    result = segment_mr_volume(mr, translator=translator, segmenter=segmenter, device=options.device,
                               precision=options.precision, ct_reference=options.ct_reference,
                               agreement=options.agreement, agreement_threshold=options.agreement_threshold)
    t1 = time.perf_counter()
    reliability = result.agreement
    if reliability is not None and reliability["flagged"]:
        log.warning("%s: low agreement between two predictions (mean %s; %s): check this mask before use",
                    case_id or mr_path.name, reliability["mean"], ", ".join(reliability["low_structures"]) or "-")
    written = {}
    if outputs.sct is not None:
        sct = result.sct.with_array(np.rint(result.sct.array).astype(np.int16))
        written["sct"] = str(write_volume(sct, outputs.sct, overwrite=options.overwrite, inputs=inputs))
    if outputs.qc is not None:
        written["qc"] = str(save_chain_qc(outputs.qc, mr, result.sct, result.mask, result.label_names,
                                          title=f"{case_id or mr_path.name}: {Path(str(options.translator)).name} -> "
                                                f"{Path(str(options.segmenter)).name}" + _agreement_note(reliability)))
    found = write_mask_outputs(result.mask, result.label_names, outputs, written, source=mr_path, image=mr,
                               overwrite=options.overwrite, series_uid=options.series_uid,
                               model_name=f"{Path(str(options.translator)).name} -> {Path(str(options.segmenter)).name}",
                               info={"mr": str(mr_path), "translator": str(options.translator),
                                     "segmenter": str(options.segmenter), "agreement": reliability})
    timings = {"read": t_read, **result.timings, "write": time.perf_counter() - t1}
    log.info("%s: %s labels found (%s) in %.1f s", case_id or mr_path.name, len(found),
             ", ".join(found[:8]), sum(timings.values()))
    return CaseReport(case_id or mr_path.name, str(mr_path), "ok", written, {k: round(v, 3) for k, v in timings.items()},
                      found, agreement=reliability)


def _agreement_note(reliability: dict | None) -> str:
    """The QC title's reliability line: the agreement score, and LOW with the structures to check."""
    if reliability is None:
        return ""
    low = reliability["low_structures"]
    flag = f" LOW, check: {', '.join(low) or 'all'}" if reliability["flagged"] else ""
    return f" | agreement {reliability['mean']}{flag}"


def write_mask_outputs(mask, label_names: dict, outputs: CaseOutputs, written: dict, *, source: Path, image,
                       overwrite: bool, series_uid: str | None, model_name: str, info: dict) -> list[str]:
    """The DICOM SEG (when asked), the mask, then ``<mask>.labels.json`` LAST (it marks the case done).

    Shared by ``segment-mr`` and ``segment``. ``written`` receives the paths; returns the names of
    the labels present in the mask.
    """
    import numpy as np


    inputs = (str(source),)
    if outputs.dicom_seg is not None:
        folder = source if source.is_dir() else source.parent
        written["dicom_seg"] = str(write_dicom_seg(mask, folder, outputs.dicom_seg, label_names,
                                                   overwrite=overwrite, inputs=inputs,
                                                   series_uid=series_uid or image.series_uid,
                                                   algorithm_name=f"medgen {model_name}"[:64],
                                                   algorithm_version=__version__))
    written["mask"] = str(write_volume(mask, outputs.mask, overwrite=overwrite, inputs=inputs))
    present = sorted(int(i) for i in np.unique(mask.array) if i)
    found = [label_names.get(i, str(i)) for i in present]
    record = {"label_names": {str(k): v for k, v in label_names.items()}, "labels_found": found, **info,
              "shape": list(image.shape), "orientation": image.orientation}
    write_text_atomic(outputs.labels_json, json.dumps(record, indent=1))  # last: marks the case as done
    written["labels_json"] = str(outputs.labels_json)
    return found


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------

def _batch_outputs(out_dir: Path, case_id: str, *, sct: bool, qc: bool, dicom_seg: bool, dicom_ok: bool) -> CaseOutputs:
    return CaseOutputs(mask=out_dir / f"{case_id}.nii.gz", labels_json=out_dir / f"{case_id}.labels.json",
                       sct=out_dir / f"{case_id}_sct.nii.gz" if sct else None,
                       dicom_seg=out_dir / f"{case_id}_seg.dcm" if dicom_seg and dicom_ok else None,
                       qc=out_dir / f"{case_id}_qc.png" if qc else None)


def _case_files(outputs: CaseOutputs) -> list[Path]:
    return [p for p in (outputs.sct, outputs.qc, outputs.dicom_seg, outputs.mask, outputs.labels_json) if p is not None]


def _segment_case(path: Path, files: list[Path], payload, *, case_id: str) -> CaseReport:
    """Batch work function (:mod:`medgen.pipelines.batch`): one scan (file, folder or DICOMweb URL)."""
    outputs, options, source = payload
    return run_on_source(source, lambda local: segment_one(local, outputs, options, case_id=case_id),
                         push_seg=options.push_seg, push_sct=options.push_sct)


def segment_mr(inputs: list[str | Path], output: str | Path, options: ChainOptions, *, save_sct: str | None = None,
               qc: str | None = None, dicom_seg: str | None = None, workers: int = 1,
               executor: str | None = "local") -> list[CaseReport]:
    """Segment one scan (``output`` a volume file) or a batch (``output`` a folder).

    Args:
        inputs: MR files, DICOM series folders, folders of scans, a manifest, or DICOMweb series /
            study URLs (a study: each of its MR series; see :mod:`medgen.data.dicomweb_cases`).
        output: mask file (one scan) or output folder (batch).
        options: translator, segmenter and runtime settings.
        save_sct, qc, dicom_seg: output paths for one scan; for a batch any value (e.g. ``auto``)
            turns the output on, named ``<case>_sct.nii.gz``, ``<case>_qc.png``, ``<case>_seg.dcm``.
        workers: parallel worker processes for a batch (each handles one scan at a time).
        executor: ``local`` or ``dask://HOST:PORT`` for a batch (:mod:`medgen.pipelines.executor`).

    Returns:
        One report per scan; ``status`` is ``ok``, ``skipped`` (outputs already there) or ``failed``.

    Raises:
        MedgenError: for a single scan, the problem (a batch records it and continues).
    """
    output = Path(output)
    single = output.name.lower().endswith(VOLUME_SUFFIXES)
    dicom_seg = dicom_seg or (AUTO if options.push_seg else None)
    save_sct = save_sct or (AUTO if options.push_sct else None)
    if single:
        cases = collect_cases(inputs, modality="MR")
        if len(cases) != 1:
            raise InputError(f"{len(cases)} scans found but -o is one file", path=output,
                             fix="pass an output folder for several scans")
        case = cases[0]
        outs = CaseOutputs(mask=output, labels_json=labels_json_path(output),
                           sct=_single(save_sct, output, "_sct.nii.gz"), qc=_single(qc, output, "_qc.png"),
                           dicom_seg=_single(dicom_seg, output, "_seg.dcm"))
        return [_segment_case(Path(str(case.path)), [], (outs, options, str(case.path)), case_id=case.case_id)]

    if output.exists() and not output.is_dir():
        raise OutputError("exists and is not a folder", path=output, fix="give a folder (or a .nii.gz for one scan)")
    cases = collect_cases(inputs, modality="MR")
    if not cases:
        raise InputError("no scans found", path=", ".join(map(str, inputs)))
    with claim_output_dir(output, inputs=[*inputs, *(c.path for c in cases)], overwrite=options.overwrite,
                          command="medgen segment-mr", outputs=("segment_mr_summary.json",)):
        return _segment_batch(cases, output, options, save_sct=save_sct, qc=qc, dicom_seg=dicom_seg, workers=workers,
                              executor=executor)


def _segment_batch(cases, output: Path, options: ChainOptions, *, save_sct, qc, dicom_seg, workers: int,
                   executor: str | None = "local") -> list[CaseReport]:
    """The batch of :func:`segment_mr`, run inside the claimed output folder."""
    jobs = []
    for case in cases:
        outs = _batch_outputs(output, case.case_id, sct=bool(save_sct), qc=bool(qc), dicom_seg=bool(dicom_seg),
                              dicom_ok=is_dicom_source(case.path))
        if dicom_seg and outs.dicom_seg is None:
            log.warning("%s: not a DICOM series; no DICOM SEG written", case.case_id)
        jobs.append(BatchJob(case.case_id, str(case.path), files=_case_files(outs),
                             done=[outs.mask, outs.labels_json], fn=_segment_case, payload=(outs, options, str(case.path)),
                             outputs_when_done={"mask": str(outs.mask)}))
    reports, seconds = run_batch(jobs, workers=workers, overwrite=options.overwrite, desc="segment-mr",
                                 executor=executor)
    write_summary(output / "segment_mr_summary.json", reports, seconds=seconds,
                  translator=str(options.translator), segmenter=str(options.segmenter))
    return reports


def _single(value: str | None, mask_path: Path, suffix: str) -> Path | None:
    if not value:
        return None
    if value == AUTO:
        return labels_json_path(mask_path).with_name(labels_json_path(mask_path).name.replace(".labels.json", suffix))
    return Path(value)
