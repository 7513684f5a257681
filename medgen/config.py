"""Typed configs loaded from YAML, with ``--set key.sub=value`` overrides.

Configs are data: YAML is read with ``yaml.safe_load`` and validated against a pydantic schema
(unknown keys and wrong types are errors that list the valid keys). Nothing in a config is ever
evaluated. ``-c`` accepts a file path or the name of a shipped config such as
``translator/cyclegan_25d`` (found in the installed ``medgen.configs`` package).
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medgen.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


#: Value types shared by the schemas: counts of steps, voxels, cases (>= 1); sizes in mm (> 0);
#: sliding-window overlaps (0 <= overlap < 1: 1 would never advance the window).
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
Overlap = Annotated[float, Field(ge=0, lt=1)]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment,
    and no float may be NaN or infinite (``lr=nan`` is refused before a run exists)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    #: keys that moved, old dotted key -> new one: an old key in a user's YAML or ``--set`` is one
    #: clear error saying where it went (instead of "unknown key" and a list of every key)
    moved_keys: ClassVar[dict[str, str]] = {}


def shipped_config_names() -> list[str]:
    """Names of the configs shipped with medgen, e.g. ``['preprocess/ct', 'translator/cyclegan_25d']``."""
    root = resources.files("medgen.configs")
    names = []
    for group in root.iterdir():
        if group.is_dir():
            names += [f"{group.name}/{f.name[:-5]}" for f in group.iterdir() if f.name.endswith(".yaml")]
    return sorted(names)


def read_config_text(ref: str | Path) -> tuple[str, str]:
    """The YAML text of a config file path or shipped config name, and where it came from."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path.read_text(), str(path)
    name = str(ref).removesuffix(".yaml")
    candidate = resources.files("medgen.configs").joinpath(f"{name}.yaml")
    if candidate.is_file():
        return candidate.read_text(), f"medgen.configs:{name}"
    raise ConfigError("is neither a config file nor a shipped config name", path=ref,
                      fix="pass an existing .yaml file or one of: " + ", ".join(shipped_config_names()))


def _is_section(annotation: Any) -> bool:
    """A field whose type is a config section (a pydantic model), as opposed to a value."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def dotted_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """All valid ``a.b.c`` keys of a schema (for error messages and ``--set``)."""
    keys = []
    for name, info in schema.model_fields.items():
        if _is_section(info.annotation):
            keys += dotted_keys(info.annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def apply_override(data: dict, assignment: str, schema: type[BaseModel], source: str = "--set") -> None:
    """Apply one ``key.sub=value`` assignment (value parsed as YAML) to ``data`` in place."""
    if "=" not in assignment:
        raise ConfigError(f"'{assignment}' is not of the form key.sub=value", path=source,
                          fix="write e.g. --set train.lr=0.0002")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if key in schema.moved_keys:
        new = schema.moved_keys[key]
        raise ConfigError(f"'{key}' has moved to '{new}'", path=source, fix=f"write {new}={raw.strip() or 'VALUE'}")
    valid = dotted_keys(schema)
    if key not in valid and not any(v.startswith(key + ".") for v in valid):
        raise ConfigError(f"unknown config key '{key}'", path=source, fix="valid keys: " + ", ".join(valid))
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"value for '{key}' is not valid YAML ({exc})", path=source) from exc
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{part}' in '{key}' is not a section", path=source)
    node[parts[-1]] = value


def validate(data: dict, schema: type[T], source: str) -> T:
    """Validate a dict against ``schema``, turning pydantic's report into one clear ConfigError."""
    _refuse_moved_keys(data, schema, source)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            elif err["type"] == "value_error":  # a validator's own sentence: say it without the raw input
                message = err["msg"].removeprefix("Value error, ")
                problems.append(f"'{key}': {message}" if key else message)
            else:
                problems.append(f"'{key}': {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid config: " + "; ".join(problems), path=source,
                          fix="valid keys: " + ", ".join(dotted_keys(schema))) from exc


def _refuse_moved_keys(data: dict, schema: type[BaseModel], source: str) -> None:
    """A key of ``schema.moved_keys`` still in ``data`` is a ConfigError naming its new place."""
    for old, new in getattr(schema, "moved_keys", {}).items():
        *parents, leaf = old.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            section, _, name = new.rpartition(".")
            where = f"under '{section}:' as '{name}:'" if section else f"to the top level as '{name}:'"
            raise ConfigError(f"'{old}' has moved to '{new}'", path=source, fix=f"move it {where}")


def load_config(ref: str | Path | None, schema: type[T], *, default: str,
                overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load, override and validate a config.

    Args:
        ref: a YAML path or shipped config name; ``None`` means ``default``.
        schema: the pydantic model the config must satisfy.
        default: the shipped config used when ``ref`` is None.
        overrides: ``key.sub=value`` strings applied in order.

    Examples:
        >>> from medgen.config import StrictModel, load_config
        >>> class Train(StrictModel):
        ...     lr: float = 1e-3
        >>> class Cfg(StrictModel):
        ...     train: Train = Train()
        >>> _ = Cfg.model_rebuild()  # classes made in a doctest: resolve the postponed annotations
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"; _ = p.write_text("train: {lr: 0.1}")
        >>> load_config(p, Cfg, default="x", overrides=["train.lr=0.5"]).train.lr
        0.5
    """
    text, source = read_config_text(ref if ref is not None else default)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"is not valid YAML ({exc})", path=source) from exc
    if not isinstance(data, dict):
        raise ConfigError("must be a mapping of keys to values", path=source)
    data = copy.deepcopy(data)
    for assignment in overrides:
        apply_override(data, assignment, schema)
    return validate(with_section_defaults(data, schema), schema, source)


def _merge_section(base: dict, given: dict, section: type[BaseModel]) -> dict:
    """``given`` laid over ``base`` key by key, recursing into nested sections (lists/dicts replace)."""
    out = dict(base)
    for key, value in given.items():
        field = section.model_fields.get(key)
        if (field is not None and _is_section(field.annotation) and isinstance(value, dict)
                and isinstance(base.get(key), dict)):
            out[key] = _merge_section(base[key], value, field.annotation)
        else:
            out[key] = value
    return out


def with_section_defaults(data: dict, schema: type[BaseModel]) -> dict:
    """``data`` with every partly given section completed from the schema's *default instance*.

    Pydantic builds a section given as a mapping from its class defaults, not from the field's
    default instance, so where the two differ (``preprocess.mr`` defaults to
    ``PreprocessConfig(modality="mr")``) a YAML or ``--set`` naming one key of the section would
    silently lose the others. Laying the given keys over the default instance's values keeps a
    shipped YAML free to state only what differs from the schema.

    Examples:
        >>> from medgen.config import StrictModel
        >>> class Recipe(StrictModel):
        ...     modality: str = "ct"
        ...     spacing: float = 1.0
        >>> class Cfg(StrictModel):
        ...     mr: Recipe = Recipe(modality="mr")
        >>> _ = Cfg.model_rebuild()
        >>> with_section_defaults({"mr": {"spacing": 2.0}}, Cfg)
        {'mr': {'modality': 'mr', 'spacing': 2.0}}
    """
    out = dict(data)
    for name, field in schema.model_fields.items():
        given = out.get(name)
        if not (_is_section(field.annotation) and isinstance(given, dict)):
            continue
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            out[name] = _merge_section(default.model_dump(mode="python"), given, field.annotation)
        else:
            out[name] = with_section_defaults(given, field.annotation)
    return out


def with_value(config: T, key: str, value: Any, source: str) -> T:
    """``config`` with the dotted ``key`` set to ``value``, validated like any config (e.g. ``--max-steps``).

    Raises:
        ConfigError: the value breaks the schema, naming ``source`` (the command-line flag).
    """
    data = config.model_dump(mode="python")
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
    return validate(data, type(config), source)


def config_hash(config: BaseModel) -> str:
    """A short stable hash of a resolved config (used to know when cached work is stale)."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(config: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """``{'a.b': value}`` view of a config, e.g. for MLflow params."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
