"""Fixtures shared by the translator training tests."""

import numpy as np
import pytest

from medgen.data.phantoms import make_phantom
from medgen.io.volume import Volume
from medgen.io.writers import write_volume


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    """Three small phantoms as files: ``mr{i}``, ``ct{i}`` (HU) and ``lab{i}`` (labels) ``.nii.gz``."""
    folder = tmp_path_factory.mktemp("phantoms")
    for seed in range(3):
        p = make_phantom(seed, shape=(48, 48, 16))
        write_volume(Volume(p.mr, p.affine), folder / f"mr{seed}.nii.gz")
        write_volume(Volume(p.ct, p.affine), folder / f"ct{seed}.nii.gz")
        write_volume(Volume(p.labels.astype(np.int16), p.affine), folder / f"lab{seed}.nii.gz")
    return folder
