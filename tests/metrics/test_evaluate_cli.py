"""``medgen evaluate``: name matching across files, grid resampling, JSON/CSV outputs."""

import csv
import json

import numpy as np

from medgen.cli import main
from medgen.data.phantoms import make_phantom
from medgen.io.geometry import reorient
from medgen.io.volume import Volume
from medgen.io.writers import write_volume


def test_evaluate_segmentation_matches_names_and_resamples(tmp_path):
    p = make_phantom(2, shape=(32, 32, 16), spacing=(4, 4, 6))
    ref = write_volume(Volume(p.labels, p.affine), tmp_path / "ref.nii.gz")
    (tmp_path / "ref.json").write_text(json.dumps({str(k): v for k, v in p.label_names.items()}))
    # prediction: liver and spleen only, other ids, stored LPS (another voxel order)
    pred_arr = np.zeros_like(p.labels)
    pred_arr[p.labels == 3] = 1
    pred_arr[p.labels == 4] = 2
    pred = write_volume(reorient(Volume(pred_arr, p.affine), "LPS"), tmp_path / "pred.nii.gz")
    (tmp_path / "pred.json").write_text(json.dumps({"0": "background", "1": "liver", "2": "spleen"}))
    out = tmp_path / "scores.json"
    assert main(["evaluate", "segmentation", "--pred", str(pred), "--ref", str(ref), "--pred-labels",
                 str(tmp_path / "pred.json"), "--ref-labels", str(tmp_path / "ref.json"), "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["labels"]) == {"liver", "spleen"}
    assert report["labels"]["liver"]["dice"] == 1.0 and report["labels"]["spleen"]["hd95"] == 0.0
    assert report["resampled_prediction"] is True
    out_csv = tmp_path / "scores.csv"
    assert main(["evaluate", "segmentation", "--pred", str(pred), "--ref", str(ref), "--pred-labels",
                 str(tmp_path / "pred.json"), "--ref-labels", str(tmp_path / "ref.json"), "-o", str(out_csv)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["label"] for r in rows] == ["liver", "spleen"] and float(rows[0]["dice"]) == 1.0


def test_evaluate_translation_known_mae(tmp_path):
    p = make_phantom(2, shape=(32, 32, 16), spacing=(4, 4, 6))
    ref = write_volume(Volume(p.ct, p.affine), tmp_path / "ct.nii.gz")
    pred = write_volume(Volume(p.ct + 25.0, p.affine), tmp_path / "sct.nii.gz")
    mask = write_volume(Volume((p.labels > 0).astype(np.uint8), p.affine), tmp_path / "body.nii.gz")
    out = tmp_path / "m.json"
    assert main(["evaluate", "translation", "--pred", str(pred), "--ref", str(ref), "--mask", str(mask),
                 "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert abs(report["mae_hu"] - 25.0) < 0.5
    assert report["ssim"] > 0.95 and report["psnr_db"] > 30
    assert report["n_voxels"] == int((p.labels > 0).sum())
