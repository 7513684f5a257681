"""Batch preprocessing: many CT or MR volumes -> preprocessed NIfTI + records + a manifest.

The algorithm, unrolled (one MLflow run per call)::

    config  = load_preprocess_config(-c, --modality, --set)
    cases   = inputs (files, folders, DICOM series folders, a CSV list) [+ paired label maps]
    claim OUT_DIR: writable, outside the inputs, locked, stale temp files removed   # before any work
    skip each case whose manifest row is ok with the same input content + config hash
    for each other case, through the batch engine (medgen.pipelines.batch: this process, a pool
    of --workers N processes or a Dask cluster, one case per worker in memory):
        read -> preprocess (recipe) -> write OUT_DIR/<case>.nii.gz, <case>_mask.nii.gz,
              [<case>_label.nii.gz], then <case>.json (the record) -- each file atomically
        a bad case becomes a 'failed' row with its error; the others carry on
        journal its manifest row at once; rewrite OUT_DIR/manifest.csv atomically every few seconds
    log config, counts and the manifest (as a dataset input) to MLflow; exit 1 if any failed

Preprocess uses the engine of ``translate``/``segment-mr``/``segment`` (failure isolation, the
in-progress marker, ownership, workers, Dask) and differs from them in what it records, not in
how it runs: its record is ``manifest.csv`` (journaled per case) instead of a summary JSON, "done"
also needs an unchanged input and config (:class:`PreprocessJob`), and ``--overwrite`` only
permits replacing the user's files, it does not redo done cases (run_batch ``redo_done=False``).

Resume after ``kill -9``: run the same command again. Completed cases are skipped (their row is
``ok``, the input and config hashes match and the outputs are still the files medgen wrote),
every file was written atomically so nothing half-written exists (stale temporary files are
removed), and outputs of a case that was interrupted mid-way are replaced without needing
``--overwrite`` because medgen recorded writing them (:mod:`medgen.io.ownership`). A file that
medgen did not write is never replaced or removed: that case fails naming the file (or
``--overwrite`` replaces it). The output folder is locked for the run (a second run into it
refuses) and must not be, or lie inside, an input folder (:mod:`medgen.io.outdir`).

Scaling beyond one machine: split the inputs (e.g. one CSV per node) and run one command per
node, each with its own OUT_DIR; the manifests can be concatenated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from medgen.config import config_hash
from medgen.data.inputs import CaseInput, collect_inputs, pair_inputs
from medgen.data.manifest import Manifest, content_hash
from medgen.errors import InputError
from medgen.io.atomic import check_output_path, write_text_atomic
from medgen.io.outdir import claim_output_dir
from medgen.io.ownership import guarded, owns_here, remove_own_output
from medgen.io.readers import read_volume
from medgen.io.writers import write_volume
from medgen.pipelines.batch import BatchJob, CaseReport, run_batch
from medgen.transforms.recipes import PreprocessConfig, load_preprocess_config, preprocess
from medgen.tracking import start_run, write_run_info

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
#: Seconds between full rewrites of manifest.csv (each finished case is journaled at once).
SAVE_EVERY_S = 5.0


@dataclass
class PreprocessSummary:
    """What a batch run did."""

    output_dir: Path
    manifest_path: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    run_id: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def lines(self) -> list[str]:
        head = (f"preprocessed {len(self.done)}, skipped {len(self.skipped)} (already done), failed {len(self.failed)} "
                f"in {self.seconds:.1f} s -> {self.manifest_path}")
        return [head] + [f"FAILED {case}: {error}" for case, error in self.failed.items()]


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------

def gather_cases(inputs: list[str | Path],
                 labels: list[str | Path] | None = None) -> tuple[list[CaseInput], dict[str, Path]]:
    """Source cases of INPUT arguments and the label map of each case that has one.

    Inputs are collected as sources (:func:`medgen.data.inputs.collect_inputs` with
    ``sources=True``: CSV case lists, same-named files named after their folder); label maps are
    paired by case id (:func:`medgen.data.inputs.pair_inputs`; not every image needs one), and a
    CSV row's ``label_path`` is used for its case when no label map was passed for it.

    Raises:
        InputError: no inputs, a missing path, an empty folder, an unreadable CSV, a label map
            that pairs with no image (or two with one).
    """
    if not inputs:
        raise InputError("no INPUT given", fix="pass volume files, folders, DICOM series folders or a CSV")
    cases = collect_inputs(inputs, sources=True)
    label_cases = collect_inputs(labels, sources=True) if labels else []
    paired = {img.case_id: lab.path for img, lab in pair_inputs(cases, label_cases, every_image=False)}
    for case in cases:
        if case.row and case.row.get("label_path") and case.case_id not in paired:
            paired[case.case_id] = Path(case.row["label_path"])
    return cases, paired


# ----------------------------------------------------------------------------------------------
# One case (runs in a worker process, under the batch engine: medgen.pipelines.batch)
# ----------------------------------------------------------------------------------------------

def output_names(case_id: str) -> dict[str, str]:
    """File names of one case's outputs inside OUT_DIR (record last: it marks completion)."""
    return {"output_path": f"{case_id}.nii.gz", "mask_path": f"{case_id}_mask.nii.gz",
            "label_path": f"{case_id}_label.nii.gz", "record_path": f"{case_id}.json"}


@dataclass
class PreprocessReport(CaseReport):
    """A finished case's report, with its manifest row (``row``)."""

    row: dict = field(default_factory=dict)


@dataclass
class PreprocessJob(BatchJob):
    """A preprocessing case for the batch engine; ``payload`` is the task (plain, picklable data):
    case_id, path, label_path, series_uid, config (dict), config_hash, out_dir, previous (the
    case's manifest row from an earlier run, or None) and, once known, content_hash.

    Done is the manifest's notion, not only file presence: the earlier row is ``ok``, the input's
    content and the config hash are unchanged, and its outputs are still the files medgen wrote.
    """

    def is_done(self) -> bool:
        task = self.payload
        previous = task.get("previous") or {}
        if previous.get("status") != "ok":
            return False
        out_dir = Path(task["out_dir"])
        needed = [previous.get(k) for k in ("output_path", "record_path", "mask_path", "label_path") if previous.get(k)]
        if not all(owns_here(out_dir / name) for name in needed):  # present and still the bytes medgen wrote
            return False
        task["content_hash"] = _case_hash(task)  # hashed only here, for cases that may be done (reused if not)
        if previous.get("content_hash") != task["content_hash"] or previous.get("config_hash") != task["config_hash"]:
            log.info("%s: input or config changed since the last run; preprocessing again", self.case_id)
            return False
        return True


def process_case(path: Path, files: list[Path], task: dict, *, case_id: str) -> PreprocessReport:
    """Batch work function: preprocess one case and write its outputs; the report holds its manifest row.

    Raises for a bad case (the engine records it as ``failed`` and removes what the case wrote);
    the outputs of an earlier run of this case are removed too (only medgen's), so they cannot
    look current.
    """
    start = time.perf_counter()
    config = PreprocessConfig.model_validate(task["config"])
    out_dir = Path(task["out_dir"])
    names = output_names(case_id)
    try:
        row = _process_case(task, config, out_dir, names, overwrite=bool(task["overwrite"]))
    except Exception:
        if task.get("previous"):
            for name in names.values():
                remove_own_output(out_dir / name)
        raise
    seconds = time.perf_counter() - start
    row["seconds"] = f"{seconds:.2f}"
    outputs = {key: str(out_dir / row[key]) for key in names if row.get(key)}
    return PreprocessReport(case_id, task["path"], "ok", outputs, {"total": round(seconds, 3)}, row=row)


def _process_case(task: dict, config: PreprocessConfig, out_dir: Path, names: dict, *, overwrite: bool) -> dict:
    """:func:`process_case`'s work, under the folder's ownership guard; returns the ``ok`` manifest row."""
    row = {**_row_of(task), "content_hash": task.get("content_hash") or _case_hash(task)}
    volume = read_volume(task["path"], series_uid=task.get("series_uid"))
    row.update(original_shape=volume.shape, original_spacing=volume.spacing,
               original_orientation=volume.orientation, series_uid=volume.series_uid or row["series_uid"])
    label = read_volume(task["label_path"], kind="label") if task.get("label_path") else None
    result = preprocess(volume, config, label)
    inputs = tuple(p for p in (task["path"], task.get("label_path")) if p)
    targets = [(result.image, "output_path", config.output_dtype)]
    if config.write_body_mask:
        targets.append((result.body_mask, "mask_path", "uint8"))
    if result.label is not None:
        targets.append((result.label, "label_path", None))
    for key in [t[1] for t in targets] + ["record_path"]:  # refuse before writing anything
        check_output_path(out_dir / names[key], overwrite=overwrite, inputs=inputs)
    for volume_out, key, dtype in targets:  # without overwrite only files medgen wrote here are replaced
        write_volume(volume_out, out_dir / names[key], overwrite=True, inputs=inputs, dtype=dtype)
    record = {**result.record, "case_id": task["case_id"], "content_hash": row["content_hash"],
              "outputs": {key: names[key] for key in [t[1] for t in targets] + ["record_path"]}}
    write_text_atomic(out_dir / names["record_path"], json.dumps(record, indent=1))
    row.update(status="ok", error="", output_path=names["output_path"], record_path=names["record_path"],
               mask_path=names["mask_path"] if config.write_body_mask else "",
               label_path=names["label_path"] if result.label is not None else "",
               output_shape=result.image.shape, output_spacing=result.image.spacing)
    return row


def _row_of(task: dict) -> dict:
    """The manifest columns a case has before (or without) any work: who it is, with which config."""
    return {"case_id": task["case_id"], "source_path": task["path"], "label_source_path": task.get("label_path") or "",
            "series_uid": task.get("series_uid") or "", "modality": task["config"]["modality"],
            "config_hash": task["config_hash"]}


def _case_hash(task: dict) -> str:
    parts = [content_hash(task["path"])]
    if task.get("label_path"):
        parts.append(content_hash(task["label_path"]))
    if task.get("series_uid"):
        parts.append(task["series_uid"])
    if len(parts) == 1:
        return parts[0]
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# The batch
# ----------------------------------------------------------------------------------------------

def run_preprocess(inputs: list[str | Path], output_dir: str | Path, *, modality: str | None = None,
                   config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), workers: int = 1,
                   overwrite: bool = False, series_uid: str | None = None, labels: list[str | Path] | None = None,
                   mlflow: bool = True, executor: str | None = "local") -> PreprocessSummary:
    """Preprocess every case of ``inputs`` into ``output_dir`` (see the module docstring).

    Args:
        inputs: files, folders, DICOM series folders or CSV case lists.
        output_dir: where outputs and ``manifest.csv`` go (created; checked writable up front, locked for
            the run, never an input folder or inside one).
        modality: ``"ct"`` or ``"mr"``; picks the shipped config when ``config`` is None.
        config: config path or shipped name (``preprocess/ct``...).
        overrides: ``key=value`` config overrides.
        workers: parallel worker processes (1 = in this process).
        overwrite: replace existing files in ``output_dir`` that medgen did not write (the user's own).
            Cases already done with the same input and config are still skipped.
        series_uid: the series to read from DICOM folders holding several.
        labels: label-map files/folders, paired with images by case id (:func:`gather_cases`).
        mlflow: log one MLflow run.
        executor: ``local`` (this process or a pool of ``workers``) or ``dask://HOST:PORT``.

    Returns:
        A :class:`PreprocessSummary` (``exit_code`` is 1 when any case failed).

    Raises:
        ConfigError, InputError, OutputError: problems found before any case is processed.
    """
    start = time.perf_counter()
    if modality is None and config is None:
        raise InputError("the modality is not known", path="--modality", fix="pass --modality ct or --modality mr")
    cfg = load_preprocess_config(config, modality, overrides)
    cases, label_paths = gather_cases(inputs, labels)
    if not cases:
        raise InputError("no volumes found in the inputs", path=", ".join(str(i) for i in inputs),
                         fix="pass volume files, folders of volumes or DICOM series folders")
    watched = [*inputs, *(labels or []), *(case.path for case in cases)]
    with claim_output_dir(output_dir, inputs=watched, overwrite=overwrite, command="medgen preprocess",
                          outputs=(MANIFEST_NAME, "mlflow_run.json"), min_free_bytes=64 * 2**20) as out_dir:
        manifest = Manifest(out_dir / MANIFEST_NAME)
        summary = PreprocessSummary(out_dir, manifest.path)
        jobs = _jobs(cases, label_paths, cfg, config_hash(cfg), out_dir, series_uid, overwrite, manifest)
        manifest.save()

        with start_run("preprocess", output_dir=out_dir, enabled=mlflow) as tracker:
            tracker.log_config(cfg)
            tracker.log_params({"inputs": " ".join(str(i) for i in inputs), "workers": workers, "n_cases": len(cases)})
            journal = _Journal(manifest, summary)
            try:  # the guard: the done checks read the folder's ownership ledger once, incrementally
                with guarded(out_dir, overwrite=overwrite):
                    run_batch(jobs, workers=workers, overwrite=overwrite, redo_done=False,
                              desc=f"preprocess {cfg.modality}", executor=executor, on_report=journal)
            finally:
                manifest.save()
            summary.seconds = time.perf_counter() - start
            if summary.skipped:
                log.info("skipped %d case(s) already preprocessed with this config", len(summary.skipped))
            tracker.log_metrics({"cases_done": len(summary.done), "cases_skipped": len(summary.skipped),
                                 "cases_failed": len(summary.failed), "seconds": summary.seconds,
                                 "cases_per_second": len(summary.done) / max(summary.seconds, 1e-9)})
            tracker.log_manifest(manifest.path, name=f"preprocess-{cfg.modality}", context="preprocessing")
            write_run_info(out_dir, tracker)
            summary.run_id = tracker.run_id
    return summary


def _jobs(cases: list[CaseInput], label_paths: dict[str, Path], cfg, chash: str, out_dir: Path,
          series_uid: str | None, overwrite: bool, manifest: Manifest) -> list[PreprocessJob]:
    """One batch job per case; a case new to the manifest gets a ``pending`` row at once."""
    jobs = []
    for case in cases:
        previous = manifest.get(case.case_id)
        label = label_paths.get(case.case_id)
        task = {"case_id": case.case_id, "path": str(case.path.resolve()),
                "label_path": str(Path(label).resolve()) if label else None, "series_uid": series_uid,
                "config": cfg.model_dump(mode="json"), "config_hash": chash, "out_dir": str(out_dir),
                "overwrite": overwrite, "previous": previous}
        files = [out_dir / name for name in output_names(case.case_id).values()]
        jobs.append(PreprocessJob(case.case_id, task["path"], files=files, done=[files[-1]], fn=process_case,
                                  payload=task))
        if previous is None:  # listed before any output of it exists (ownership itself is in the ledger)
            manifest.update({**_row_of(task), "status": "pending"})
    return jobs


class _Journal:
    """The batch's ``on_report``: each finished case's manifest row is journaled at once (the CSV
    is rewritten every few seconds) and counted in the summary."""

    def __init__(self, manifest: Manifest, summary: PreprocessSummary):
        self.manifest, self.summary = manifest, summary
        self.last_save = time.monotonic()

    def __call__(self, job: BatchJob, report: CaseReport) -> None:
        if report.status == "skipped":  # its ok row stays as it is
            self.summary.skipped.append(job.case_id)
            return
        if report.status == "ok":
            self.manifest.commit(report.row)
            self.summary.done.append(job.case_id)
        else:
            row = {**_row_of(job.payload), "status": "failed", "error": report.error,
                   "seconds": f"{report.timings['total']:.2f}" if "total" in report.timings else ""}
            self.manifest.commit(row)
            self.summary.failed[job.case_id] = report.error
        if time.monotonic() - self.last_save > SAVE_EVERY_S:
            self.manifest.save()
            self.last_save = time.monotonic()
