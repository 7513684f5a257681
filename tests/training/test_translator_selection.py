"""Best-of-K translator runs: the label-free score and the pick."""

import json

import pytest

from medgen.errors import MedgenError
from medgen.training.translator_selection import adversarial_score, pick_translator_run


def _run(folder, g_adv_ct: list[float], val_mae: float = 100.0):
    folder.mkdir(parents=True)
    rows = [{"step": 20 * (i + 1), "phase": "train", "g_adv_ct": v, "d_ct": 0.2} for i, v in enumerate(g_adv_ct)]
    rows.insert(3, {"step": 60, "phase": "val", "mae_hu": val_mae})  # validation rows are ignored
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9')  # torn line
    return folder


def test_score_is_the_mean_of_the_last_training_rows(tmp_path):
    run = _run(tmp_path / "a", [0.9, 0.8, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1])
    assert adversarial_score(run, last_rows=5) == pytest.approx((0.5 + 0.4 + 0.3 + 0.2 + 0.1) / 5)
    assert adversarial_score(run, last_rows=1) == pytest.approx(0.1)


def test_pick_keeps_the_run_its_discriminator_finds_most_ct_like(tmp_path):
    grey = _run(tmp_path / "seed0", [0.40, 0.36, 0.35, 0.36, 0.34, 0.35])
    good = _run(tmp_path / "seed1", [0.60, 0.45, 0.33, 0.30, 0.29, 0.31])
    worse = _run(tmp_path / "seed2", [0.50, 0.50, 0.52, 0.55, 0.54, 0.53])
    chosen, scores = pick_translator_run([grey, good, worse])
    assert chosen == good
    assert set(scores) == {str(grey), str(good), str(worse)} and scores[str(good)] < scores[str(grey)]


def test_a_run_without_training_rows_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedgenError, match="no logged translator training rows"):
        adversarial_score(tmp_path / "empty")
