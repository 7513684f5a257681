"""Two pipelines in one process each log to their own output folder's store."""

import os

import mlflow

from medgen.tracking import start_run


def test_consecutive_runs_do_not_inherit_each_others_store(tmp_path):
    with start_run("first", output_dir=tmp_path / "a") as first:
        first.log_metrics({"x": 1.0})
    assert "MLFLOW_TRACKING_URI" not in os.environ
    with start_run("second", output_dir=tmp_path / "b") as second:
        second.log_metrics({"x": 2.0})
    assert first.tracking_uri != second.tracking_uri
    assert str(tmp_path / "b") in second.tracking_uri
    for tracker, name in ((first, "first"), (second, "second")):
        client = mlflow.MlflowClient(tracking_uri=tracker.tracking_uri)
        experiment = client.get_experiment_by_name("medgen")
        runs = client.search_runs([experiment.experiment_id])
        assert [r.info.run_name for r in runs] == [name]
