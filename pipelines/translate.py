"""Pipeline: translate one MR file or DICOM series to a synthetic CT file (HU, MR grid).

Read -> :func:`medgen.inference.translate.translate_volume` (preprocess, translate, invert) ->
write atomically beside nothing it read. Used by ``medgen translate``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def translate_file(mr_path: str | Path, out_path: str | Path, model: str | Path, *, device: str = "auto",
                   precision: str = "auto", overwrite: bool = False, series_uid: str | None = None,
                   mask_background: bool | None = None) -> Path:
    """Translate ``mr_path`` with ``model`` and write the synthetic CT to ``out_path``.

    Raises:
        OutputError: ``out_path`` exists (without ``overwrite``) or is one of the inputs.
        InputError / ModelError: unreadable MR or model.
    """
    from medgen.inference.translate import load_translator, translate_volume
    from medgen.io.atomic import check_output_path
    from medgen.io.readers import read_volume
    from medgen.io.writers import write_volume

    check_output_path(out_path, overwrite=overwrite, inputs=(mr_path,))  # fail before the work
    translator = load_translator(model)
    mr = read_volume(mr_path, series_uid=series_uid)
    start = time.perf_counter()
    sct = translate_volume(mr, translator, device=device, precision=precision, mask_background=mask_background)
    log.info("translated %s (%s, %s) in %.1f s", mr.name, "x".join(map(str, mr.shape)), mr.orientation,
             time.perf_counter() - start)
    import numpy as np
    sct = sct.with_array(np.rint(sct.array).astype(np.int16))  # whole HU, like scanner CTs
    path = write_volume(sct, out_path, overwrite=overwrite, inputs=(mr_path,))
    log.info("wrote %s", path)
    return Path(path)
