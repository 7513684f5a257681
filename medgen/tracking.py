"""The one place that talks to MLflow.

Default tracking store: an SQLite file in the output folder (``sqlite:///OUT/mlflow.db``) with
artifacts beside it; ``MLFLOW_TRACKING_URI`` (e.g. ``http://host:5000``) sends runs to a tracking
server instead. Only rank 0 of a distributed job logs: on other ranks the tracker does nothing.

Each pipeline is one run: the resolved config as params and as an artifact, the dataset manifest
as an input, metrics per step, sample pictures, and the exported bundle as artifacts registered
as a model version under a readable name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

from medgen.training import distributed

log = logging.getLogger(__name__)

PARAM_MAX = 500  # MLflow caps a param value's length; the full config is logged as an artifact


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

    def log_params(self, params: dict) -> None:
        if not self.active:
            return
        import mlflow
        clean = {k: (str(v)[:PARAM_MAX]) for k, v in params.items()}
        for start in range(0, len(clean), 100):  # MLflow batches at most 100 params
            mlflow.log_params(dict(list(clean.items())[start:start + 100]))

    def log_config(self, config) -> None:
        """The resolved config: flattened as params, whole as ``config.yaml``."""
        if not self.active:
            return
        import mlflow
        import yaml
        from medgen.config import flatten
        self.log_params(flatten(config))
        mlflow.log_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "config.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        import mlflow
        clean = {k.replace("@", "_"): float(v) for k, v in metrics.items() if v is not None and v == v}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.active or not Path(path).exists():
            return
        import mlflow
        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        if self.active:
            import mlflow
            mlflow.log_dict(data, name)

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

    def log_bundle(self, bundle_dir: str | Path, registered_name: str | None = None) -> str | None:
        """Log a bundle folder as artifacts and register it as a model version.

        Returns the ``models:/name/version`` URI when registered, else the run artifact URI.
        """
        if not self.active:
            return None
        import mlflow
        from mlflow import MlflowClient
        mlflow.log_artifacts(str(bundle_dir), "bundle")
        source = f"{self.run.info.artifact_uri.rstrip('/')}/bundle"
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

    def set_tags(self, tags: dict) -> None:
        if self.active:
            import mlflow
            mlflow.set_tags({k: str(v) for k, v in tags.items()})


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
        experiment_id = _ensure_experiment(experiment, artifact_root)
    else:
        uri = mlflow.get_tracking_uri()
        experiment_id = mlflow.active_run().info.experiment_id
    try:
        with mlflow.start_run(run_name=run_name, experiment_id=experiment_id, nested=nested,
                              tags={"medgen.pipeline": run_name, **(tags or {})}) as run:
            yield Tracker(run, uri)
    finally:
        if not nested:
            mlflow.set_tracking_uri(users_env_uri)  # None unsets it again


def write_run_info(output_dir: str | Path, tracker: Tracker) -> None:
    """Leave a small JSON pointing at the run, so users and reports can find it."""
    if not tracker.active:
        return
    from medgen.io.atomic import write_text_atomic
    info = {"run_id": tracker.run_id, "tracking_uri": tracker.tracking_uri, "ui": ui_command(tracker.tracking_uri)}
    write_text_atomic(Path(output_dir) / "mlflow_run.json", json.dumps(info, indent=1))


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
