"""How realistic synthetic images are: per-label intensity distances and a Frechet distance.

* :func:`per_label_wasserstein`: for each label (matched by id), the 1D Wasserstein (earth
  mover's) distance between the intensities of generated and real images inside that label, in
  the images' own units (HU for CT). It answers "does synthetic liver look like real liver?",
  including texture spread and not only the mean. Images and label maps need not share a grid
  or anatomy: generated and real sets are compared as intensity distributions per tissue.
* :func:`frechet_distance`: the Frechet distance between Gaussians fitted to feature vectors of
  generated and real axial slices. **Feature network**: :class:`RandomConvFeatures`, a small
  2D conv net with weights drawn from a fixed seed and never trained (shipped as code, so no
  download is ever needed). Limitation: random features capture edges, textures and intensity
  statistics but no learned anatomy, so the number is a *relative* measure: only compare values
  computed with the same feature net, the same intensity normalisation and similar numbers of
  slices (the estimate is biased upward for small samples). Any other fixed network can be
  passed instead, e.g. the encoder of a segmenter trained on real data
  (``feature_net=...`` taking ``(N, 1, H, W)`` and returning ``(N, D)``).

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> lab = np.zeros((8, 8, 4), int); lab[2:6, 2:6] = 1
    >>> real = rng.normal(0, 1, lab.shape); fake = real + 5
    >>> round(per_label_wasserstein(fake, real, lab, {0: "bg", 1: "organ"})["organ"], 3)
    5.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import stats

__all__ = ["per_label_wasserstein", "per_label_means", "RandomConvFeatures", "slice_features", "frechet_distance",
           "frechet_from_features"]


def _as_list(x) -> list[np.ndarray]:
    return [np.asarray(a) for a in x] if isinstance(x, (list, tuple)) else [np.asarray(x)]


def _values(images, labels, value, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    chunks = [img[lab == value].astype(np.float64) for img, lab in zip(images, labels)]
    vals = np.concatenate(chunks) if chunks else np.zeros(0)
    if vals.size > max_samples:
        vals = rng.choice(vals, max_samples, replace=False)
    return vals


def per_label_wasserstein(fake, real, labels, label_names: Mapping[int, str] | None = None, *,
                          real_labels=None, include_background: bool = False, max_samples: int = 50_000,
                          seed: int = 0) -> dict[str, float]:
    """Per-label 1D Wasserstein distance between generated and real intensities.

    Args:
        fake: a generated image or a list of them.
        real: a real image or a list of them.
        labels: the generated images' label map(s).
        label_names: id -> name (keys of the result); missing ids are named ``label_<id>``.
        real_labels: the real images' label map(s) (default: ``labels``, for paired data).
        include_background: also score label 0.
        max_samples: voxels sampled per label and side (speed); seeded.

    Returns:
        ``{name: distance}`` in image units, for labels present on both sides.
    """
    fakes, reals = _as_list(fake), _as_list(real)
    fake_labels = _as_list(labels)
    real_labels = fake_labels if real_labels is None else _as_list(real_labels)
    rng = np.random.default_rng(seed)
    names = dict(label_names or {})
    ids = set().union(*(np.unique(a).tolist() for a in fake_labels)) & set().union(
        *(np.unique(a).tolist() for a in real_labels))
    out = {}
    for value in sorted(int(v) for v in ids):
        if value == 0 and not include_background:
            continue
        f = _values(fakes, fake_labels, value, max_samples, rng)
        r = _values(reals, real_labels, value, max_samples, rng)
        if f.size and r.size:
            out[names.get(value, f"label_{value}")] = float(stats.wasserstein_distance(f, r))
    return out


def per_label_means(image, labels, label_names: Mapping[int, str] | None = None) -> dict[str, float]:
    """Mean intensity per label (over a list of images, pooled)."""
    images, labs = _as_list(image), _as_list(labels)
    names = dict(label_names or {})
    ids = sorted(set().union(*(np.unique(a).tolist() for a in labs)))
    return {names.get(int(v), f"label_{int(v)}"): float(np.mean(np.concatenate(
        [img[lab == v] for img, lab in zip(images, labs)]))) for v in ids}


class RandomConvFeatures(torch.nn.Module):
    """A fixed, randomly initialised 2D conv net (seeded; never trained) used as a feature space.

    Three stride-2 conv + ReLU layers (16, 32, 64 channels); the feature vector is the spatial
    mean and standard deviation of every layer (224 numbers), which makes it size-agnostic.
    """

    def __init__(self, seed: int = 0, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        layers, cin = [], 1
        for w in widths:
            conv = torch.nn.Conv2d(cin, w, 3, stride=2, padding=1)
            fan_in = cin * 9
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                conv.bias.zero_()
            layers.append(conv)
            cin = w
        self.layers = torch.nn.ModuleList(layers)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for conv in self.layers:
            x = torch.relu(conv(x))
            feats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        return torch.cat(feats, 1)


@torch.no_grad()
def slice_features(volumes, *, feature_net: torch.nn.Module | None = None, axis: int = 2,
                   min_foreground: float = 0.05, background: float = -1.0, batch: int = 64) -> np.ndarray:
    """Feature vectors of the axial slices of unit-range volumes (``[-1, 1]``).

    Slices whose foreground (values above ``background + 0.05``) covers less than
    ``min_foreground`` of the slice are skipped (empty slices would dominate).
    """
    net = feature_net if feature_net is not None else RandomConvFeatures()
    slices = []
    for vol in _as_list(volumes):
        vol = np.moveaxis(np.asarray(vol, np.float32), axis, 0)
        for sl in vol:
            if (sl > background + 0.05).mean() >= min_foreground:
                slices.append(sl)
    if not slices:
        return np.zeros((0, 1))
    out = []
    for start in range(0, len(slices), batch):
        x = torch.from_numpy(np.stack(slices[start:start + batch]))[:, None]
        out.append(net(x).double().numpy())
    return np.concatenate(out)


def frechet_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)`` of two feature sets (rows = samples)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least 2 feature vectors on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((S_a S_b)^1/2) = sum of sqrt(eigenvalues of S_a^1/2 S_b S_a^1/2) (symmetric, stable)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean)
    return max(value, 0.0)


def frechet_distance(fake_volumes, real_volumes, *, feature_net: torch.nn.Module | None = None,
                     axis: int = 2) -> float:
    """Frechet distance between generated and real unit-range volumes' slice features.

    Both sides must be normalised the same way (e.g. CT through the same HU window with
    :func:`medgen.transforms.intensity.hu_to_unit`).
    """
    net = feature_net if feature_net is not None else RandomConvFeatures()
    return frechet_from_features(slice_features(fake_volumes, feature_net=net, axis=axis),
                                 slice_features(real_volumes, feature_net=net, axis=axis))
