"""The one place that talks to MLflow.

Default tracking store: an SQLite file in the output folder (``sqlite:///OUT/mlflow.db``) with
artifacts beside it; ``MLFLOW_TRACKING_URI`` (e.g. ``http://host:5000``) sends runs to a tracking
server instead. Only rank 0 of a distributed job logs: on other ranks the tracker does nothing.

Each pipeline is one run: the resolved config as params and as an artifact, the dataset manifest
as an input, metrics per step, sample pictures, and the exported bundle as artifacts registered
as a model version under a readable name.

Several processes may share one SQLite store (parallel runs into one folder, or one
``sqlite:///x.db`` for many trainings): the store's first use (MLflow creates and migrates the
schema then) is serialised with a file lock beside the database, and calls that meet SQLite's
"database is locked" are retried. A run whose process died (``kill -9``, power loss) stays
RUNNING in MLflow; the next run into the same output folder marks it KILLED.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

from medgen import distributed
from medgen.config import flatten

log = logging.getLogger(__name__)

PARAM_MAX = 500  # MLflow caps a param value's length; the full config is logged as an artifact
#: Seconds a call keeps retrying while SQLite says "database is locked" (another process writes).
LOCKED_RETRY_S = 60.0
#: Seconds a process waits for another one creating the same SQLite store.
STORE_LOCK_TIMEOUT_S = 300.0


def _is_locked_error(exc: BaseException) -> bool:
    return "database is locked" in str(exc).lower()


def retry_locked(fn):
    """Decorator: retry ``fn`` with backoff while SQLite reports "database is locked"."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        deadline, delay = time.monotonic() + LOCKED_RETRY_S, 0.05
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # MlflowException or sqlalchemy's OperationalError
                if not _is_locked_error(exc) or time.monotonic() > deadline:
                    raise
                log.debug("MLflow store busy (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
    return wrapper


def _sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (None for servers and in-memory stores)."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return Path(uri[len("sqlite:///"):])


@contextlib.contextmanager
def _store_creation_lock(uri: str) -> Iterator[None]:
    """Hold ``<db>.lock`` while this process first touches an SQLite store (schema creation/migration)."""
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(path) + ".lock", timeout=STORE_LOCK_TIMEOUT_S):
            yield
    except Timeout:
        from medgen.errors import OutputError
        raise OutputError(f"another process has been creating this MLflow store for over {STORE_LOCK_TIMEOUT_S:g} s",
                          path=path, fix="wait for it, or remove a stale database of a crashed run") from None


def default_tracking_uri(output_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an SQLite file in ``output_dir``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(output_dir).resolve() / 'mlflow.db').as_posix()}"


def ui_command(tracking_uri: str) -> str:
    """The command a user runs to browse the runs."""
    if tracking_uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {tracking_uri}"
    return f"open {tracking_uri} in a browser"


class Tracker:
    """Logging calls for one MLflow run; every method is a no-op off rank 0 or when disabled."""

    def __init__(self, run=None, tracking_uri: str | None = None):
        self.run = run
        self.tracking_uri = tracking_uri

    @property
    def active(self) -> bool:
        return self.run is not None

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run else None

    @retry_locked
    def log_params(self, params: dict) -> None:
        if not self.active:
            return
        import mlflow
        clean = {k: (str(v)[:PARAM_MAX]) for k, v in params.items()}
        for start in range(0, len(clean), 100):  # MLflow batches at most 100 params
            mlflow.log_params(dict(list(clean.items())[start:start + 100]))

    @retry_locked
    def log_config(self, config) -> None:
        """The resolved config: flattened as params, whole as ``config.yaml``."""
        if not self.active:
            return
        import mlflow
        import yaml
        self.log_params(flatten(config))
        mlflow.log_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "config.yaml")

    @retry_locked
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        import mlflow
        clean = {k.replace("@", "_"): float(v) for k, v in metrics.items() if v is not None and v == v}
        if clean:
            mlflow.log_metrics(clean, step=step)

    @retry_locked
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.active or not Path(path).exists():
            return
        import mlflow
        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path)

    @retry_locked
    def log_dict(self, data: dict, name: str) -> None:
        if self.active:
            import mlflow
            mlflow.log_dict(data, name)

    @retry_locked
    def log_manifest(self, manifest_path: str | Path, name: str, context: str = "training") -> None:
        """Log a case manifest (CSV) as an MLflow dataset input and as an artifact."""
        if not self.active or not Path(manifest_path).exists():
            return
        import mlflow
        import pandas as pd
        frame = pd.read_csv(manifest_path)
        with warnings.catch_warnings():  # a local path matches two equivalent source types
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=str(Path(manifest_path).resolve()), name=name)
        mlflow.log_input(dataset, context=context)
        mlflow.log_artifact(str(manifest_path), "manifests")

    @retry_locked
    def log_bundle(self, bundle_dir: str | Path, registered_name: str | None = None,
                   artifact_path: str = "bundle") -> str | None:
        """Log a bundle folder as artifacts (under ``artifact_path``) and register it as a model version.

        Returns the ``models:/name/version`` URI when registered, else the run artifact URI.
        """
        if not self.active:
            return None
        import mlflow
        from mlflow import MlflowClient
        mlflow.log_artifacts(str(bundle_dir), artifact_path)
        source = f"{self.run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        if not registered_name:
            return source
        client = MlflowClient()
        try:
            client.get_registered_model(registered_name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(registered_name, description="exported by medgen")
        version = client.create_model_version(registered_name, source=source, run_id=self.run_id)
        return f"models:/{registered_name}/{version.version}"

    def log_figure_png(self, png_path: str | Path, artifact_path: str = "figures") -> None:
        self.log_artifact(png_path, artifact_path)

    @retry_locked
    def set_tags(self, tags: dict) -> None:
        if self.active:
            import mlflow
            mlflow.set_tags({k: str(v) for k, v in tags.items()})


@retry_locked
def _ensure_experiment(name: str, artifact_root: Path | None) -> str:
    import mlflow
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return mlflow.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def start_run(run_name: str, *, output_dir: str | Path, experiment: str = "medgen", tags: dict | None = None,
              nested: bool = False, enabled: bool = True) -> Iterator[Tracker]:
    """Open one MLflow run (rank 0 only) and yield a :class:`Tracker` for it.

    When a run is already active in this process (the demo's parent run), the new run is nested
    under it, in the parent's tracking store and experiment, whatever ``output_dir`` and
    ``nested`` say: MLflow allows one active run per thread, and a pipeline called from a
    workflow belongs to that workflow's run. Otherwise the run goes to
    :func:`default_tracking_uri` of ``output_dir``; ``nested`` is kept for readability at call sites.
    """
    if not enabled or not distributed.is_main_process():
        yield Tracker()
        return
    import mlflow
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    nested = mlflow.active_run() is not None
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI to the environment; remember the
    # user's own value so a later pipeline in this process does not inherit this run's store.
    users_env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not nested:
        uri = default_tracking_uri(output_dir)
        mlflow.set_tracking_uri(uri)
        artifact_root = output_dir / "mlartifacts" if uri.startswith("sqlite:") else None
        with _store_creation_lock(uri):  # the first connection creates and migrates the schema
            experiment_id = _ensure_experiment(experiment, artifact_root)
        mark_interrupted_runs(experiment_id, output_dir)
    else:
        uri = mlflow.get_tracking_uri()
        experiment_id = mlflow.active_run().info.experiment_id
    owner = {"medgen.pipeline": run_name, "medgen.output_dir": str(output_dir.resolve()),
             "medgen.host": socket.gethostname(), "medgen.pid": str(os.getpid())}
    try:
        run = retry_locked(mlflow.start_run)(run_name=run_name, experiment_id=experiment_id, nested=nested,
                                             tags={**owner, **(tags or {})})
        status = "FINISHED"
        try:
            yield Tracker(run, uri)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            retry_locked(mlflow.end_run)(status)
    finally:
        if not nested:
            mlflow.set_tracking_uri(users_env_uri)  # None unsets it again


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


@retry_locked
def mark_interrupted_runs(experiment_id: str, output_dir: str | Path) -> list[str]:
    """Mark KILLED the RUNNING runs of ``output_dir`` whose process on this host no longer exists.

    A run killed with ``kill -9`` (or a power loss) never ends itself; this is called when the next
    run (or a ``--resume``) into the same output folder starts. Returns the run ids it marked.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    folder, host = str(Path(output_dir).resolve()), socket.gethostname()
    marked = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get("medgen.output_dir") != folder or tags.get("medgen.host") != host:
            continue
        try:
            pid = int(tags.get("medgen.pid", ""))
        except ValueError:
            continue
        if pid != os.getpid() and not _process_alive(pid):
            client.set_terminated(run.info.run_id, status="KILLED")
            marked.append(run.info.run_id)
            log.warning("MLflow run %s (%s, pid %d) was interrupted; marked KILLED", run.info.run_id,
                        tags.get("medgen.pipeline", "?"), pid)
    return marked


def write_run_info(output_dir: str | Path, tracker: Tracker) -> None:
    """Leave a small JSON pointing at the run, so users and reports can find it."""
    if not tracker.active:
        return
    from medgen.io.atomic import write_text_atomic
    info = {"run_id": tracker.run_id, "tracking_uri": tracker.tracking_uri, "ui": ui_command(tracker.tracking_uri)}
    write_text_atomic(Path(output_dir) / "mlflow_run.json", json.dumps(info, indent=1))


def finish_dataset_run(tracker: Tracker, output_dir: str | Path, files: list[str | Path], *,
                       figure: str | Path | None, metrics: dict[str, float]) -> None:
    """End a run that wrote a dataset (``generate``, ``synthesize``): log its index ``files``, its QC
    ``figure`` (when one was drawn) and ``metrics``, then leave ``mlflow_run.json`` beside it."""
    for path in files:
        tracker.log_artifact(path)
    if figure is not None:
        tracker.log_figure_png(figure)
    tracker.log_metrics(metrics)
    write_run_info(output_dir, tracker)


def download_model(uri: str) -> Path:
    """Download an MLflow model/artifact URI (``models:/name/1``, ``runs:/id/bundle``) to a temp folder.

    The folder is removed when the process exits (each resolution used to leave one behind in /tmp).
    """
    import atexit
    import shutil

    import mlflow
    target = Path(tempfile.mkdtemp(prefix="medgen-model-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
