"""MLflow tracking with the default store (an SQLite file in the output folder).

Checks what every pipeline relies on: the resolved config as params and as ``config.yaml``,
metrics per step, the manifest as a dataset input, the bundle as artifacts registered as a model
version that ``models:/name/version`` downloads back bit for bit, nested runs attaching to an
active parent's store, and the ``MLFLOW_TRACKING_URI`` override.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from medgen.config import StrictModel
from medgen.networks.registry import build_network
from medgen.models.bundle import BundleSpec, load_bundle, resolve_model, save_bundle
from medgen.tracking import default_tracking_uri, download_model, start_run, ui_command, write_run_info

mlflow = pytest.importorskip("mlflow")


class _Train(StrictModel):
    lr: float = 2e-4
    steps: int = 3


class _Config(StrictModel):
    name: str = "tiny"
    train: _Train = _Train()


def _tiny_bundle(folder):
    torch.manual_seed(0)
    spec = BundleSpec(kind="segmenter",
                      network={"name": "monai.UNet", "kwargs": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                                                                 "channels": [4, 8], "strides": [2]}},
                      label_names={0: "background", 1: "liver"})
    net = build_network(spec.network["name"], spec.network["kwargs"])
    save_bundle(folder, spec, net)
    return net


def _manifest(path):
    path.write_text("case_id,path,modality\ncase0,/data/case0.nii.gz,ct\ncase1,/data/case1.nii.gz,ct\n")
    return path


@pytest.mark.slow
def test_run_logs_config_metrics_manifest_and_registered_bundle(tmp_path):
    out = tmp_path / "run"
    net = _tiny_bundle(out / "bundle")
    manifest = _manifest(tmp_path / "manifest.csv")
    with start_run("train_segmenter", output_dir=out, tags={"purpose": "test"}) as tracker:
        assert tracker.active and tracker.tracking_uri == default_tracking_uri(out)
        tracker.log_config(_Config())
        for step in (1, 2, 3):
            tracker.log_metrics({"train/loss": 1.0 / step, "val/dice@liver": 0.5, "skipped": float("nan")}, step=step)
        tracker.log_manifest(manifest, "ct_cases")
        uri = tracker.log_bundle(out / "bundle", "medgen-test-segmenter")
        write_run_info(out, tracker)
        run_id = tracker.run_id

    assert (out / "mlflow.db").exists(), "default store is an SQLite file in the output folder"
    assert uri == "models:/medgen-test-segmenter/1"
    client = mlflow.MlflowClient(tracking_uri=default_tracking_uri(out))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.0002" and run.data.params["name"] == "tiny"
    assert run.data.tags["medgen.pipeline"] == "train_segmenter" and run.data.tags["purpose"] == "test"
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.3333)]
    assert "val/dice_liver" in run.data.metrics and "skipped" not in run.data.metrics
    # config.yaml artifact is the resolved config
    cfg_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml",
                                                   dst_path=str(tmp_path / "dl"), tracking_uri=client.tracking_uri)
    assert yaml.safe_load(open(cfg_path)) == {"name": "tiny", "train": {"lr": 0.0002, "steps": 3}}
    # the manifest is a dataset input with the CSV's rows
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name == "ct_cases"
    assert json.loads(inputs[0].dataset.profile)["num_rows"] == 2
    assert inputs[0].tags[0].value == "training"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "bundle", "manifests"} <= artifacts
    # registered model version points at this run
    version = client.get_model_version("medgen-test-segmenter", "1")
    assert version.run_id == run_id
    # run info for users and reports
    info = json.loads((out / "mlflow_run.json").read_text())
    assert info["run_id"] == run_id and info["ui"] == ui_command(default_tracking_uri(out))
    assert info["ui"].startswith("mlflow ui --backend-store-uri sqlite:///")

    # round trip: models:/ URI -> local bundle -> same weights
    mlflow.set_tracking_uri(default_tracking_uri(out))
    local = download_model(uri)
    assert (local / "medgen.json").exists()
    rebuilt = load_bundle(resolve_model(uri), kind="segmenter").build()
    for (k, a), (_, b) in zip(net.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), k
    # a second registration of the same name makes version 2
    with start_run("train_segmenter", output_dir=out) as tracker:
        assert tracker.log_bundle(out / "bundle", "medgen-test-segmenter") == "models:/medgen-test-segmenter/2"


def test_nested_runs_go_to_the_parents_store(tmp_path):
    parent_dir, child_dir = tmp_path / "demo", tmp_path / "demo" / "segmenter"
    with start_run("demo", output_dir=parent_dir) as parent:
        # a pipeline called inside a workflow passes its own output folder; it must still nest
        with start_run("train_segmenter", output_dir=child_dir) as child:
            child.log_metrics({"loss": 1.0}, step=1)
            assert child.tracking_uri == parent.tracking_uri
        with start_run("translate", output_dir=tmp_path / "elsewhere", nested=True) as child2:
            child2.log_metrics({"mae": 50.0})
    assert not (child_dir / "mlflow.db").exists() and not (tmp_path / "elsewhere" / "mlflow.db").exists()
    client = mlflow.MlflowClient(tracking_uri=default_tracking_uri(parent_dir))
    runs = client.search_runs([parent.run.info.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"demo", "train_segmenter", "translate"}
    for name in ("train_segmenter", "translate"):
        assert by_name[name].data.tags["mlflow.parentRunId"] == parent.run_id
    assert "mlflow.parentRunId" not in by_name["demo"].data.tags
    # after the parent closes, a new run is top level again in its own folder's store
    with start_run("preprocess", output_dir=tmp_path / "later") as later:
        pass
    assert later.tracking_uri == default_tracking_uri(tmp_path / "later")
    assert "mlflow.parentRunId" not in mlflow.MlflowClient(later.tracking_uri).get_run(later.run_id).data.tags


def test_env_uri_overrides_and_disabled_tracker(tmp_path, monkeypatch):
    store = tmp_path / "central.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    with start_run("generate", output_dir=tmp_path / "out") as tracker:
        tracker.log_metrics({"n": 3})
    assert tracker.tracking_uri == f"sqlite:///{store}" and store.exists()
    assert not (tmp_path / "out" / "mlflow.db").exists()
    with start_run("generate", output_dir=tmp_path / "off", enabled=False) as off:
        off.log_metrics({"n": 1})  # no-ops
        off.log_config(_Config())
        assert not off.active and off.log_bundle(tmp_path, "x") is None
    assert not (tmp_path / "off" / "mlflow.db").exists()


def test_downloaded_models_are_removed_at_exit(tmp_path, monkeypatch):
    """Each download lands in its own temp folder, registered for removal when the process exits."""
    import atexit
    import shutil

    registered = []
    monkeypatch.setattr(atexit, "register", lambda fn, *args, **kw: registered.append((fn, args, kw)))
    source = tmp_path / "bundle"
    source.mkdir()
    (source / "weights.bin").write_bytes(b"\x01\x02")
    local = download_model(source.as_uri())
    assert (local / "weights.bin").read_bytes() == b"\x01\x02"
    [(fn, args, kw)] = [r for r in registered if r[0] is shutil.rmtree]  # (mlflow registers its own too)
    assert local.is_relative_to(args[0])
    fn(*args, **kw)
    assert not args[0].exists()
