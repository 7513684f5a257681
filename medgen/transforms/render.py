"""Label-conditioned random-contrast rendering: any MR-like image from a CT's anatomy.

SynthSeg-style domain randomisation (Billot et al. 2023). A class map (the user's organ labels,
plus tissue classes cut from the CT's own HU values so that the background is not one flat
class) is turned into an image whose contrast, resolution, bias field and noise are all drawn at
random. A network trained on such images never sees a fixed MR contrast, so it has to learn
anatomy, and it transfers to contrasts it never saw (T1, T2, PD, or none a scanner makes).

The generative model of one rendering, in order:

1. per-class intensity: a Gaussian mixture whose means are uniform in [0, 1] *in any order*
   (classes named in ``dark_classes``, i.e. air, are dark with probability
   ``RenderConfig.dark_prob``: MR has no signal in air; classes named in ``void_classes``, i.e.
   cortical bone, with ``RenderConfig.bone_dark_prob``: its very short T2* leaves it without
   signal in conventional sequences), each class with its own spread;
2. partial-volume blur (isotropic Gaussian, ``blur_mm``);
3. acquisition geometry: a random slice axis and slice thickness (``slice_mm``, 1-8 mm: thick
   clinical slices) and a random in-plane resolution (``inplane_mm``): anisotropic blur with the
   slice profile, down-sampling to that resolution and linear up-sampling back, so the grid
   (shape, voxel size) is kept;
4. a smooth multiplicative bias field (coil inhomogeneity);
5. gamma;
6. Gaussian or Rician noise;
7. a linear map of the class-mean range onto [-1, 1] (clipped): the darkest class mean (air, in
   a whole-volume rendering) goes to -1 and the brightest to +1, as percentile normalisation of
   a real MR does (:func:`medgen.transforms.intensity.robust_normalize`).

Nothing in it uses intensities of any real MR: every parameter range is a physical prior or a
deliberately wide uniform. :class:`RandContrastRender` follows MONAI's randomisable convention:
``randomize()`` draws every parameter (including the seed of the voxel-wise noise) once, and
``__call__`` then applies them deterministically, so a rendering replays exactly for a seed. It
runs in torch on the class map's device (CPU or CUDA).

Examples:
    >>> import torch
    >>> classes = torch.zeros(16, 16, 8, dtype=torch.long); classes[4:12, 4:12, 2:6] = 1
    >>> render = RandContrastRender(spacing=(2.0, 2.0, 3.0))
    >>> _ = render.set_random_state(seed=0)
    >>> img = render(classes)
    >>> img.shape, bool(img.min() >= -1), bool(img.max() <= 1)
    (torch.Size([16, 16, 8]), True, True)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable
from pydantic import Field, model_validator

from medgen.config import StrictModel

__all__ = ["CORTICAL_HU", "DEFAULT_HU_BANDS", "TISSUE_NAMES", "RenderConfig", "cortical_bands", "RandContrastRender", "RandContrastRenderd",
           "tissue_classes", "tissue_band_names", "render_classes", "median_smoothed", "add_structures",
           "gaussian_blur"]

#: HU edges of the tissue classes cut from a CT (``tissue_classes``): each voxel falls in one band.
DEFAULT_HU_BANDS: tuple[float, ...] = (-500.0, -200.0, -30.0, 20.0, 100.0, 200.0, 500.0)
#: Names of the bands of :data:`DEFAULT_HU_BANDS`, darkest first.
TISSUE_NAMES: tuple[str, ...] = ("air_lung", "low_density", "fat", "fluid", "soft_tissue", "dense_soft_tissue",
                                 "trabecular_bone", "cortical_bone")
#: HU from which bone is compact (cortical): trabecular bone with its marrow lies below, ~150-400 HU.
CORTICAL_HU = 400.0


class RenderConfig(StrictModel):
    """Ranges of the random rendering (all drawn uniformly unless said otherwise)."""

    mean: list[float] = Field([0.0, 1.0], description="range of a class's mean intensity (any order)")
    std: list[float] = Field([0.0, 0.08], description="range of a class's intensity spread (texture)")
    dark_prob: float = Field(0.8, ge=0.0, le=1.0, description="chance that an air class is dark (mean in "
                                                               "[0, dark_max]) rather than random")
    dark_max: float = Field(0.1, ge=0.0, le=1.0)
    bone_dark_prob: float = Field(0.8, ge=0.0, le=1.0, description=(
        "chance that cortical bone is dark like air: it has almost no signal in conventional MR (T2* of "
        "a millisecond or less); otherwise random, as in UTE/ZTE or CT-like contrasts"))
    blur_mm: list[float] = Field([0.0, 1.5], description="partial-volume blur, Gaussian sigma in mm")
    slice_mm: list[float] = Field([1.0, 8.0], description="slice thickness range (mm) of the simulated acquisition")
    inplane_mm: list[float] = Field([0.8, 2.5], description="in-plane resolution range (mm)")
    slice_axis_probs: list[float] = Field([0.2, 0.2, 0.6], description="chance of each axis (x, y, z) being "
                                                                        "the slice axis")
    resolution_prob: float = Field(0.9, ge=0.0, le=1.0, description="chance of simulating a lower resolution")
    bias_std: list[float] = Field([0.0, 0.4], description="std of the log bias field")
    bias_grid: int = Field(4, ge=2, description="control points per axis of the bias field")
    gamma_std: float = Field(0.3, ge=0.0, description="std of log(gamma)")
    noise_std: list[float] = Field([0.0, 0.05], description="noise std (share of the intensity range)")
    rician_prob: float = Field(0.5, ge=0.0, le=1.0, description="chance of Rician rather than Gaussian noise")

    @model_validator(mode="after")
    def _ranges(self) -> "RenderConfig":
        for name in ("mean", "std", "blur_mm", "slice_mm", "inplane_mm", "bias_std", "noise_std"):
            lo, hi = getattr(self, name)
            if not (0.0 <= lo <= hi and math.isfinite(hi)):
                raise ValueError(f"{name} must be [lo, hi] with 0 <= lo <= hi, got {[lo, hi]}")
        if self.slice_mm[0] <= 0 or self.inplane_mm[0] <= 0:
            raise ValueError("slice_mm and inplane_mm must be positive")
        probs = self.slice_axis_probs
        if len(probs) != 3 or min(probs) < 0 or sum(probs) <= 0:
            raise ValueError(f"slice_axis_probs must be 3 non-negative weights, got {probs}")
        return self


def tissue_classes(hu, bands: Sequence[float] = DEFAULT_HU_BANDS):
    """Tissue band of every voxel of a CT in HU: 0 (darkest band) .. ``len(bands)``.

    Accepts a NumPy array or a torch tensor and returns the same kind (integer).

    Examples:
        >>> tissue_classes(np.array([-1000.0, -100.0, 40.0, 1200.0])).tolist()
        [0, 2, 4, 7]
    """
    edges = [float(b) for b in bands]
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"HU bands must increase strictly, got {bands}")
    if isinstance(hu, torch.Tensor):
        return torch.bucketize(hu.float(), torch.tensor(edges, device=hu.device), right=True)
    return np.digitize(np.asarray(hu, np.float32), edges).astype(np.int16)


def cortical_bands(bands: Sequence[float] = DEFAULT_HU_BANDS) -> list[int]:
    """The bands of ``bands`` that hold only cortical bone: lower edge at or above :data:`CORTICAL_HU`.

    Examples:
        >>> cortical_bands(), cortical_bands([-500, -30, 200])
        ([7], [])
    """
    edges = [float(b) for b in bands]
    return [i + 1 for i, e in enumerate(edges) if e >= CORTICAL_HU]


def tissue_band_names(bands: Sequence[float] = DEFAULT_HU_BANDS) -> list[str]:
    """A name for every band of ``bands``: :data:`TISSUE_NAMES` for the default edges, else the HU range.

    Examples:
        >>> tissue_band_names([-500, 100])
        ['hu_below_-500', 'hu_-500_to_100', 'hu_above_100']
    """
    edges = [float(b) for b in bands]
    if tuple(edges) == DEFAULT_HU_BANDS:
        return list(TISSUE_NAMES)
    text = [f"{e:g}" for e in edges]
    return [f"hu_below_{text[0]}"] + [f"hu_{a}_to_{b}" for a, b in zip(text, text[1:])] + [f"hu_above_{text[-1]}"]


def render_classes(labels, hu=None, *, n_label_ids: int, bands: Sequence[float] = DEFAULT_HU_BANDS,
                   median: int = 1):
    """One class id per voxel: organ labels where labelled, tissue bands of the CT elsewhere.

    Args:
        labels: integer label map (0 = unlabelled), or None (tissue bands only).
        hu: the CT in HU on the same grid, or None (unlabelled voxels stay class 0).
        n_label_ids: number of label ids (max id + 1); band ``b`` becomes class ``n_label_ids + b``.
        bands: HU edges (:func:`tissue_classes`).
        median: size (voxels) of a median filter applied to the CT before it is cut into bands
            (:func:`median_smoothed`; 1 = off).

    Returns:
        Integer array (NumPy int16) of classes ``0 .. n_label_ids + len(bands)``.

    Examples:
        >>> render_classes(np.array([0, 1, 0]), np.array([-1000.0, 50.0, 40.0]), n_label_ids=2).tolist()
        [2, 1, 6]
    """
    if labels is None and hu is None:
        raise ValueError("need labels, a CT, or both")
    if hu is None:
        return np.asarray(labels).astype(np.int16)
    tissue = tissue_classes(median_smoothed(hu, median), bands).astype(np.int16) + n_label_ids
    if labels is None:
        return tissue
    labels = np.asarray(labels)
    return np.where(labels > 0, labels, tissue).astype(np.int16)


def median_smoothed(hu, size: int):
    """The CT after a ``size``-voxel median filter (``size`` 1: unchanged), as it is cut into bands.

    CT noise would otherwise speckle a tissue near a band edge into two classes, which a rendering
    then draws as salt and pepper no MR shows.
    """
    if size <= 1:
        return hu
    from scipy import ndimage
    return ndimage.median_filter(np.asarray(hu, np.float32), size=size)


def add_structures(classes: np.ndarray, structures, *, n_label_ids: int, bands: Sequence[float] = DEFAULT_HU_BANDS,
                   hu=None) -> np.ndarray:
    """A class map of :func:`render_classes` with further structures drawn as classes of their own.

    ``structures`` (ids ``1..K``, 0 = none) are structures that are not trained on but have their
    own contrast in MR (bowel, lungs, muscles: SynthSeg's *generation labels*): structure ``k``
    becomes class ``n_label_ids + len(bands) + k`` wherever ``classes`` holds no label. With ``hu``
    (the CT the bands were cut from, on the same grid), a structure whose mean HU lies below the
    first band edge (air-filled: lungs, bowel gas) keeps its band, so it renders as air does.

    Examples:
        >>> hu = np.array([-900.0, 50.0, 40.0, 40.0])
        >>> classes = render_classes(np.array([0, 1, 0, 0]), hu, n_label_ids=2, bands=[-500, 100])
        >>> add_structures(classes, np.array([2, 0, 1, 0]), n_label_ids=2, bands=[-500, 100], hu=hu).tolist()
        [2, 1, 5, 3]
    """
    structures = np.asarray(structures).astype(np.int64)
    unlabelled = classes >= n_label_ids if hu is not None else classes == 0  # a tissue band, or nothing
    free = (structures > 0) & unlabelled
    if hu is not None:  # air-filled structures keep their (air) band
        counts = np.bincount(structures[free], minlength=1)
        sums = np.bincount(structures[free], weights=np.asarray(hu, np.float64)[free], minlength=1)
        airy = np.flatnonzero((counts > 0) & (sums / np.maximum(counts, 1) < float(bands[0])))
        free &= ~np.isin(structures, airy)
    out = classes.copy()
    out[free] = (n_label_ids + len(bands) + structures[free]).astype(np.int16)
    return out


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigmas_vox: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur of a ``(X, Y, Z)`` tensor, one sigma (voxels) per axis, edges replicated."""
    out = x[None, None]
    for axis, sigma in enumerate(sigmas_vox):
        if sigma < 0.2:
            continue
        k = _gaussian_kernel(float(sigma), x.device, x.dtype)
        r = (k.numel() - 1) // 2
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k.view(shape))
    return out[0, 0]


class RandContrastRender(Randomizable):
    """Render a class map as an image of random contrast, resolution, bias and noise.

    Args:
        spacing: voxel size (mm) of the class map, used to express blur and resolution in mm.
        config: the parameter ranges (:class:`RenderConfig`).
        dark_classes: class ids that are air (rendered dark with ``config.dark_prob``).
        void_classes: class ids of cortical bone (rendered dark with ``config.bone_dark_prob``).

    ``randomize(n_classes)`` draws one set of parameters; ``__call__(classes)`` draws them (unless
    ``randomize=False``) and applies them. ``present`` names the classes whose mean range sets the
    output scale (default: those in ``classes``); pass every class of the whole case when
    rendering a patch, so a patch is scaled as if the whole volume had been normalised.
    """

    def __init__(self, spacing: Sequence[float] = (1.0, 1.0, 1.0), config: RenderConfig | None = None, *,
                 dark_classes: Sequence[int] = (), void_classes: Sequence[int] = ()):
        self.spacing = tuple(float(s) for s in spacing)
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive values, got {spacing}")
        self.config = config or RenderConfig()
        self.dark_classes = tuple(int(c) for c in dark_classes)
        self.void_classes = tuple(int(c) for c in void_classes)
        self.params: dict | None = None

    @classmethod
    def for_tissue_bands(cls, spacing: Sequence[float], config: RenderConfig | None, *, air_class: int,
                         bands: Sequence[float] = DEFAULT_HU_BANDS) -> "RandContrastRender":
        """A renderer for a class map of :func:`render_classes`: ``air_class`` (the darkest HU band)
        is air, and the cortical bands numbered after it (:func:`cortical_bands`) are compact bone."""
        return cls(spacing, config, dark_classes=[air_class],
                   void_classes=[air_class + b for b in cortical_bands(bands)])

    def randomize(self, n_classes: int) -> None:  # type: ignore[override]
        """Draw every random parameter of one rendering for classes ``0 .. n_classes - 1``."""
        c, r = self.config, self.R
        means = r.uniform(c.mean[0], c.mean[1], n_classes)
        for classes, prob in ((self.dark_classes, c.dark_prob), (self.void_classes, c.bone_dark_prob)):
            for k in classes:
                if k < n_classes and r.uniform() < prob:
                    means[k] = r.uniform(0.0, c.dark_max)
        axis = int(r.choice(3, p=np.asarray(c.slice_axis_probs) / sum(c.slice_axis_probs)))
        resolution = list(self.spacing)
        if r.uniform() < c.resolution_prob:
            inplane = r.uniform(*c.inplane_mm)
            resolution = [max(s, inplane) for s in self.spacing]
            resolution[axis] = max(self.spacing[axis], r.uniform(*c.slice_mm))
        self.params = {
            "means": means.astype(np.float32),
            "stds": r.uniform(c.std[0], c.std[1], n_classes).astype(np.float32),
            "blur_mm": float(r.uniform(*c.blur_mm)),
            "resolution_mm": [float(v) for v in resolution],
            "bias_std": float(r.uniform(*c.bias_std)),
            "gamma": float(np.exp(r.normal(0.0, c.gamma_std))),
            "noise_std": float(r.uniform(*c.noise_std)),
            "rician": bool(r.uniform() < c.rician_prob),
            "seed": int(r.randint(0, 2**31 - 1)),
        }

    def __call__(self, classes: torch.Tensor, randomize: bool = True,
                 present: Sequence[int] | None = None) -> torch.Tensor:
        classes = torch.as_tensor(classes)
        if classes.ndim != 3:
            raise ValueError(f"classes must be (X, Y, Z), got shape {tuple(classes.shape)}")
        classes = classes.long()
        n_classes = int(classes.max()) + 1 if present is None else max(int(classes.max()), max(present)) + 1
        if randomize or self.params is None:
            self.randomize(n_classes)
        p = self.params
        if len(p["means"]) < n_classes:
            raise ValueError(f"parameters drawn for {len(p['means'])} classes, the map has {n_classes}")
        dev = classes.device
        gen = torch.Generator(device=dev).manual_seed(p["seed"])
        means = torch.as_tensor(p["means"], device=dev)
        stds = torch.as_tensor(p["stds"], device=dev)
        x = means[classes] + stds[classes] * torch.randn(classes.shape, generator=gen, device=dev)
        x = self._acquire(x, p)
        if p["bias_std"] > 0:
            coarse = torch.randn((1, 1) + (self.config.bias_grid,) * 3, generator=gen, device=dev) * p["bias_std"]
            field = F.interpolate(coarse, size=tuple(x.shape), mode="trilinear", align_corners=True)[0, 0]
            x = x * torch.exp(field - field.mean())
        ids = torch.unique(classes) if present is None else torch.as_tensor(list(present), device=dev)
        lo, hi = float(means[ids].min()), float(means[ids].max())
        top = max(hi, 1e-3)
        x = (x.clamp(min=0) / top) ** p["gamma"]
        lo, hi = (max(lo, 0.0) / top) ** p["gamma"], 1.0
        if p["noise_std"] > 0:
            n1 = torch.randn(x.shape, generator=gen, device=dev) * p["noise_std"]
            if p["rician"]:
                n2 = torch.randn(x.shape, generator=gen, device=dev) * p["noise_std"]
                x = torch.sqrt((x + n1) ** 2 + n2 ** 2)
            else:
                x = x + n1
        if hi - lo < 0.05:  # (nearly) one intensity: keep it mid-range instead of amplifying noise
            lo, hi = lo - 0.5, hi + 0.5
        return ((x - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0).float()

    def _acquire(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        """Partial-volume blur, then the simulated acquisition resolution (grid unchanged)."""
        sp = self.spacing
        res = p["resolution_mm"]
        sigmas = [p["blur_mm"] / s for s in sp]
        # slice profile / in-plane PSF with FWHM = resolution (beyond what one voxel already
        # integrates), added in quadrature to the partial-volume blur
        sigmas = [math.sqrt(a ** 2 + (r ** 2 - s ** 2) / (2.355 * s) ** 2) if r > s * 1.05 else a
                  for a, r, s in zip(sigmas, res, sp)]
        x = gaussian_blur(x, sigmas)
        low = tuple(max(2, int(round(n * s / r))) for n, s, r in zip(x.shape, sp, res))
        if low != tuple(x.shape):
            small = F.interpolate(x[None, None], size=low, mode="trilinear", align_corners=False)
            x = F.interpolate(small, size=tuple(x.shape), mode="trilinear", align_corners=False)[0, 0]
        return x


class RandContrastRenderd(Randomizable, MapTransform):
    """Dictionary wrapper: renders ``data[classes_key]`` into ``data[image_key]``.

    Examples:
        >>> import torch
        >>> d = {"classes": torch.ones(8, 8, 4, dtype=torch.long)}
        >>> out = RandContrastRenderd("classes", spacing=(1, 1, 1)).set_random_state(seed=1)(d)
        >>> out["image"].shape
        torch.Size([8, 8, 4])
    """

    def __init__(self, classes_key: Hashable = "classes", image_key: Hashable = "image", *,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), config: RenderConfig | None = None,
                 dark_classes: Sequence[int] = (), void_classes: Sequence[int] = ()):
        MapTransform.__init__(self, [classes_key])
        self.classes_key, self.image_key = classes_key, image_key
        self.render = RandContrastRender(spacing, config, dark_classes=dark_classes, void_classes=void_classes)

    def set_random_state(self, seed=None, state=None) -> "RandContrastRenderd":
        super().set_random_state(seed, state)
        self.render.set_random_state(seed, state)
        return self

    def randomize(self, n_classes: int) -> None:  # type: ignore[override]
        self.render.randomize(n_classes)

    def __call__(self, data: Mapping) -> dict:
        out = dict(data)
        out[self.image_key] = self.render(torch.as_tensor(data[self.classes_key]))
        return out
