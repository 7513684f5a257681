"""Write procedural abdomen phantoms to disk: ``OUT/<case>/{ct,mr,labels}.nii.gz`` + label names.

Case ``i`` is ``phantom_{i:03d}`` generated with seed ``seed + i``, so the same command always
writes identical volumes, and ``-n 10 --seed 0`` extends ``-n 5 --seed 0`` with five new cases.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from medgen.data.phantoms import label_names, make_phantom
from medgen.errors import InputError
from medgen.io.atomic import check_output_path, ensure_writable_dir, write_text_atomic
from medgen.io.volume import Volume
from medgen.io.writers import write_volume
from medgen.progress import progress

log = logging.getLogger(__name__)

LABEL_NAMES_FILE = "label_names.json"


def run_phantoms(output_dir: str | Path, *, n: int, seed: int = 0, shape: tuple[int, int, int] = (96, 96, 48),
                 spacing: tuple[float, float, float] = (2.0, 2.0, 3.0), mr_weighting: str = "t1",
                 overwrite: bool = False) -> list[Path]:
    """Generate ``n`` phantoms into ``output_dir``; returns the case folders.

    Raises:
        InputError: invalid ``n``, shape, spacing, seed or weighting.
        OutputError: an output exists (without ``overwrite``) or the folder is not writable.
    """
    if n < 1:
        raise InputError(f"must be at least 1 (got {n})", path="-n/--num", fix="pass -n 1 or more")
    if seed < 0:
        raise InputError(f"must be >= 0 (got {seed})", path="--seed")
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"must be 3 sizes of at least 8 voxels (got {tuple(shape)})", path="--shape")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InputError(f"must be 3 positive sizes in mm (got {tuple(spacing)})", path="--spacing")
    out = ensure_writable_dir(output_dir)
    cases = [out / f"phantom_{i:03d}" for i in range(n)]
    names_path = out / LABEL_NAMES_FILE
    for case in cases:  # refuse before writing anything
        for name in ("ct", "mr", "labels"):
            check_output_path(case / f"{name}.nii.gz", overwrite=overwrite)
    for i, case in enumerate(progress(cases, desc="phantoms", unit="case")):
        try:
            phantom = make_phantom(seed + i, shape=tuple(shape), spacing=tuple(spacing), mr_weighting=mr_weighting)
        except ValueError as exc:
            raise InputError(str(exc), path="phantom options") from exc
        for name, array in (("ct", phantom.ct), ("mr", phantom.mr), ("labels", phantom.labels)):
            write_volume(Volume(array, phantom.affine), case / f"{name}.nii.gz", overwrite=overwrite)
        log.debug("wrote %s (seed %d)", case, seed + i)
    names = {str(k): v for k, v in label_names().items()}
    write_text_atomic(names_path, json.dumps(names, indent=1))
    log.info("wrote %d phantom(s) (%s, seeds %d..%d) to %s", n, mr_weighting, seed, seed + n - 1, out)
    return cases
