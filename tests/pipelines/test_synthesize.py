"""``medgen synthesize``: renderings with exact labels, datalist, QC montage, seeds, no overwrite."""

from __future__ import annotations

import json

import numpy as np

from medgen.cli import main
from medgen.data.phantoms import make_phantom
from medgen.io.readers import read_volume
from medgen.io.volume import Volume
from medgen.io.writers import write_volume


def _case(tmp_path, seed=0):
    p = make_phantom(seed, shape=(40, 36, 16), spacing=(4.0, 4.0, 6.0))
    lab = write_volume(Volume(p.labels, p.affine), tmp_path / "lab" / f"c{seed}.nii.gz")
    ct = write_volume(Volume(p.ct, p.affine), tmp_path / "ct" / f"c{seed}.nii.gz")
    names = tmp_path / "names.json"
    names.write_text(json.dumps({str(k): v for k, v in p.label_names.items()}))
    return p, lab, ct, names


def test_synthesize_writes_pairs_on_the_input_grid_and_is_seeded(tmp_path, capsys):
    p, lab, ct, names = _case(tmp_path)
    args = ["synthesize", "--labels", str(lab), "--ct", str(ct), "--label-names", str(names), "-n", "3",
            "--seed", "4", "--no-mlflow", "-q"]
    assert main(args + ["-o", str(tmp_path / "a")]) == 0
    assert main(args + ["-o", str(tmp_path / "b")]) == 0
    datalist = json.loads((tmp_path / "a" / "datalist.json").read_text())
    assert len(datalist["training"]) == 3 and datalist["label_names"]["3"] == p.label_names[3]
    assert (tmp_path / "a" / "qc_synthesized.png").stat().st_size > 10_000
    images = []
    for entry in datalist["training"]:
        image = read_volume(tmp_path / "a" / entry["image"])
        label = read_volume(tmp_path / "a" / entry["label"], kind="label")
        again = read_volume(tmp_path / "b" / entry["image"])
        assert image.shape == label.shape == p.labels.shape
        assert np.allclose(image.affine, p.affine) and np.allclose(label.affine, p.affine)
        assert np.array_equal(image.array, again.array)  # same seed, same files
        assert set(np.unique(label.array)) <= set(np.unique(p.labels))
        assert -1.0 <= image.array.min() and image.array.max() <= 1.0
        images.append(image.array)
    assert not np.array_equal(images[0], images[1])  # every rendering differs
    # never overwrites: a second run into the same folder is one clear line
    assert main(args + ["-o", str(tmp_path / "a")]) == 2
    assert "datalist.json" in capsys.readouterr().err


def test_synthesize_without_labels_found_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["synthesize", "--labels", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "-n", "1",
                 "--no-mlflow", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and "empty" in err[0] and "Fix:" in err[0]


def test_synthesize_never_replaces_a_users_file_in_the_output_folder(tmp_path, capsys):
    _, lab, ct, names = _case(tmp_path)
    out = tmp_path / "renders"
    out.mkdir()
    mine = out / "label_names.json"
    mine.write_text("my notes")
    code = main(["synthesize", "--labels", str(lab), "--ct", str(ct), "--label-names", str(names), "-n", "1",
                 "-o", str(out), "--no-mlflow", "-q"])
    assert code == 2 and mine.read_text() == "my notes"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label_names.json" in err[0]
