"""Batch ``medgen translate``: a folder of scans, worker processes, failure isolation, resume."""

import json

import nibabel as nib
import numpy as np
import pytest

from medgen.cli import main
from medgen.data.phantoms import make_phantom
from medgen.io.volume import Volume
from medgen.io.writers import write_volume
from medgen.pipelines.train_translator import export_translator
from medgen.runtime import seed_everything
from medgen.training.translator import TranslatorConfig, build_networks


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_bundle(folder):
    config = TranslatorConfig.model_validate({
        "model": {"spatial_dims": 2, "context": 3, "features": 4, "n_blocks": 1},
        "data": {"patch_size": [16, 16]},
        "preprocess": {"ct": {"modality": "ct", "ct": {"window": [-1000, 1500]}}}})
    seed_everything(0)
    return export_translator(folder, config, build_networks(config.model)["g_mr2ct"], steps=0)


@pytest.mark.slow
def test_batch_translate_with_workers_isolates_a_bad_scan_and_resumes(tmp_path):
    bundle = _tiny_bundle(tmp_path / "bundle")
    scans = tmp_path / "scans"
    scans.mkdir()
    shapes = {"good_a": (40, 36, 12), "good_b": (36, 32, 10)}
    for i, (name, shape) in enumerate(shapes.items()):
        p = make_phantom(i, shape=shape)
        affine = p.affine.copy()
        if name == "good_b":  # stored LPS: the output must follow the input's own grid
            affine = affine @ np.diag([-1.0, -1.0, 1.0, 1.0])
        write_volume(Volume(p.mr, affine), scans / f"{name}.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not a gzip stream")
    out = tmp_path / "out"
    args = ["translate", "-q", "-i", str(scans), "-o", str(out), "-m", str(bundle), "--device", "cpu",
            "--precision", "fp32", "--workers", "2"]

    assert main(args) == 1  # one scan failed
    summary = json.loads((out / "translate_summary.json").read_text())
    status = {c["case_id"]: c["status"] for c in summary["cases"]}
    assert status == {"good_a": "ok", "good_b": "ok", "broken": "failed"}
    assert (summary["ok"], summary["failed"]) == (2, 1)
    bad = next(c for c in summary["cases"] if c["case_id"] == "broken")
    assert "broken.nii.gz" in bad["error"]
    for name in shapes:
        written, source = nib.load(str(out / f"{name}_sct.nii.gz")), nib.load(str(scans / f"{name}.nii.gz"))
        assert written.shape == source.shape and np.allclose(written.affine, source.affine)
        hu = np.asarray(written.dataobj)
        assert hu.min() >= -1000 and hu.max() <= 1500 and hu.max() > -1000
    assert not (out / "broken_sct.nii.gz").exists()
    assert not list(out.glob(".*in_progress")) and not list(out.glob("*.tmp*"))

    before = {name: (out / f"{name}_sct.nii.gz").stat().st_mtime_ns for name in shapes}
    assert main(args) == 1  # rerun: finished scans skipped, the bad one tried again
    summary = json.loads((out / "translate_summary.json").read_text())
    status = {c["case_id"]: c["status"] for c in summary["cases"]}
    assert status == {"good_a": "skipped", "good_b": "skipped", "broken": "failed"}
    assert before == {name: (out / f"{name}_sct.nii.gz").stat().st_mtime_ns for name in shapes}
