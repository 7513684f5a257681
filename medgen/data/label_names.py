"""Read the id -> name table of label maps (``{"1": "liver", ...}``), the one reader every command uses.

Torch-free, so pipelines and the command line can check label-name files before any model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from medgen.errors import InputError


def read_label_names(ref: str | Path | dict | None) -> dict[int, str]:
    """Label id -> name from a dict, an id -> name JSON, or one entry of a class-map file (``FILE#KEY``).

    ``{"1": "spleen", ...}`` is used as is; a file whose values are all mappings (e.g.
    TotalSegmentator's class map with ``total`` and ``total_mr``) needs ``#KEY``. Id 0 is named
    ``background`` unless named otherwise; ``None`` gives ``{}`` (no names given).

    Raises:
        InputError: the file cannot be read, ``#KEY`` is missing or unknown, or a key is not an integer.

    Examples:
        >>> read_label_names({"1": "liver"})
        {1: 'liver', 0: 'background'}
    """
    if ref is None:
        return {}
    path, data = None, ref
    if not isinstance(ref, dict):
        data, path = _read_json(ref)
    try:
        names = {int(k): str(v) for k, v in data.items()}
    except (ValueError, AttributeError) as exc:
        raise InputError("label-name keys must be integer ids", path=path or "label names",
                         fix='write {"1": "liver", ...}') from exc
    names.setdefault(0, "background")
    return names


def _read_json(ref: str | Path) -> tuple[object, Path]:
    """The JSON object ``ref`` names (``FILE#KEY``: its entry ``KEY``) and the file's path."""
    text = str(ref)
    key = None
    if "#" in text and not Path(text).exists():
        text, key = text.rsplit("#", 1)
    path = Path(text)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot be read as a label-name JSON ({exc})", path=path,
                         fix='write {"1": "liver", "2": "spleen", ...}') from exc
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise InputError(f"has no entry '{key}'", path=path,
                             fix=f"use one of: {', '.join(map(str, data)) if isinstance(data, dict) else '(none)'}")
        data = data[key]
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        raise InputError("holds several label maps", path=path,
                         fix=f"choose one with {path}#KEY, KEY one of: {', '.join(map(str, data))}")
    return data, path
