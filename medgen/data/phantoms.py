"""Procedural, deterministic abdomen phantoms: paired CT, MR and label maps.

Every call to :func:`make_phantom` builds one synthetic "patient": a stack of axial abdominal
cross-sections with a body outline, subcutaneous and visceral fat, an abdominal muscle wall,
paraspinal and psoas muscles, liver, spleen, both kidneys, the lumbar spine, the aorta (and the
IVC), the stomach and gas-filled bowel. From that single anatomy it renders

* a CT in Hounsfield units (portal-venous-like contrast, texture, partial volume, noise),
* an MR in arbitrary units with T1- or T2-weighted-like contrast (different tissue ordering than
  CT, fatty marrow, flow voids, a smooth coil bias field, partial volume and Rician noise),
* an integer label map with the fixed classes of :data:`LABEL_NAMES`.

The three arrays are perfectly co-registered, which is what the tests, demos and benchmarks of
MR->CT translation (paired metrics), CT segmentation and MR segmentation via synthetic CT need.

Why it is built the way it is:

* **Determinism.** All randomness comes from ``np.random.default_rng(seed)`` (split into
  independent child streams for anatomy, texture, CT and MR), so the same arguments give bitwise
  identical arrays, and CT/labels do not depend on ``mr_weighting``.
* **Anatomy in millimetres, fitted to the field of view.** Organs are defined in a reference
  abdomen (body about 320 x 240 mm, about 200 mm superior-inferior) and mapped into the requested
  grid. When the field of view is smaller than the body (tiny test volumes), the anatomy is
  scaled down to fit with an air margin, so every class is present even at ``(32, 32, 16)``.
* **Realistic geometry.** The array axes follow nibabel's RAS+ convention with a diagonal affine:
  axis 0 increases towards the subject's Right, axis 1 towards Anterior, axis 2 towards Superior.
  The liver therefore lies at positive x, the spleen at negative x (the phantom is left-right
  asymmetric on purpose), the spine is posterior, the aorta sits in front of the spine slightly
  to the subject's left.
* **Non-overlapping labels by construction.** Structures are painted into a tissue map in a
  fixed order, each later structure only overwriting the tissues it is allowed to displace.
  The label map is a lookup of the tissue map, so it is always consistent with the intensities.
* **Speed.** Everything is vectorised; each organ is evaluated only inside its bounding box.
  A 96 x 96 x 48 phantom takes well under a second, 256 x 256 x 100 a few seconds.

Examples:
    >>> from medgen.data.phantoms import make_phantom
    >>> p = make_phantom(0, shape=(32, 32, 16))
    >>> p.ct.shape, p.ct.dtype, p.labels.dtype
    ((32, 32, 16), dtype('float32'), dtype('uint8'))
    >>> p.label_names[3]
    'liver'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special

__all__ = ["LABEL_NAMES", "Phantom", "label_names", "make_phantom"]

#: Label ids of the phantom's label map (fixed; other modules rely on these ids).
LABEL_NAMES: dict[int, str] = {
    0: "background",
    1: "fat",
    2: "muscle",
    3: "liver",
    4: "spleen",
    5: "kidney_left",
    6: "kidney_right",
    7: "vertebrae",
    8: "aorta",
    9: "bowel_gas",
    10: "soft_tissue",
}


def label_names() -> dict[int, str]:
    """Return a fresh copy of the label id -> name mapping.

    Returns:
        ``{0: "background", 1: "fat", ..., 10: "soft_tissue"}``; safe to modify.
    """
    return dict(LABEL_NAMES)


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic abdomen: co-registered CT, MR and labels on the same grid.

    Attributes:
        ct: float32 CT in Hounsfield units, shape (X, Y, Z), axes in RAS+ order.
        mr: float32 MR magnitude (arbitrary units, >= 0), same shape.
        labels: uint8 label map with the ids of :data:`LABEL_NAMES`, same shape.
        affine: 4x4 float64 voxel-to-RAS+ matrix (mm): diagonal spacing, volume centre at the
            world origin.
        label_names: label id -> class name.
        seed: the seed the phantom was generated from.
        mr_weighting: ``"t1"`` or ``"t2"``.
    """

    ct: np.ndarray
    mr: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    label_names: dict[int, str] = field(default_factory=label_names)
    seed: int = 0
    mr_weighting: str = "t1"


# --------------------------------------------------------------------------------------------
# Tissues. The tissue map is finer than the label map (e.g. cortical vs cancellous bone, kidney
# cortex vs medulla, intervertebral disc, CSF) so that intensities can differ inside one class.
# --------------------------------------------------------------------------------------------

# id: (name, label, CT HU mean, CT between-seed SD, CT texture HU, T1, T2, MR texture fraction)
_TISSUE_TABLE: tuple[tuple[str, int, float, float, float, float, float, float], ...] = (
    ("air", 0, -1000.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    ("fat", 1, -100.0, 8.0, 10.0, 900.0, 700.0, 0.04),
    ("muscle", 2, 50.0, 5.0, 8.0, 300.0, 200.0, 0.04),
    ("liver", 3, 92.0, 8.0, 6.0, 500.0, 250.0, 0.03),
    ("spleen", 4, 100.0, 8.0, 6.0, 350.0, 600.0, 0.03),
    ("kidney_left_cortex", 5, 170.0, 10.0, 8.0, 420.0, 600.0, 0.04),
    ("kidney_left_medulla", 5, 115.0, 8.0, 8.0, 330.0, 720.0, 0.04),
    ("kidney_right_cortex", 6, 170.0, 10.0, 8.0, 420.0, 600.0, 0.04),
    ("kidney_right_medulla", 6, 115.0, 8.0, 8.0, 330.0, 720.0, 0.04),
    ("cortical_bone", 7, 850.0, 80.0, 60.0, 50.0, 30.0, 0.10),
    ("marrow", 7, 260.0, 30.0, 40.0, 600.0, 400.0, 0.08),
    ("arterial_blood", 8, 220.0, 12.0, 4.0, 80.0, 60.0, 0.05),
    ("gas", 9, -900.0, 25.0, 30.0, 0.0, 0.0, 0.0),
    ("bowel", 10, 35.0, 5.0, 15.0, 350.0, 500.0, 0.10),
    ("fluid", 10, 15.0, 4.0, 5.0, 100.0, 900.0, 0.03),
    ("venous_blood", 10, 140.0, 10.0, 4.0, 200.0, 150.0, 0.05),
    ("disc", 10, 85.0, 8.0, 8.0, 280.0, 650.0, 0.05),
    ("csf", 10, 10.0, 4.0, 4.0, 120.0, 950.0, 0.03),
)
_TISSUE_ID = {row[0]: i for i, row in enumerate(_TISSUE_TABLE)}
# Tissue ids (private; not label ids).
_AIR, _FAT, _MUSCLE, _LIVER, _SPLEEN = (_TISSUE_ID[n] for n in ("air", "fat", "muscle", "liver", "spleen"))
_KL_CORTEX, _KL_MEDULLA = _TISSUE_ID["kidney_left_cortex"], _TISSUE_ID["kidney_left_medulla"]
_KR_CORTEX, _KR_MEDULLA = _TISSUE_ID["kidney_right_cortex"], _TISSUE_ID["kidney_right_medulla"]
_CORTICAL, _MARROW, _ARTERY = _TISSUE_ID["cortical_bone"], _TISSUE_ID["marrow"], _TISSUE_ID["arterial_blood"]
_GAS, _BOWEL, _FLUID = _TISSUE_ID["gas"], _TISSUE_ID["bowel"], _TISSUE_ID["fluid"]
_VEIN, _DISC, _CSF = _TISSUE_ID["venous_blood"], _TISSUE_ID["disc"], _TISSUE_ID["csf"]
_TISSUE_TO_LABEL = np.array([row[1] for row in _TISSUE_TABLE], dtype=np.uint8)

# Reference abdomen (mm). Body semi-axes: left-right, anterior, posterior half-depth.
_REF_BODY_A, _REF_BODY_B_ANT, _REF_BODY_B_POST = 160.0, 120.0, 108.0
_REF_Z_EXTENT = 200.0  # superior-inferior extent that is squeezed into small fields of view
_REF_CAVITY_A, _REF_CAVITY_B = 131.0, 84.0  # peritoneal cavity semi-axes of the reference


# --------------------------------------------------------------------------------------------
# Geometry: the mapping between the voxel grid, world mm and the anatomical reference frame.
# --------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    """Voxel grid plus the (scaled, rotated, shifted) anatomical frame drawn into it.

    World (RAS mm) = ``scale * Rz(pose) @ anatomy + shift``; in-plane and z scales differ so
    that small fields of view still hold the whole reference abdomen.

    Attributes:
        shape: grid shape (X, Y, Z).
        spacing: voxel size in mm.
        origin: world coordinate of voxel (0, 0, 0).
        s_xy: in-plane anatomy-to-world scale (<= 1).
        s_z: superior-inferior anatomy-to-world scale (<= 1).
        cos_p, sin_p: pose rotation about z.
        shift: world translation of the anatomy (mm).
        ax, ay: anatomical in-plane coordinates of every (i, j), shape (X, Y), float32.
        az: anatomical z coordinate of every slice, shape (Z,), float32.
    """

    shape: tuple[int, int, int]
    spacing: np.ndarray
    origin: np.ndarray
    s_xy: float
    s_z: float
    cos_p: float
    sin_p: float
    shift: np.ndarray
    ax: np.ndarray = field(init=False)
    ay: np.ndarray = field(init=False)
    az: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        wx = (self.origin[0] + self.spacing[0] * np.arange(self.shape[0])) - self.shift[0]
        wy = (self.origin[1] + self.spacing[1] * np.arange(self.shape[1])) - self.shift[1]
        wz = (self.origin[2] + self.spacing[2] * np.arange(self.shape[2])) - self.shift[2]
        # Inverse pose: rotate by -pose, then undo the scale.
        self.ax = ((self.cos_p * wx[:, None] + self.sin_p * wy[None, :]) / self.s_xy).astype(np.float32)
        self.ay = ((-self.sin_p * wx[:, None] + self.cos_p * wy[None, :]) / self.s_xy).astype(np.float32)
        self.az = (wz / self.s_z).astype(np.float32)

    def to_world(self, p: np.ndarray) -> np.ndarray:
        """Map an anatomical point (mm) to world RAS mm."""
        x, y, z = p
        return np.array([
            self.s_xy * (self.cos_p * x - self.sin_p * y) + self.shift[0],
            self.s_xy * (self.sin_p * x + self.cos_p * y) + self.shift[1],
            self.s_z * z + self.shift[2],
        ])

    def to_index(self, p: np.ndarray) -> tuple[int, int, int]:
        """Nearest voxel index (clipped into the grid) of an anatomical point."""
        ijk = np.rint((self.to_world(p) - self.origin) / self.spacing).astype(int)
        return tuple(int(np.clip(v, 0, n - 1)) for v, n in zip(ijk, self.shape))

    def block(self, center: np.ndarray, half) -> tuple[slice, slice, slice] | None:
        """Voxel slices of the box around an anatomical box; ``None`` if outside the grid.

        Args:
            center: anatomical centre (mm).
            half: anatomical half-extents (mm) along x, y, z (a scalar means a cube).
        """
        w = self.to_world(np.asarray(center, dtype=float))
        hx, hy, hz = np.broadcast_to(np.asarray(half, dtype=float), (3,))
        c, s = abs(self.cos_p), abs(self.sin_p)
        r = np.array([self.s_xy * (c * hx + s * hy), self.s_xy * (s * hx + c * hy), self.s_z * hz])
        lo = np.floor((w - r - self.origin) / self.spacing).astype(int)
        hi = np.ceil((w + r - self.origin) / self.spacing).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

    def coords(self, blk: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomical coordinates (ax, ay 2D; az 1D) inside a block."""
        return self.ax[blk[0], blk[1]], self.ay[blk[0], blk[1]], self.az[blk[2]]


def _rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation matrix ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (radians); columns = local axes."""
    cz, sz, cy, sy, cx, sx = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                              math.cos(roll), math.sin(roll))
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class _Blob:
    """A smooth organ-like solid: a deformed, tapered superellipsoid.

    ``rho(u, v, w) = (|u|^p + |v|^p + |w|^p)^(1/p) < 1 + delta(n)`` in local normalised
    coordinates, where ``delta`` is a low-order polynomial of the direction ``n`` (a cheap
    stand-in for low-degree spherical harmonics) and the in-plane semi-axes grow by
    ``1 + taper * w`` along the local z axis (e.g. a liver that is bigger superiorly).

    Attributes:
        center: anatomical centre (mm).
        semi: semi-axes along the local axes (mm).
        rot: 3x3 rotation whose columns are the local axes in the anatomical frame.
        exponent: superellipsoid exponent (2 = ellipsoid, larger = boxier).
        deform: 8 coefficients of the direction polynomial.
        taper: relative growth of the in-plane semi-axes per unit local z.
    """

    center: np.ndarray
    semi: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    exponent: float = 2.0
    deform: np.ndarray = field(default_factory=lambda: np.zeros(8))
    taper: float = 0.0

    @property
    def half_extents(self) -> np.ndarray:
        """Conservative half-extents (mm) of the solid along the anatomical x, y, z axes."""
        grow = 1.0 + min(float(np.abs(self.deform).sum()), 0.35)
        semi = self.semi * np.array([1.0 + abs(self.taper), 1.0 + abs(self.taper), 1.0]) * grow
        if self.exponent == 2.0:  # exact extents of a rotated ellipsoid
            ext = np.sqrt(((self.rot * semi[None, :]) ** 2).sum(axis=1))
        else:  # corners of the rotated bounding box
            ext = (np.abs(self.rot) * semi[None, :]).sum(axis=1)
        return ext + 1.0

    def resized(self, factor: float = 1.0, extra_mm: float = 0.0) -> _Blob:
        """Same shape, semi-axes scaled by ``factor`` and grown by ``extra_mm``."""
        semi = np.maximum(self.semi * factor + extra_mm, 0.5)
        return _Blob(self.center, semi, self.rot, self.exponent, self.deform, self.taper)

    def mask(self, frame: _Frame) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """Evaluate the solid inside its bounding block: ``(block, bool mask)`` or ``None``."""
        blk = frame.block(self.center, self.half_extents)
        if blk is None:
            return None
        ax, ay, az = frame.coords(blk)
        dx, dy, dz = ax - self.center[0], ay - self.center[1], az - self.center[2]
        r = self.rot.astype(np.float32)
        loc = [(r[0, k] * dx + r[1, k] * dy)[:, :, None] + (r[2, k] * dz)[None, None, :] for k in range(3)]
        a, b, c = (float(s) for s in self.semi)
        w = loc[2] / c
        if self.taper:
            grow = 1.0 + self.taper * np.clip(w, -1.0, 1.0)
            u, v = loc[0] / (a * grow), loc[1] / (b * grow)
        else:
            u, v = loc[0] / a, loc[1] / b
        norm = np.sqrt(u * u + v * v + w * w) + np.float32(1e-6)
        if self.exponent == 2.0:
            rho = norm
        else:
            p = self.exponent
            rho = (np.abs(u) ** p + np.abs(v) ** p + np.abs(w) ** p) ** (1.0 / p)
        if np.any(self.deform):
            nx, ny, nz = u / norm, v / norm, w / norm
            basis = (nx, ny, nz, nx * ny, ny * nz, nx * nz, nx * nx - ny * ny, 3.0 * nz * nz - 1.0)
            delta = sum(float(cf) * bs for cf, bs in zip(self.deform, basis) if cf)
            rho = rho - np.clip(delta, -0.35, 0.35)
        return blk, rho < 1.0


def _paint(tissue: np.ndarray, found, value: int, allowed: tuple[int, ...] | None = None,
           region: np.ndarray | None = None) -> None:
    """Write ``value`` into the tissue map where a mask is set.

    Args:
        tissue: the full tissue map (modified in place).
        found: ``(block, mask)`` as returned by the shape helpers, or ``None`` (nothing to do).
        value: tissue id to write.
        allowed: only overwrite voxels currently holding one of these tissue ids.
        region: optional full-size bool array that also has to be set (e.g. the cavity).
    """
    if found is None:
        return
    blk, mask = found
    sub = tissue[blk]
    if region is not None:
        mask = mask & region[blk]
    if allowed is not None:
        mask = mask & np.isin(sub, allowed)
    sub[mask] = value


def _tube(frame: _Frame, center_xy: tuple[float, float], half_xy: tuple[float, float], fn) -> tuple | None:
    """Evaluate a structure that runs along z (spine, vessels, long muscles).

    Args:
        frame: the grid/anatomy frame.
        center_xy: approximate anatomical in-plane centre (for the bounding block).
        half_xy: in-plane anatomical half-extents (mm) of a box around ``center_xy`` that
            contains the structure on every slice.
        fn: ``fn(ax2d, ay2d, az1d) -> bool mask (bx, by, bz)``.

    Returns:
        ``(block, mask)`` over all slices, or ``None`` if the block misses the grid.
    """
    blk = frame.block(np.array([center_xy[0], center_xy[1], 0.0]), (half_xy[0], half_xy[1], 0.0))
    if blk is None:
        return None
    blk = (blk[0], blk[1], slice(0, frame.shape[2]))
    ax, ay, az = frame.coords(blk)
    return blk, fn(ax, ay, az)


def _ellipse_stack(ax, ay, cx, cy, a, b, p: float = 2.0) -> np.ndarray:
    """Bool mask of per-slice (super)ellipses; ``cx, cy, a, b`` are per-slice 1D arrays."""
    u = (ax[:, :, None] - cx[None, None, :]) / a[None, None, :]
    v = (ay[:, :, None] - cy[None, None, :]) / b[None, None, :]
    if p == 2.0:
        return u * u + v * v < 1.0
    return np.abs(u) ** p + np.abs(v) ** p < 1.0


# --------------------------------------------------------------------------------------------
# Per-seed anatomy parameters (all random draws happen here, independent of the grid).
# --------------------------------------------------------------------------------------------


@dataclass
class _Anatomy:
    """All geometric parameters of one synthetic patient (anatomical mm)."""

    pose: float
    shift: np.ndarray  # anatomical mm, scaled into world later
    body_a: float
    body_b_ant: float
    body_b_post: float
    body_pert: np.ndarray  # (4, 2): cos/sin amplitudes of harmonics 2..5
    body_z: tuple[float, float, float, float]  # tanh amplitude, ripple amplitude, ripple period, phase
    fat_base: float
    fat_anterior: float
    muscle_base: float
    rectus: float
    visceral_fat: float  # fraction of the cavity that is visceral fat
    bowel_fluid: float  # half-width (field units) of the fluid-filled lumen bands
    cavity: tuple[float, float, float]  # semi-axes: lateral, anterior, posterior
    blobs: dict  # name -> _Blob or list of _Blob
    spine: dict
    vessels: dict
    muscles: dict
    gas: list  # list of (_Blob, fluid level fraction)
    stomach_level: float


def _deform(rng: np.random.Generator, amount: float) -> np.ndarray:
    return rng.normal(0.0, amount, 8)


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Draw one patient's geometry from the reference anatomy with per-seed variation."""
    u = rng.uniform
    pose = math.radians(u(-8.0, 8.0))
    shift = np.array([u(-10.0, 10.0), u(-10.0, 10.0), u(-6.0, 6.0)])
    body_a = _REF_BODY_A * u(0.88, 1.12)
    body_b_ant = _REF_BODY_B_ANT * u(0.88, 1.12)
    body_b_post = body_b_ant * u(0.84, 0.94)
    body_pert = rng.normal(0.0, 0.012, (4, 2))
    body_z = (u(-0.06, 0.06), u(0.0, 0.025), u(60.0, 140.0), u(0.0, 2 * math.pi))
    fat_base = u(8.0, 30.0)
    fat_anterior = u(1.0, 1.6)
    muscle_base = u(8.0, 13.0)
    rectus = u(3.0, 8.0)

    # Cavity semi-axes implied by the outline and the wall thicknesses (used to lay out organs).
    ca = body_a - fat_base - muscle_base
    cb_ant = body_b_ant - fat_base * fat_anterior - muscle_base - rectus
    cb_post = body_b_post - 0.65 * fat_base - 0.8 * muscle_base
    kx, ky = ca / _REF_CAVITY_A, 0.5 * (cb_ant + cb_post) / _REF_CAVITY_B
    size = (kx * ky) ** 0.25  # organs scale only mildly with habitus

    def jit(v: float, rel: float = 0.12) -> float:
        return v * u(1.0 - rel, 1.0 + rel)

    def pos(x: float, y: float, z: float, spread: float = 6.0) -> np.ndarray:
        return np.array([x * kx + u(-spread, spread), y * ky + u(-spread, spread), z + u(-spread, spread)])

    def semi(a: float, b: float, c: float) -> np.ndarray:
        return np.array([jit(a), jit(b), jit(c)]) * size

    # Spine: anchored to the posterior skin (paraspinal muscles + posterior elements behind it).
    fat_post = 0.65 * fat_base
    spine_y = -body_b_post + fat_post + u(54.0, 62.0)
    vb_a, vb_b = jit(22.0, 0.1), jit(17.0, 0.1)
    spine = {
        "y": spine_y, "x": u(-2.0, 2.0), "a": vb_a, "b": vb_b, "lordosis": u(2.0, 8.0),
        "pitch": u(32.0, 37.0), "disc": u(6.0, 9.0), "phase": u(0.0, 40.0),
        "canal_r": jit(8.0, 0.1), "arch_w": u(3.5, 5.0), "spinous_len": u(14.0, 20.0),
        "transverse_len": u(14.0, 20.0),
    }

    blobs = {}
    # Liver: large, right (+x), anterior; bigger superiorly; a left lobe crossing the midline.
    blobs["liver"] = [
        _Blob(pos(62.0, 12.0, 40.0), semi(60.0, 58.0, 65.0), _rotation(math.radians(u(-10, 10))),
              2.0, _deform(rng, 0.05), u(0.2, 0.35)),
        _Blob(pos(-5.0, 42.0, 58.0), semi(48.0, 26.0, 34.0), _rotation(math.radians(u(-15, 5))),
              2.0, _deform(rng, 0.05), u(0.0, 0.2)),
    ]
    # Spleen: left (-x), posterolateral, superior; long axis along the ribs.
    blobs["spleen"] = _Blob(pos(-88.0, -22.0, 45.0), semi(24.0, 44.0, 42.0),
                            _rotation(math.radians(u(10.0, 35.0))), 2.0, _deform(rng, 0.05), u(0.0, 0.15))
    # Kidneys: posterior, lateral to the spine, right one lower (pushed down by the liver);
    # upper poles tilted medially, hilum facing anteromedially.
    for side, sgn, zc in (("kidney_left", -1.0, -5.0), ("kidney_right", 1.0, -18.0)):
        center = np.array([sgn * 70.0 * kx + u(-5, 5), spine_y - 5.0 + u(-5, 5), zc + u(-8, 8)])
        rot = _rotation(-sgn * math.radians(u(20.0, 35.0)), -sgn * math.radians(u(8.0, 18.0)))
        blobs[side] = _Blob(center, semi(28.0, 22.0, 52.0), rot, 2.0, _deform(rng, 0.03), 0.0)
    # Stomach: left upper quadrant, anterior to the spleen.
    blobs["stomach"] = _Blob(pos(-45.0, 30.0, 50.0), semi(40.0, 30.0, 38.0), _rotation(math.radians(u(-20, 20))),
                             2.0, _deform(rng, 0.06), 0.0)

    vessels = {
        "aorta_x": spine["x"] - u(10.0, 18.0), "aorta_r": jit(11.0, 0.12),
        "ivc_x": spine["x"] + u(20.0, 28.0), "ivc_a": jit(13.0, 0.12), "ivc_b": jit(9.0, 0.15),
        "drift": u(-4.0, 4.0),
    }
    muscles = {
        "psoas_top": u(25.0, 60.0), "psoas_a": jit(14.0, 0.15), "psoas_b": jit(12.0, 0.15),
        "paraspinal_a": jit(22.0, 0.12), "paraspinal_b": jit(17.0, 0.12), "paraspinal_x": jit(30.0, 0.1),
    }
    gas = []
    for _ in range(int(rng.integers(4, 10))):
        c = np.array([u(-0.6, 0.45) * ca, u(-0.05, 0.75) * cb_ant, u(-90.0, 90.0)])
        gas.append((_Blob(c, np.array([u(6.0, 16.0), u(5.0, 13.0), u(6.0, 18.0)]),
                          _rotation(u(0, math.pi)), 2.0, _deform(rng, 0.05), 0.0), u(-1.0, 0.3)))
    return _Anatomy(
        pose=pose, shift=shift, body_a=body_a, body_b_ant=body_b_ant, body_b_post=body_b_post,
        body_pert=body_pert, body_z=body_z, fat_base=fat_base, fat_anterior=fat_anterior,
        muscle_base=muscle_base, rectus=rectus, visceral_fat=u(0.15, 0.45), bowel_fluid=u(0.15, 0.35),
        cavity=(ca, cb_ant, cb_post), blobs=blobs, spine=spine, vessels=vessels, muscles=muscles,
        gas=gas, stomach_level=u(-0.2, 0.5),
    )


# --------------------------------------------------------------------------------------------
# Body outline and walls.
# --------------------------------------------------------------------------------------------


def _body_radius(theta: np.ndarray, anat: _Anatomy) -> np.ndarray:
    """Radius (mm) of the body outline at polar angle ``theta`` (0 = subject's right, pi/2 = anterior).

    An ellipse with a flatter back, perturbed by low-frequency harmonics (k = 2..5).
    """
    c, s = np.cos(theta), np.sin(theta)
    b = np.where(s >= 0.0, anat.body_b_ant, anat.body_b_post)
    a = anat.body_a
    r = a * b / np.sqrt((b * c) ** 2 + (a * s) ** 2)
    pert = np.zeros_like(theta)
    for k, (ck, sk) in enumerate(anat.body_pert, start=2):
        pert = pert + ck * np.cos(k * theta) + sk * np.sin(k * theta)
    return r * (1.0 + pert)


def _fat_thickness(theta: np.ndarray, anat: _Anatomy) -> np.ndarray:
    """Subcutaneous fat thickness (mm): thicker anteriorly, thinner over the back."""
    s = np.sin(theta)
    return anat.fat_base * (1.0 + (anat.fat_anterior - 1.0) * np.maximum(s, 0.0)) * (1.0 - 0.35 * np.maximum(-s, 0.0))


def _muscle_thickness(theta: np.ndarray, anat: _Anatomy) -> np.ndarray:
    """Abdominal wall muscle thickness (mm): rectus sheath bulge anteriorly, thinner posteriorly."""
    s = np.sin(theta)
    rectus = anat.rectus * np.exp(-(((theta - math.pi / 2) / 0.35) ** 2))
    return anat.muscle_base * (1.0 - 0.2 * np.maximum(-s, 0.0)) + rectus


def _body_z_factor(az: np.ndarray, anat: _Anatomy) -> np.ndarray:
    """Per-slice scaling of the outline: a gentle trend and ripple along z."""
    g1, g2, period, phase = anat.body_z
    return (1.0 + g1 * np.tanh(az / 90.0) + g2 * np.sin(2 * math.pi * az / period + phase)).astype(np.float32)


def _fit_frame(anat: _Anatomy, shape, spacing) -> _Frame:
    """Choose anatomy scales so the posed body fits the field of view with an air margin."""
    spacing = np.asarray(spacing, dtype=float)
    shape_arr = np.asarray(shape, dtype=float)
    fov = shape_arr * spacing
    origin = -(shape_arr - 1.0) / 2.0 * spacing
    theta = np.linspace(-math.pi, math.pi, 721)
    g1, g2, _, _ = anat.body_z
    r = _body_radius(theta, anat) * (1.0 + abs(g1) + g2)
    cp, sp = math.cos(anat.pose), math.sin(anat.pose)
    px, py = r * np.cos(theta), r * np.sin(theta)
    wx = np.abs(cp * px - sp * py + anat.shift[0]).max()
    wy = np.abs(sp * px + cp * py + anat.shift[1]).max()
    # Usable half-FOV: keep at least ~1.5 voxels (or 4 % of the FOV) of air around the body.
    half = fov[:2] / 2.0 - np.maximum(1.5 * spacing[:2], 0.04 * fov[:2])
    s_xy = float(min(1.0, half[0] / wx, half[1] / wy))
    s_xy = max(s_xy, 1e-3)
    s_z = float(min(1.0, fov[2] / _REF_Z_EXTENT))
    shift = np.array([anat.shift[0] * s_xy, anat.shift[1] * s_xy, anat.shift[2] * s_z])
    return _Frame(tuple(int(n) for n in shape), spacing, origin, s_xy, s_z, cp, sp, shift)


# --------------------------------------------------------------------------------------------
# Random fields.
# --------------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, shape, corr_vox) -> np.ndarray:
    """Unit-variance smooth Gaussian random field with correlation length ``corr_vox`` voxels.

    White noise on a coarse lattice, interpolated separably with Gaussian kernels (three small
    matrix products), so the cost is linear in the output size whatever the correlation length.
    """
    g = rng.standard_normal([max(2, int(math.ceil(n / max(c, 1.0)))) + 3 for n, c in zip(shape, corr_vox)],
                            dtype=np.float32)
    w0, w1, w2 = (_interp_weights(n, m) for n, m in zip(shape, g.shape))
    g = np.tensordot(w0, g, axes=(1, 0))  # (n0, m1, m2)
    g = np.matmul(w1, g)  # (n0, n1, m2), broadcast over axis 0
    return np.ascontiguousarray(np.matmul(g, w2.T), dtype=np.float32)  # (n0, n1, n2), already contiguous


def _interp_weights(n: int, m: int) -> np.ndarray:
    """(n, m) Gaussian interpolation weights from m lattice nodes spanning n voxels (+ margin),
    normalised so that interpolated unit white noise has unit variance at every voxel."""
    nodes = np.linspace(-1.5, 1.5 + (n - 1), m)
    d = (np.arange(n)[:, None] - nodes[None, :]) / (nodes[1] - nodes[0])
    w = np.exp(-0.5 * d * d)
    return (w / np.sqrt((w * w).sum(axis=1, keepdims=True))).astype(np.float32)


def _fine_texture(rng: np.random.Generator, shape, sigma: float = 1.0) -> np.ndarray:
    """Unit-variance voxel-scale texture: Gaussian-filtered white noise."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    ndimage.gaussian_filter(noise, sigma, output=noise, mode="reflect")
    x = np.arange(-int(4 * sigma + 0.5), int(4 * sigma + 0.5) + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    noise *= np.float32(1.0 / float(np.sum(k * k)) ** (len(shape) / 2.0))
    return noise


# --------------------------------------------------------------------------------------------
# Painting the tissue map.
# --------------------------------------------------------------------------------------------


def _corr_voxels(frame: _Frame, corr_mm: float) -> tuple[float, float, float]:
    """Convert an anatomical correlation length (mm) into voxels along each axis."""
    return (corr_mm * frame.s_xy / frame.spacing[0], corr_mm * frame.s_xy / frame.spacing[1],
            corr_mm * frame.s_z / frame.spacing[2])


def _paint_anatomy(frame: _Frame, anat: _Anatomy, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Paint all structures into a uint8 tissue map; return it and per-label fallback anchors."""
    shape = frame.shape
    tissue = np.zeros(shape, dtype=np.uint8)
    theta = np.arctan2(frame.ay, frame.ax)
    r = np.hypot(frame.ax, frame.ay)
    big_r = _body_radius(theta, anat)
    t_fat = _fat_thickness(theta, anat)
    t_mus = _muscle_thickness(theta, anat)
    zf = _body_z_factor(frame.az, anat)[None, None, :]
    # Masks as ratios to the (z-scaled) outline radius: cheap 2D maps compared per slice.
    q_body = (r / big_r).astype(np.float32)[:, :, None]
    q_fat = ((r + t_fat) / big_r).astype(np.float32)[:, :, None]
    q_cav = ((r + t_fat + t_mus) / big_r).astype(np.float32)[:, :, None]
    tissue[q_body < zf] = _FAT
    inner = q_fat < zf  # inside the subcutaneous fat
    tissue[inner] = _MUSCLE
    cavity = q_cav < zf
    tissue[cavity] = _BOWEL
    # Visceral fat: a smooth random field thresholded to the seed's fat fraction, denser
    # towards the cavity wall and posteriorly (retroperitoneum).
    field_ = _smooth_field(rng, shape, _corr_voxels(frame, 16.0))
    bias = (1.2 * (q_cav[:, :, 0] - 0.6) - 0.4 * np.tanh(frame.ay / 60.0)).astype(np.float32)[:, :, None]
    thr = float(special.ndtri(1.0 - anat.visceral_fat))
    tissue[cavity & (field_ + bias > thr)] = _FAT
    # Bowel loops: fluid-filled lumens along the zero set of a finer field (sinuous bands),
    # leaving the rest of the "bowel" tissue as wall / collapsed loops.
    field_ = _smooth_field(rng, shape, _corr_voxels(frame, 9.0))
    lumen = np.abs(field_) < np.float32(anat.bowel_fluid)
    lumen &= tissue == _BOWEL
    tissue[lumen] = _FLUID
    del field_, lumen

    soft = (_BOWEL, _FAT, _FLUID)
    # Stomach: wall, fluid content, gas cap anteriorly (the patient lies supine).
    st = anat.blobs["stomach"]
    _paint(tissue, st.mask(frame), _BOWEL, soft, cavity)
    content = st.resized(1.0, -4.0)
    found = content.mask(frame)
    _paint(tissue, found, _FLUID, soft, cavity)
    if found is not None:
        blk, m = found
        level = st.center[1] + anat.stomach_level * st.semi[1]
        _paint(tissue, (blk, m & (frame.coords(blk)[1] > level)[:, :, None]), _GAS, (_FLUID,), cavity)

    organ_allowed = (_BOWEL, _FAT, _FLUID, _GAS)
    for blob in anat.blobs["liver"]:
        _paint(tissue, blob.mask(frame), _LIVER, organ_allowed, cavity)
    _paint(tissue, anat.blobs["spleen"].mask(frame), _SPLEEN, organ_allowed, cavity)

    # Kidneys: perirenal fat capsule, cortex, medulla, renal sinus fat at the hilum.
    for side, cortex, medulla, sgn in (("kidney_left", _KL_CORTEX, _KL_MEDULLA, -1.0),
                                       ("kidney_right", _KR_CORTEX, _KR_MEDULLA, 1.0)):
        k = anat.blobs[side]
        _paint(tissue, k.resized(1.0, 7.0).mask(frame), _FAT, organ_allowed, cavity)
        kidney_allowed = (*organ_allowed, _LIVER, _SPLEEN)
        _paint(tissue, k.mask(frame), cortex, kidney_allowed, cavity)
        _paint(tissue, k.resized(0.68).mask(frame), medulla, (cortex,))
        hilum_dir = np.array([-sgn * 1.0, 0.7, 0.0]) / math.hypot(1.0, 0.7)
        hilum = _Blob(k.center + hilum_dir * 0.85 * k.semi[0], k.semi * np.array([0.45, 0.4, 0.35]))
        _paint(tissue, hilum.mask(frame), _FAT, (cortex, medulla))

    sp = anat.spine

    def spine_y(az):
        return sp["y"] + sp["lordosis"] * (1.0 - np.clip((az + 30.0) / 120.0, -1.0, 1.0) ** 2)

    # Psoas: small near the top, growing inferiorly, lateral to the vertebral bodies.
    mu = anat.muscles
    for sgn in (-1.0, 1.0):
        def psoas(ax, ay, az, sgn=sgn):
            grow = np.clip((mu["psoas_top"] - az) / 120.0, 0.0, 1.0) * 0.85 + 0.15
            grow = np.where(az > mu["psoas_top"], 0.0, grow).astype(np.float32)
            a = np.maximum(mu["psoas_a"] * grow, 1e-3)
            b = np.maximum(mu["psoas_b"] * grow, 1e-3)
            cx = sp["x"] + sgn * (sp["a"] + a * 0.85)
            return _ellipse_stack(ax, ay, cx, spine_y(az) + 2.0, a, b)
        found = _tube(frame, (sp["x"] + sgn * (sp["a"] + 0.85 * mu["psoas_a"]), sp["y"] + 2.0 + 0.5 * sp["lordosis"]),
                      (1.85 * mu["psoas_a"] + 2.0, mu["psoas_b"] + 0.5 * sp["lordosis"] + 2.0), psoas)
        _paint(tissue, found, _MUSCLE, organ_allowed, cavity)
        # Paraspinal (erector spinae) muscles behind the transverse processes.

        def paraspinal(ax, ay, az, sgn=sgn):
            ones = np.ones_like(az)
            cy = spine_y(az) - sp["b"] - 2.0 * sp["canal_r"] - 0.5 * mu["paraspinal_b"]
            return _ellipse_stack(ax, ay, ones * (sp["x"] + sgn * mu["paraspinal_x"]), cy,
                                  ones * mu["paraspinal_a"], ones * mu["paraspinal_b"], 2.4)
        para_y = sp["y"] - sp["b"] - 2.0 * sp["canal_r"] - 0.5 * mu["paraspinal_b"] + 0.5 * sp["lordosis"]
        found = _tube(frame, (sp["x"] + sgn * mu["paraspinal_x"], para_y),
                      (mu["paraspinal_a"] + 2.0, mu["paraspinal_b"] + 0.5 * sp["lordosis"] + 2.0), paraspinal)
        _paint(tissue, found, _MUSCLE, (_FAT, _MUSCLE, _BOWEL, _FLUID), inner)

    # Great vessels in front of the spine: aorta slightly left (-x), IVC on the right (+x).
    ve = anat.vessels

    def aorta(ax, ay, az):
        rr = (ve["aorta_r"] * (1.0 + 0.08 * np.tanh(az / 90.0))).astype(np.float32)
        cx = (ve["aorta_x"] + ve["drift"] * np.tanh(az / 90.0)).astype(np.float32)
        cy = spine_y(az) + sp["b"] + rr + 1.5
        return _ellipse_stack(ax, ay, cx, cy.astype(np.float32), rr, rr)

    def ivc(ax, ay, az):
        ones = np.ones_like(az)
        cy = spine_y(az) + sp["b"] + ve["ivc_b"] + 2.0
        return _ellipse_stack(ax, ay, ones * ve["ivc_x"], cy.astype(np.float32), ones * ve["ivc_a"],
                              ones * ve["ivc_b"])

    vessel_allowed = (*organ_allowed, _MUSCLE, _LIVER, _SPLEEN)
    front, sway = sp["y"] + sp["b"] + 0.5 * sp["lordosis"], 0.5 * sp["lordosis"]
    r_ao = 1.1 * ve["aorta_r"]
    found = _tube(frame, (ve["aorta_x"], front + r_ao + 1.5), (abs(ve["drift"]) + r_ao + 2.0, r_ao + sway + 2.0), aorta)
    _paint(tissue, found, _ARTERY, vessel_allowed, cavity)
    found = _tube(frame, (ve["ivc_x"], front + ve["ivc_b"] + 2.0), (ve["ivc_a"] + 2.0, ve["ivc_b"] + sway + 2.0), ivc)
    _paint(tissue, found, _VEIN, vessel_allowed, cavity)

    _paint_spine(frame, tissue, sp, spine_y)

    # Bowel gas pockets (with bowel wall and, sometimes, a fluid level), only into bowel/fat.
    for pocket, level in anat.gas:
        _paint(tissue, pocket.resized(1.0, 3.0).mask(frame), _BOWEL, (_BOWEL, _FAT), cavity)
        found = pocket.mask(frame)
        if found is not None:
            blk, m = found
            lvl = pocket.center[1] + level * pocket.semi[1]
            above = (frame.coords(blk)[1] > lvl)[:, :, None]
            _paint(tissue, (blk, m & above), _GAS, (_BOWEL,), cavity)
            _paint(tissue, (blk, m & ~above), _FLUID, (_BOWEL,), cavity)

    # Fallback anchors: where to put a voxel of a class that vanished (only at absurdly small
    # grids; normal sizes contain every class by construction).
    ant = math.pi / 2
    r_ant = float(_body_radius(np.array([ant]), anat)[0])
    t_f, t_m = float(_fat_thickness(np.array([ant]), anat)[0]), float(_muscle_thickness(np.array([ant]), anat)[0])
    anchors = {
        1: (np.array([0.0, r_ant - 0.5 * t_f, 0.0]), _FAT),
        2: (np.array([0.0, r_ant - t_f - 0.5 * t_m, 0.0]), _MUSCLE),
        3: (anat.blobs["liver"][0].center, _LIVER),
        4: (anat.blobs["spleen"].center, _SPLEEN),
        5: (anat.blobs["kidney_left"].center, _KL_CORTEX),
        6: (anat.blobs["kidney_right"].center, _KR_CORTEX),
        7: (np.array([sp["x"], sp["y"], 0.0]), _MARROW),
        8: (np.array([ve["aorta_x"], sp["y"] + sp["b"] + ve["aorta_r"], 0.0]), _ARTERY),
        9: (st.center + np.array([0.0, 0.5 * st.semi[1], 0.0]), _GAS),
        10: (np.array([ve["ivc_x"], sp["y"] + sp["b"] + ve["ivc_b"], 0.0]), _VEIN),
    }
    return tissue, anchors


def _paint_spine(frame: _Frame, tissue: np.ndarray, sp: dict, spine_y) -> None:
    """Lumbar spine: vertebral bodies (cortical shell, cancellous marrow) and discs stacked along z,
    a CSF-filled canal, and posterior elements (arch, spinous and transverse processes)."""
    # Keep the cortical shell at least ~1 voxel thick whatever the scale.
    shell = max(2.0, 1.1 * float(min(frame.spacing[:2])) / frame.s_xy)
    endplate = max(1.5, 0.6 * float(frame.spacing[2]) / frame.s_z)

    def level(az):
        m = np.mod(az - sp["phase"], sp["pitch"])
        is_disc = m < sp["disc"]
        near_endplate = (m < sp["disc"] + endplate) | (m > sp["pitch"] - endplate)
        has_arch = (m > sp["disc"] + 2.0) & (m < sp["pitch"] - 5.0)
        return is_disc, near_endplate, has_arch

    def vb(ax, ay, az, grow=0.0):
        ones = np.ones_like(az)
        return _ellipse_stack(ax, ay, ones * sp["x"], spine_y(az).astype(np.float32), ones * (sp["a"] + grow),
                              ones * (sp["b"] + grow), 2.3)

    arch_w = max(sp["arch_w"], shell)
    top = sp["y"] + sp["b"] + sp["lordosis"] + 2.0
    bottom = sp["y"] - sp["b"] - 2.0 * sp["canal_r"] - sp["spinous_len"] - arch_w - 2.0
    half_x = max(sp["a"], sp["canal_r"] + sp["transverse_len"] + 4.0, sp["canal_r"] + arch_w) + 2.0
    blk = frame.block(np.array([sp["x"], 0.5 * (top + bottom), 0.0]), (half_x, 0.5 * (top - bottom), 0.0))
    if blk is None:
        return
    blk = (blk[0], blk[1], slice(0, frame.shape[2]))
    ax, ay, az = frame.coords(blk)
    sub = tissue[blk]
    is_disc, near_endplate, has_arch = level(az)
    outer = vb(ax, ay, az)
    core = vb(ax, ay, az, -shell)
    disc = outer & is_disc[None, None, :]
    body_bone = outer & ~is_disc[None, None, :]
    sub[body_bone] = _CORTICAL
    sub[body_bone & core & ~near_endplate[None, None, :]] = _MARROW
    sub[disc] = _DISC

    # Canal and the neural arch around it (posterior elements only at vertebral levels).
    ones = np.ones_like(az)
    cy = (spine_y(az) - sp["b"] - sp["canal_r"]).astype(np.float32)
    rc = ones * sp["canal_r"]
    canal = _ellipse_stack(ax, ay, ones * sp["x"], cy, rc, rc)
    ring = _ellipse_stack(ax, ay, ones * sp["x"], cy, rc + arch_w, rc + arch_w) & ~canal
    spinous = _ellipse_stack(ax, ay, ones * sp["x"], cy - sp["canal_r"] - 0.5 * sp["spinous_len"],
                             ones * max(3.0, shell), ones * (0.5 * sp["spinous_len"] + arch_w), 2.0)
    arch = ring | spinous
    for sgn in (-1.0, 1.0):
        arch |= _ellipse_stack(ax, ay, ones * (sp["x"] + sgn * (sp["canal_r"] + 0.5 * sp["transverse_len"] + 2.0)),
                               cy + 0.3 * sp["canal_r"], ones * (0.5 * sp["transverse_len"] + 2.0),
                               ones * max(3.5, shell), 2.0)
    arch &= has_arch[None, None, :] & ~outer & (tissue[blk] != _AIR)
    sub[arch] = _CORTICAL
    sub[canal & ~outer] = _CSF


def _ensure_present(frame: _Frame, tissue: np.ndarray, anchors: dict) -> None:
    """Guarantee every class 1..10 has at least one voxel (only matters for tiny grids)."""
    counts = np.bincount(_TISSUE_TO_LABEL[tissue].ravel(), minlength=len(LABEL_NAMES))
    for label, (point, tid) in anchors.items():
        if counts[label] == 0:
            tissue[frame.to_index(np.asarray(point, dtype=float))] = tid


# --------------------------------------------------------------------------------------------
# Rendering intensities.
# --------------------------------------------------------------------------------------------


def _ct_image(tissue: np.ndarray, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CT in HU: per-seed tissue values + tissue-scaled texture, partial volume, quantum noise."""
    table = np.array([row[2] for row in _TISSUE_TABLE], dtype=np.float64)
    sd = np.array([row[3] for row in _TISSUE_TABLE])
    table = table + rng.normal(0.0, 1.0, len(table)) * sd
    # Keep the physiological ordering that segmentation/translation demos rely on.
    table[_LIVER] = max(table[_LIVER], table[_MUSCLE] + 20.0)
    tex = np.array([row[4] for row in _TISSUE_TABLE], dtype=np.float32)
    ct = table.astype(np.float32)[tissue]
    ct += tex[tissue] * texture
    ndimage.gaussian_filter(ct, rng.uniform(0.6, 0.8), output=ct, mode="nearest")
    ct += rng.standard_normal(tissue.shape, dtype=np.float32) * np.float32(rng.uniform(10.0, 18.0))
    np.clip(ct, -1024.0, 3071.0, out=ct)
    return ct


def _bias_field(shape, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative MR bias: exp of a random quadratic polynomial, within about +-20-30 %."""
    x, y, z = (np.linspace(-1.0, 1.0, n, dtype=np.float32) if n > 1 else np.zeros(1, np.float32) for n in shape)
    c = rng.normal(0.0, 1.0, 9).astype(np.float32)
    xy = (c[0] * x[:, None] + c[1] * y[None, :] + c[3] * (x * x)[:, None] + c[4] * (y * y)[None, :]
          + c[6] * x[:, None] * y[None, :])
    zl = c[2] * z + c[5] * z * z
    cross = c[7] * x[:, None] + c[8] * y[None, :] + np.zeros((1, 1), np.float32)
    log_b = xy[:, :, None] + cross[:, :, None] * z[None, None, :] + zl[None, None, :]
    peak = float(np.abs(log_b).max())
    scale = np.float32(math.log1p(rng.uniform(0.2, 0.3)) / peak) if peak > 0 else np.float32(0.0)
    log_b *= scale
    return np.exp(log_b, out=log_b)


def _mr_image(tissue: np.ndarray, texture: np.ndarray, rng: np.random.Generator, weighting: str) -> np.ndarray:
    """MR magnitude: T1/T2 tissue table, texture, partial volume, coil bias, Rician noise.

    The same random draws are made for both weightings, so T1 and T2 of one seed share the
    bias field and noise pattern (like two sequences of one session).
    """
    jitter = rng.uniform(0.94, 1.06, (2, len(_TISSUE_TABLE)))
    gain = rng.uniform(0.9, 1.1)
    col = 5 if weighting == "t1" else 6
    table = np.array([row[col] for row in _TISSUE_TABLE]) * jitter[0 if weighting == "t1" else 1] * gain
    tex = np.array([row[7] for row in _TISSUE_TABLE]) * table
    mr = table.astype(np.float32)[tissue]
    mr += tex.astype(np.float32)[tissue] * texture
    ndimage.gaussian_filter(mr, rng.uniform(0.6, 0.8), output=mr, mode="nearest")
    mr *= _bias_field(tissue.shape, rng)
    np.maximum(mr, 0.0, out=mr)
    sigma = np.float32(rng.uniform(0.02, 0.04) * float(mr.max()))
    re = rng.standard_normal(tissue.shape, dtype=np.float32)
    re *= sigma
    re += mr
    im = rng.standard_normal(tissue.shape, dtype=np.float32)
    im *= sigma
    return np.hypot(re, im, out=re)


# --------------------------------------------------------------------------------------------
# Public entry point.
# --------------------------------------------------------------------------------------------


def make_phantom(seed: int, *, shape: tuple[int, int, int] = (96, 96, 48),
                 spacing: tuple[float, float, float] = (2.0, 2.0, 3.0), mr_weighting: str = "t1") -> Phantom:
    """Generate one deterministic abdomen phantom.

    Args:
        seed: non-negative integer; the same seed and arguments give bitwise identical arrays,
            different seeds give different anatomies (habitus, pose, organ sizes and positions,
            superior-inferior extents, bowel gas) and intensities.
        shape: grid shape (X, Y, Z); axes are RAS+ (X towards the subject's Right, Y Anterior,
            Z Superior). Any shape of at least 2 voxels per axis works; from (32, 32, 16) up,
            every class of :data:`LABEL_NAMES` is present.
        spacing: voxel size in mm. The anatomy is defined in mm and scaled down (never up) to
            fit fields of view smaller than a real abdomen.
        mr_weighting: ``"t1"`` or ``"t2"``; only changes ``mr`` (CT and labels are identical).

    Returns:
        A :class:`Phantom` with float32 ``ct`` (HU) and ``mr`` (>= 0), uint8 ``labels`` and a
        4x4 float64 ``affine`` (diagonal ``spacing``, volume centre at world (0, 0, 0)).

    Raises:
        ValueError: on a negative seed, a non-3D or non-positive shape/spacing, or an unknown
            ``mr_weighting``.
    """
    weighting = str(mr_weighting).lower()
    if weighting not in ("t1", "t2"):
        raise ValueError(f"mr_weighting must be 't1' or 't2', got {mr_weighting!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"shape must be 3 positive sizes >= 2, got {shape}")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers, got {spacing}")

    root = np.random.default_rng(int(seed))
    anat_rng, field_rng, tex_rng, ct_rng, mr_rng = root.spawn(5)
    anat = _sample_anatomy(anat_rng)
    frame = _fit_frame(anat, shape, spacing)
    tissue, anchors = _paint_anatomy(frame, anat, field_rng)
    _ensure_present(frame, tissue, anchors)

    texture = _fine_texture(tex_rng, shape, 1.0)
    ct = _ct_image(tissue, texture, ct_rng)
    mr = _mr_image(tissue, texture, mr_rng, weighting)
    labels = _TISSUE_TO_LABEL[tissue]

    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = frame.origin
    return Phantom(ct=ct, mr=mr, labels=labels, affine=affine, label_names=label_names(), seed=int(seed),
                   mr_weighting=weighting)
