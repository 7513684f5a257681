"""Shared test fixtures: real sample data (skipped when absent) and small seeded phantoms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Keep the suite predictable on small CI machines (2 cores).
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def one_thread():
    """Run torch on one thread for the test, then restore the suite's setting.

    Tiny models train fastest single-threaded (no OpenMP hand-offs), float results stay the same
    in-process and in subprocesses, and a loaded 2-core machine does not make 2-thread steps crawl.
    Modules where every test wants it use ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sample_data_dir() -> Path:
    """``MEDGEN_SAMPLE_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("MEDGEN_SAMPLE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The real sample data folder; tests using it skip cleanly when it is absent."""
    path = sample_data_dir()
    if not path.is_dir():
        pytest.skip(f"real sample data not found at {path} (set MEDGEN_SAMPLE_DATA)")
    return path


@pytest.fixture(scope="session")
def sample_path(sample_data):
    """``sample_path("mridir_phantom", "mr_t2_dicom_subset")``: that file or folder of the sample data.

    The test skips, naming the missing sample, when that one is absent: a partial copy of the
    sample data runs the tests whose samples it holds.
    """
    def find(*parts: str) -> Path:
        path = sample_data.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"sample {'/'.join(parts)} not found in {sample_data}")
        return path
    return find


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Every test that reads the real sample data carries ``real_data`` (``-m "not real_data"``)."""
    for item in items:
        if {"sample_data", "sample_path"} & set(getattr(item, "fixturenames", ())) \
                and item.get_closest_marker("real_data") is None:
            item.add_marker(pytest.mark.real_data)


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch):
    """Never let a test write to a developer's real tracking server, nor leak MLflow state.

    MLflow keeps the tracking URI and the active run in process globals; a test that fails
    inside a run (or sets a URI) must not change where the next test logs.
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    import sys
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)  # back to "not set" (also clears the env var MLflow exported)


@pytest.fixture(autouse=True)
def _restore_grad_mode():
    """A test that turns autograd off globally (e.g. a MONAI bundle run in-process whose config
    calls ``torch.set_grad_enabled(False)``) must not break every training test after it."""
    import torch
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)
