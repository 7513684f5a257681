"""An optional physical prior for rendered MR contrast: spin-echo signal of generic tissue types.

Fully random class intensities (``medgen.transforms.render``) make a network contrast-agnostic,
but for *translation* they also hide which tissue a region is: with fat and muscle in any order,
only shape tells them apart. This prior draws, for a sample, a random spin-echo acquisition
(TR, TE log-uniform over T1-, PD- and T2-weighted settings) and evaluates

    S = PD * (1 - exp(-TR / T1)) * exp(-TE / T2)

for the tissue a CT HU band stands for, with textbook-order relaxation times (1.5 T, e.g. fat
T1 ~ 260 ms / T2 ~ 80 ms, muscle ~ 900 / 45 ms, fluid ~ 3000 / 1000 ms, cortical bone with almost
no signal) each jittered by a random factor. It uses no statistics of any MR image (nor the
phantoms' tissue tables): it is a generic physical prior, mixed with the fully random contrasts
(``synth.physics_prob``) so the model still sees contrasts no scanner makes.

Examples:
    >>> import numpy as np
    >>> means = physics_means([-500, -200, -30, 20, 100, 200, 500], np.random.RandomState(0))
    >>> means.shape, bool(means.min() >= 0), bool(means.max() <= 1), bool(means[0] < 0.1)
    ((8,), True, True, True)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["TISSUE_PRIOR", "physics_means"]

#: (upper HU of the tissue type, PD, T1 ms, T2 ms): generic textbook values, darkest HU first
TISSUE_PRIOR: tuple[tuple[float, float, float, float], ...] = (
    (-500.0, 0.02, 1000.0, 5.0),     # air / lung: (almost) no protons
    (-200.0, 0.30, 1000.0, 40.0),    # low density: tissue mixed with gas
    (-30.0, 0.90, 260.0, 80.0),      # fat
    (20.0, 0.95, 2500.0, 600.0),     # fluid (and fat/water mixtures)
    (100.0, 0.80, 900.0, 45.0),      # soft tissue / muscle
    (200.0, 0.80, 800.0, 60.0),      # dense soft tissue, enhanced blood
    (500.0, 0.70, 450.0, 60.0),      # trabecular bone (marrow)
    (np.inf, 0.05, 1000.0, 2.0),     # cortical bone: ultra-short T2, no signal
)


def _tissue_of(hu: float) -> tuple[float, float, float]:
    for upper, pd, t1, t2 in TISSUE_PRIOR:
        if hu < upper:
            return pd, t1, t2
    return TISSUE_PRIOR[-1][1:]


def physics_means(bands: Sequence[float], rng: np.random.RandomState, *, jitter: float = 0.3) -> np.ndarray:
    """Mean intensity (0..1) of each HU band's class for one random spin-echo acquisition.

    Args:
        bands: HU edges (``len(bands) + 1`` classes, darkest first).
        rng: the random state (the renderer's, so a seed replays the draw).
        jitter: std of the log-normal factor applied to each tissue's PD, T1 and T2.
    """
    edges = [float(b) for b in bands]
    mids = [edges[0] - 300.0] + [(a + b) / 2 for a, b in zip(edges, edges[1:])] + [edges[-1] + 300.0]
    tr = float(np.exp(rng.uniform(np.log(300.0), np.log(6000.0))))
    te = float(np.exp(rng.uniform(np.log(5.0), np.log(150.0))))
    signal = []
    for hu in mids:
        pd, t1, t2 = (v * float(np.exp(rng.normal(0.0, jitter))) for v in _tissue_of(hu))
        signal.append(min(pd, 1.0) * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2))
    signal = np.asarray(signal, np.float64)
    return (signal / max(signal.max(), 1e-6)).astype(np.float32)
