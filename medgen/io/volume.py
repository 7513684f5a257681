"""The one in-memory volume type: voxels plus full geometry.

Conventions (nibabel's): ``array`` axes are voxel indices (i, j, k) and ``affine`` maps
``(i, j, k, 1)`` to RAS+ world millimetres (x increases from the subject's Left to Right,
y Posterior-to-Anterior, z Inferior-to-Superior). SimpleITK's (z, y, x) arrays and LPS directions
are converted at the reader/writer boundary only, so nothing inside medgen ever has to guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np


@dataclass(frozen=True)
class Volume:
    """A 3D image or label map with its geometry.

    Attributes:
        array: voxel values, shape (I, J, K).
        affine: 4x4 voxel-to-RAS-world matrix in millimetres.
        source: where it was read from (file or DICOM folder), if anywhere.
        series_uid: the DICOM SeriesInstanceUID when read from a DICOM series.
        meta: extra facts worth carrying (e.g. DICOM modality, description, file list).

    Examples:
        >>> import numpy as np
        >>> v = Volume(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
        >>> v.spacing, v.orientation
        ((2.0, 2.0, 3.0), 'RAS')
    """

    array: np.ndarray
    affine: np.ndarray
    source: str | None = None
    series_uid: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along each array axis, in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def orientation(self) -> str:
        """Closest anatomical axis codes, e.g. ``'RAS'`` or ``'LPS'``."""
        return "".join(nib.orientations.aff2axcodes(self.affine))

    @property
    def name(self) -> str:
        """A short human name for messages: the source path or ``'<memory>'``."""
        return self.source or "<memory>"

    def with_array(self, array: np.ndarray, **changes) -> "Volume":
        """The same geometry with other voxels (e.g. a prediction on this grid)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} does not match volume shape {self.shape}")
        return replace(self, array=array, **changes)

    def same_grid(self, other: "Volume", atol: float = 1e-3) -> bool:
        """True when both volumes share shape and affine (within ``atol`` mm)."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)


def world_to_voxel(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 3) RAS world points to continuous voxel indices."""
    inv = np.linalg.inv(affine)
    return points @ inv[:3, :3].T + inv[:3, 3]


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Map (N, 3) voxel indices to RAS world points."""
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def case_id_from_path(path: str | Path) -> str:
    """A case id from a file or folder name: the name without image extensions.

    Only the final path component is used and unsafe characters are replaced, so a case id can
    never escape an output folder.

    Examples:
        >>> case_id_from_path("/data/patient_01.nii.gz")
        'patient_01'
        >>> case_id_from_path("../../etc/passwd")
        'passwd'
    """
    name = Path(str(path).rstrip("/\\")).name
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    safe = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name).strip(".")
    return safe or "case"
