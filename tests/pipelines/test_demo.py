"""``medgen demo`` end to end with the test-only config (``configs/demo/test.yaml``).

One demo run (module fixture, about a minute and a half on 2 cores) is checked for what a
newcomer relies on: the report and its figures, ``metrics.json`` with sensible values, and the
MLflow story (a parent run, nested runs per pipeline, registered models, report artifacts).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from medgen.cli import main
from medgen.errors import OutputError

METHODS = ("chain", "painted", "direct", "none", "histogram", "upper_bound")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    code = main(["demo", "-o", str(out), "-c", "demo/test", "-q", "--sample-data", str(out.parent / "none")])
    assert code == 2, "a missing --sample-data folder is a one-line error"
    code = main(["demo", "-o", str(out), "-c", "demo/test", "-q"])
    assert code == 0
    return out


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.slow
def test_report_and_figures(demo_dir):
    md, html = (demo_dir / "report.md").read_text(), (demo_dir / "report.html").read_text()
    for text in (md, html):
        assert "Dice per organ" in text and "Synthetic CT vs true CT" in text and "mlflow ui --backend-store-uri" in text
        assert "upper bound" in text and "histogram" in text
    # every figure the documents reference exists and is a real picture
    linked_md = set(re.findall(r"\]\((figures/[^)]+\.png)\)", md))
    linked_html = set(re.findall(r'src="(figures/[^"]+\.png)"', html))
    assert linked_md == linked_html and len(linked_md) >= 8
    for rel in linked_md:
        width, height = _png_size(demo_dir / rel)
        assert width >= 200 and height >= 50, rel
    names = {Path(r).name for r in linked_md}
    assert {"dice.png", "samples.png", "methods.png", "generated.png", "label_legend.png",
            "curves_segmenter.png", "curves_translator.png", "curves_generator.png"} <= names
    # the stage table lists every stage with its time
    for stage in ("phantoms", "preprocess", "train segmenter", "train synth segmenter", "train translator",
                  "segment test MRs", "evaluate", "generator"):
        assert f"| {stage} | ok |" in md
    # the synthesis route's direct segmenter is scored next to the chain and the baselines
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    assert "direct" in json.dumps(metrics["segmentation"]) and "contrast-agnostic" in md


@pytest.mark.slow
def test_metrics_file_holds_sensible_values(demo_dir):
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    assert all(s["status"] == "ok" for s in metrics["stages"].values()), metrics["stages"]
    assert all(s["seconds"] > 0 for s in metrics["stages"].values())
    seg = metrics["segmentation"]
    assert set(seg["mean"]) == set(METHODS)
    for method in METHODS:
        values = list(seg["mean"][method].values())
        assert {"liver", "spleen", "kidney_left", "vertebrae"} <= set(seg["mean"][method])
        assert all(0.0 <= v <= 1.0 for v in values), (method, values)
        assert 0.0 <= seg["organs_mean"][method] <= 1.0
    # the segmenter learned something on true CT, and the chain beats segmenting the raw MR
    assert seg["organs_mean"]["upper_bound"] > 0.15
    assert seg["organs_mean"]["chain"] > seg["organs_mean"]["none"]
    sct = metrics["translation"]["mean"]
    assert set(sct) == {"chain", "painted", "none", "histogram"}
    for method, values in sct.items():
        assert math.isfinite(values["mae_hu"]) and values["mae_hu"] > 0
        assert -1.0 <= values["ssim"] <= 1.0
    # a trained translator's synthetic CT is closer to the true CT than either baseline's image
    assert sct["chain"]["mae_hu"] < min(sct["none"]["mae_hu"], sct["histogram"]["mae_hu"])
    # generated volumes exist with their datalist
    datalist = json.loads((demo_dir / "generated" / "datalist.json").read_text())
    entries = datalist["training"] if isinstance(datalist, dict) else datalist
    assert len(entries) == metrics["config"]["generator"]["n_samples"]


@pytest.mark.slow
def test_mlflow_parent_and_nested_runs(demo_dir):
    from mlflow import MlflowClient

    info = json.loads((demo_dir / "mlflow_run.json").read_text())
    assert info["tracking_uri"] == f"sqlite:///{(demo_dir / 'mlflow.db').resolve().as_posix()}"
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    parent = client.get_run(info["run_id"])
    assert parent.info.run_name == "demo" and parent.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in parent.data.tags
    assert parent.data.params["translator.max_steps"] == "120"
    assert 0.0 <= parent.data.metrics["dice_mean/chain"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/metrics.json", "report/figures"} <= artifacts
    assert any(a.path.endswith("samples.png") for a in client.list_artifacts(parent.info.run_id, "report/figures"))

    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = sorted(r.info.run_name for r in children)
    assert names == sorted(["preprocess", "preprocess", "train_segmenter", "train_segmenter", "train_translator",
                            "evaluate", "train_generator", "generate"])  # the second segmenter: the synthesis route's
    assert all(r.info.status == "FINISHED" for r in children)
    by_name = {r.info.run_name: r for r in children}
    translator = by_name["train_translator"]
    assert translator.data.params["data.patch_size"] == "[32, 32]"  # resolved config as params
    assert client.get_metric_history(translator.info.run_id, "train/g_total"), "metrics per step"
    assert translator.inputs.dataset_inputs, "the training manifest is a dataset input"
    assert {"config.yaml", "bundle"} <= {a.path for a in client.list_artifacts(translator.info.run_id)}
    evaluate = by_name["evaluate"]
    assert evaluate.data.metrics["dice_mean/chain"] == pytest.approx(parent.data.metrics["dice_mean/chain"])
    # every trained model is registered under a readable name, pointing at its nested run
    registered = {}
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name = '{model.name}'"):
            registered[model.name] = version.run_id
    assert registered["medgen-segmenter"] == by_name["train_segmenter"].info.run_id
    assert registered["medgen-translator"] == translator.info.run_id
    assert registered["medgen-generator-ct"] == by_name["train_generator"].info.run_id
    # no stray stores: everything went to the parent's store
    assert not list((demo_dir / "runs").rglob("mlflow.db"))


def test_output_folder_rules(tmp_path):
    from medgen.pipelines.demo import MARKER, prepare_output_dir
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(OutputError, match="does not hold a previous demo"):
        prepare_output_dir(foreign)
    assert main(["demo", "-o", str(foreign), "-c", "demo/test", "-q"]) == 2
    assert (foreign / "thesis.tex").read_text() == "precious"
    # a previous demo's results are replaced, its MLflow store kept
    previous = tmp_path / "previous"
    (previous / "runs" / "segmenter").mkdir(parents=True)
    (previous / MARKER).write_text("")
    (previous / "mlflow.db").write_text("runs")
    prepare_output_dir(previous)
    assert not (previous / "runs").exists() and (previous / "mlflow.db").read_text() == "runs"


def test_demo_configs_are_valid():
    from medgen.pipelines.demo import load_demo_config
    quick, full = load_demo_config(quick=True), load_demo_config()
    assert quick.translator.max_steps < full.translator.max_steps
    assert quick.phantoms.n_test >= 1 and full.phantoms.n_test >= quick.phantoms.n_test
    test = load_demo_config("demo/test", overrides=["phantoms.n_test=3"])
    assert test.phantoms.n_test == 3


@pytest.mark.slow
@pytest.mark.real_data
def test_real_mr_stage_writes_mask_on_the_mr_grid(demo_dir, sample_data, tmp_path):
    """``--sample-data``: the phantom-trained chain runs on the real MR; the mask lands on its grid."""
    import numpy as np

    from medgen.io.readers import read_volume
    from medgen.pipelines.demo import find_sample_mrs, load_demo_config, segment_real_mrs
    from medgen.pipelines.demo_report import real_mr_figure

    if not find_sample_mrs(sample_data):
        pytest.skip("no example_mr_sm.nii.gz in the sample data")
    config = load_demo_config("demo/test")
    result = segment_real_mrs(tmp_path, config, sample_data, str(demo_dir / "runs" / "segmenter"),
                              str(demo_dir / "runs" / "translator"))
    case = result["cases"]["example_mr_sm"]
    mr, mask = read_volume(case["mr"]), read_volume(case["mask"], kind="label")
    assert mask.shape == mr.shape and np.allclose(mask.affine, mr.affine, atol=1e-4)
    assert mr.orientation == mask.orientation == "LPS"  # stored LPS; the mask keeps the MR's own orientation
    assert Path(case["qc"]).exists()
    width, _ = _png_size(real_mr_figure(tmp_path / "real.png", case))
    assert width >= 300
