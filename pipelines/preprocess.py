"""Batch preprocessing: many CT or MR volumes -> preprocessed NIfTI + records + a manifest.

The algorithm, unrolled (one MLflow run per call)::

    config  = load_preprocess_config(-c, --modality, --set)
    cases   = inputs (files, folders, DICOM series folders, a CSV list) [+ paired label maps]
    claim OUT_DIR: writable, outside the inputs, locked, stale temp files removed   # before any work
    for each case, in a process pool (--workers N, one case per worker in memory):
        hash the input; skip it if the manifest has an ok row with the same input + config hash
        read -> preprocess (recipe) -> write OUT_DIR/<case>.nii.gz, <case>_mask.nii.gz,
              [<case>_label.nii.gz], then <case>.json (the record) -- each file atomically
        a bad case becomes a 'failed' row with its error; the others carry on
        journal its manifest row at once; rewrite OUT_DIR/manifest.csv atomically every few seconds
    log config, counts and the manifest (as a dataset input) to MLflow; exit 1 if any failed

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

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from medgen.data.inputs import CaseInput, collect_inputs, pair_inputs
from medgen.data.manifest import Manifest, content_hash
from medgen.errors import InputError, MedgenError

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
# One case (runs in a worker process)
# ----------------------------------------------------------------------------------------------

def output_names(case_id: str) -> dict[str, str]:
    """File names of one case's outputs inside OUT_DIR (record last: it marks completion)."""
    return {"output_path": f"{case_id}.nii.gz", "mask_path": f"{case_id}_mask.nii.gz",
            "label_path": f"{case_id}_label.nii.gz", "record_path": f"{case_id}.json"}


def process_case(task: dict) -> dict:
    """Preprocess one case and write its outputs; return its manifest row (never raises for bad input).

    ``task`` is plain data (picklable for a spawn process pool): case_id, path, label_path,
    series_uid, config (dict), out_dir, overwrite, previous (the manifest row from an earlier
    run, if any).
    """
    from medgen.io.ownership import guarded, remove_own_output
    from medgen.transforms.recipes import PreprocessConfig

    start = time.perf_counter()
    config = PreprocessConfig.model_validate(task["config"])
    out_dir = Path(task["out_dir"])
    names = output_names(task["case_id"])
    previous = task.get("previous") or {}
    row = {"case_id": task["case_id"], "source_path": task["path"], "label_source_path": task.get("label_path") or "",
           "series_uid": task.get("series_uid") or "", "modality": config.modality, "config_hash": task["config_hash"]}
    written: list[Path] = []
    with guarded(out_dir, overwrite=bool(task["overwrite"])):
        try:
            return _process_case(task, config, out_dir, names, previous, row, written, start)
        except Exception as exc:  # a bad case is recorded and the batch carries on
            message = exc.one_line() if isinstance(exc, MedgenError) else f"{task['path']}: {type(exc).__name__}: {exc}"
            if not isinstance(exc, MedgenError):
                log.debug("unexpected error in case %s", task["case_id"], exc_info=True)
            for path in written:
                remove_own_output(path)
            if previous:  # stale outputs of an earlier run of this case must not look current (only medgen's)
                for name in names.values():
                    remove_own_output(out_dir / name)
            row.update(status="failed", error=message, output_path="", record_path="", mask_path="", label_path="")
    row["seconds"] = f"{time.perf_counter() - start:.2f}"
    return row


def _process_case(task: dict, config, out_dir: Path, names: dict, previous: dict, row: dict, written: list,
                  start: float) -> dict:
    """:func:`process_case`'s work, under the folder's ownership guard; raises for a bad case."""
    from medgen.io.atomic import check_output_path, write_text_atomic
    from medgen.io.readers import read_volume
    from medgen.io.writers import write_volume
    from medgen.transforms.recipes import preprocess

    row["content_hash"] = _case_hash(task)
    if _is_done(previous, row, out_dir):
        return {**previous, "_skipped": True}
    overwrite = bool(task["overwrite"])  # without it only files medgen wrote here are replaced
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
    for volume_out, key, dtype in targets:
        written.append(write_volume(volume_out, out_dir / names[key], overwrite=True, inputs=inputs, dtype=dtype))
    record = {**result.record, "case_id": task["case_id"], "content_hash": row["content_hash"],
              "outputs": {key: names[key] for key in [t[1] for t in targets] + ["record_path"]}}
    written.append(write_text_atomic(out_dir / names["record_path"], json.dumps(record, indent=1)))
    row.update(status="ok", error="", output_path=names["output_path"], record_path=names["record_path"],
               mask_path=names["mask_path"] if config.write_body_mask else "",
               label_path=names["label_path"] if result.label is not None else "",
               output_shape=result.image.shape, output_spacing=result.image.spacing)
    row["seconds"] = f"{time.perf_counter() - start:.2f}"
    return row


def _case_hash(task: dict) -> str:
    parts = [content_hash(task["path"])]
    if task.get("label_path"):
        parts.append(content_hash(task["label_path"]))
    if task.get("series_uid"):
        parts.append(task["series_uid"])
    if len(parts) == 1:
        return parts[0]
    import hashlib
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _is_done(previous: dict, row: dict, out_dir: Path) -> bool:
    if previous.get("status") != "ok":
        return False
    if previous.get("content_hash") != row["content_hash"] or previous.get("config_hash") != row["config_hash"]:
        log.info("%s: input or config changed since the last run; preprocessing again", row["case_id"])
        return False
    from medgen.io.ownership import owns
    needed = [previous.get(k) for k in ("output_path", "record_path", "mask_path", "label_path") if previous.get(k)]
    return all(owns(out_dir / name) for name in needed)  # present and still the bytes medgen wrote


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
        series_uid: the series to read from DICOM folders holding several.
        labels: label-map files/folders, paired with images by case id (:func:`gather_cases`).
        mlflow: log one MLflow run.
        executor: ``local`` (this process or a pool of ``workers``) or ``dask://HOST:PORT``.

    Returns:
        A :class:`PreprocessSummary` (``exit_code`` is 1 when any case failed).

    Raises:
        ConfigError, InputError, OutputError: problems found before any case is processed.
    """
    from medgen.config import config_hash
    from medgen.io.outdir import claim_output_dir
    from medgen.progress import progress
    from medgen.tracking import start_run, write_run_info
    from medgen.transforms.recipes import load_preprocess_config

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
        chash = config_hash(cfg)

        tasks = []
        for case in cases:
            previous = manifest.get(case.case_id)
            label = label_paths.get(case.case_id)
            tasks.append({"case_id": case.case_id, "path": str(case.path.resolve()),
                          "label_path": str(Path(label).resolve()) if label else None, "series_uid": series_uid,
                          "config": cfg.model_dump(mode="json"), "config_hash": chash, "out_dir": str(out_dir),
                          "overwrite": overwrite, "previous": previous})
            if previous is None:  # listed before any output of it exists (ownership itself is in the ledger)
                manifest.update({"case_id": case.case_id, "status": "pending", "source_path": str(case.path.resolve()),
                                 "modality": cfg.modality, "config_hash": chash})
        manifest.save()

        with start_run("preprocess", output_dir=out_dir, enabled=mlflow) as tracker:
            tracker.log_config(cfg)
            tracker.log_params({"inputs": " ".join(str(i) for i in inputs), "workers": workers, "n_cases": len(cases)})
            bar = progress(total=len(tasks), desc=f"preprocess {cfg.modality}", unit="case")
            try:
                last_save = time.monotonic()
                for row in _run_tasks(tasks, workers, executor):
                    skipped = bool(row.pop("_skipped", False))
                    manifest.commit(row)  # journaled at once; the CSV is rewritten every few seconds
                    if time.monotonic() - last_save > SAVE_EVERY_S:
                        manifest.save()
                        last_save = time.monotonic()
                    if row["status"] == "ok":
                        (summary.skipped if skipped else summary.done).append(row["case_id"])
                        log.debug("%s: %s", row["case_id"], "skipped (already done)" if skipped else "ok")
                    else:
                        summary.failed[row["case_id"]] = row["error"]
                        log.warning("case %s failed: %s", row["case_id"], row["error"])
                    bar.update(1)
            finally:
                bar.close()
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


def _run_tasks(tasks: list[dict], workers: int, executor: str | None = "local"):
    """Yield result rows as cases finish: in this process, a local pool or on Dask (:mod:`medgen.pipelines.executor`)."""
    from medgen.pipelines.executor import run_tasks
    for i, row, error in run_tasks(process_case, tasks, workers=workers, executor=executor):
        if error is not None:  # e.g. a worker killed by the OOM killer
            task = tasks[i]
            row = {"case_id": task["case_id"], "status": "failed", "source_path": task["path"],
                   "error": f"{task['path']}: {error}. Fix: rerun the same command (finished cases are kept); if it "
                            "recurs use fewer --workers (memory), and when calling run_preprocess from a script, "
                            "guard it with if __name__ == '__main__'", "config_hash": task["config_hash"]}
        yield row
