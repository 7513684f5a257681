"""Label-free choice between translator runs of one configuration (best-of-K starts).

Unpaired MR->CT training has modes: on the phantom demo most runs settle early into a
low-contrast synthetic CT (fat grey instead of about -100 HU, vessels dark), a minority into
one with CT-like tissue values, whatever the seed's other details. Nothing labelled tells them
apart at training time, but their own CT discriminators do: at the end of training the good
runs' generators fool their discriminators more (LSGAN loss ``g_adv_ct`` below about 0.33 in 3
of 3 good runs, at or above 0.34 in 11 of 11 grey runs, 1200 steps). Training K runs with
different seeds and keeping the one with the lowest final ``g_adv_ct`` turns a per-run chance of
the good mode into a per-K-runs chance. The score compares runs of the *same* configuration
only: discriminators of other sizes or objectives are not on one scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medgen.errors import MedgenError
from medgen.training.loop import read_history

__all__ = ["adversarial_score", "pick_translator_run"]


def adversarial_score(run_dir: str | Path, *, last_rows: int = 5) -> float:
    """Mean generator adversarial loss on CT (``g_adv_ct``) over the last ``last_rows`` logged
    training rows of a translator run (lower: its discriminator finds the synthetic CT more CT-like)."""
    rows = [r for r in read_history(run_dir) if r.get("phase") == "train" and "g_adv_ct" in r]
    if not rows:
        raise MedgenError("no logged translator training rows (g_adv_ct) to score", path=run_dir,
                          fix="train the translator first (its metrics.jsonl holds the training log)")
    return float(np.mean([r["g_adv_ct"] for r in rows[-last_rows:]]))


def pick_translator_run(run_dirs: list[str | Path], *, last_rows: int = 5) -> tuple[Path, dict[str, float]]:
    """The run with the lowest :func:`adversarial_score`, and every run's score (by path)."""
    scores = {str(d): adversarial_score(d, last_rows=last_rows) for d in run_dirs}
    best = min(scores, key=scores.get)
    return Path(best), scores
