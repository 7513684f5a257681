"""MLflow against a real tracking server: ``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT``.

The test starts ``mlflow server`` (SQLite backend, proxied artifact store) on a free loopback
port, runs two small medgen pipelines with the environment variable set (preprocessing and a
two-step segmenter training), checks through ``MlflowClient`` that the runs, params, per-step
metrics, dataset inputs, artifacts and registered model arrived on the server (and nothing in
the output folders), downloads the model back by ``models:/`` URI, and stops the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

mlflow = pytest.importorskip("mlflow")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """A live ``mlflow server`` on 127.0.0.1; yields its URL; killed (whole process group) after."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited early:\n{(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after 120 s:\n{(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, root
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log_file.close()


def _phantom_files(folder: Path, seeds) -> tuple[list[Path], list[Path]]:
    from medgen.data.phantoms import make_phantom
    from medgen.io.volume import Volume
    from medgen.io.writers import write_volume
    images, labels = [], []
    for seed in seeds:
        p = make_phantom(seed, shape=(32, 32, 16), spacing=(8.0, 8.0, 12.0))
        images.append(write_volume(Volume(p.ct, p.affine), folder / f"case{seed}_ct.nii.gz"))
        labels.append(write_volume(Volume(p.labels, p.affine), folder / f"case{seed}_labels.nii.gz"))
    return images, labels


@pytest.mark.slow
def test_pipelines_log_to_a_tracking_server(tracking_server, tmp_path, monkeypatch):
    from medgen.config import load_config
    from medgen.data.phantoms import label_names
    from medgen.models.bundle import load_bundle, resolve_model
    from medgen.pipelines.preprocess import run_preprocess
    from medgen.pipelines.train_segmenter import train_segmenter
    from medgen.training.segmenter import SegmenterConfig

    url, server_root = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    torch.manual_seed(0)
    images, labels = _phantom_files(tmp_path / "data", (1, 2))

    summary = run_preprocess(images, tmp_path / "pre", modality="ct", overrides=["spacing=[8.0, 8.0, 12.0]"])
    assert not summary.failed and summary.run_id
    config = load_config(None, SegmenterConfig, default="segmenter/ct_unet", overrides=[
        "data.spacing=[8.0, 8.0, 12.0]", "data.patch_size=[16, 16, 8]", "network.channels=[4, 8]",
        "network.strides=[2]", "train.log_every=1", "train.validate_every=2", "train.checkpoint_every=2",
        "export.registered_name=medgen-server-test-segmenter"])
    bundle = train_segmenter(config, images=images, labels=labels, label_names=label_names(),
                             output=tmp_path / "seg", max_steps=2, device="cpu")

    # nothing went to local stores: the server holds the runs
    assert not (tmp_path / "pre" / "mlflow.db").exists() and not (tmp_path / "seg" / "mlflow.db").exists()
    assert (server_root / "db.sqlite").exists()
    client = mlflow.MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("medgen")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {"preprocess", "train_segmenter"} <= set(runs)
    pre, seg = runs["preprocess"], runs["train_segmenter"]
    assert pre.info.run_id == summary.run_id and pre.info.status == "FINISHED" and seg.info.status == "FINISHED"
    # preprocessing: resolved config as params, counts as metrics, manifest as a dataset input + artifact
    assert pre.data.params["spacing"] == "[8.0, 8.0, 12.0]"
    assert pre.data.metrics["cases_done"] == 2
    assert [d.dataset.name for d in pre.inputs.dataset_inputs] == ["preprocess-ct"]
    assert "manifests" in {a.path for a in client.list_artifacts(pre.info.run_id)}
    # training: params, metrics per step, config.yaml, bundle, registered model version
    assert seg.data.params["network.channels"] == "[4, 8]"
    losses = client.get_metric_history(seg.info.run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2] and all(np.isfinite(m.value) for m in losses)
    artifacts = {a.path for a in client.list_artifacts(seg.info.run_id)}
    assert {"config.yaml", "bundle"} <= artifacts
    assert seg.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied through the server
    version = client.get_model_version("medgen-server-test-segmenter", "1")
    assert version.run_id == seg.info.run_id
    # round trip: the registered model, downloaded from the server, rebuilds the same network
    local = resolve_model("models:/medgen-server-test-segmenter/1")
    remote_net = load_bundle(local, kind="segmenter").build()
    local_net = load_bundle(bundle, kind="segmenter").build()
    for (key, a), (_, b) in zip(local_net.state_dict().items(), remote_net.state_dict().items()):
        assert torch.equal(a, b), key
