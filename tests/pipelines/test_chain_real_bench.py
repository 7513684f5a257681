"""``bench/chain_real.py`` (the real-data acceptance run of the MR -> sCT -> CT segmenter chain).

The helpers are checked on small arrays; the whole bench runs with a few training steps on the
real sample data (skipped when it is absent): every output on its input's grid, the DICOM SEG
equal to the NIfTI mask, and a re-run resuming instead of retraining.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from medgen.io.volume import Volume

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("chain_real", REPO / "bench" / "chain_real.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_label_stats_and_plausibility_use_ras_world_coordinates():
    bench = _bench()
    # LPS-stored array (affine flips x and y): voxel i grows towards the patient's left
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[1:3, 4:6, :] = 1  # liver at small i = patient's right in LPS storage
    arr[7:9, 4:6, :] = 2  # spleen at large i = patient's left
    arr[4:6, 2:4, :] = 3  # vertebrae
    arr[4:6, 0:2, :] = 4  # aorta: smaller j than the vertebrae = more anterior (j grows towards posterior)
    stats = bench._label_stats(Volume(arr, affine), {1: "liver", 2: "spleen", 3: "vertebrae", 4: "aorta"})
    assert stats["liver"]["voxels"] == 16 and stats["liver"]["ml"] == pytest.approx(16 * 8 / 1000, abs=0.1)
    checks = bench._plausibility(stats)
    assert checks["liver_right_of_spleen"] is True
    assert checks["aorta_anterior_of_vertebrae"] is True
    swapped = bench._plausibility({"liver": stats["spleen"], "spleen": stats["liver"]})
    assert swapped == {"liver_right_of_spleen": False}


@pytest.mark.slow
@pytest.mark.real_data
def test_chain_real_bench_tiny_run_and_resume(tmp_path, sample_data, sample_path):
    sample_path("totalsegmentator")  # both samples the bench reads; skips naming a missing one
    sample_path("mridir_phantom", "mr_t2_dicom_subset")
    bench = _bench()
    out = tmp_path / "run"
    first = bench.run(out, sample_data, seg_steps=2, tr_steps=2, device="cpu", mlflow=False)
    assert first["all_grid_checks_pass"] is True
    for method in bench.METHODS:
        case = first["segment"][method]["mridir_dicom"]
        assert case["grid"]["dicom_seg_equals_nifti_mask"] is True
        assert Path(case["outputs"]["dicom_seg"]).exists() and Path(case["outputs"]["qc"]).exists()
        assert first["segment"][method]["mr_sm"]["grid"]["header_affine_equal"] is True
    assert "NOT held out" in first["segmenter_dice_example_ct_sm"]["note"]
    assert all(first["plausibility_on_example_ct_labels"].values())
    assert json.loads((out / "results.json").read_text())["training_total_s"] == first["training_total_s"]
    second = bench.run(out, sample_data, seg_steps=3, tr_steps=2, device="cpu", mlflow=False)
    assert second["segmenter"]["steps_before_this_run"] == 2 and second["segmenter"]["trained_now"] is True
    assert second["translator"]["trained_now"] is False
