"""The schemas are the single source of defaults: ``TranslatorConfig()`` (and the segmenter's and the
generator's) equals the shipped config the CLI loads by default; one seed key, ``train.seed``."""

from __future__ import annotations

import importlib

import pytest

from medgen.config import flatten, load_config
from medgen.errors import ConfigError

#: (schema "module:Class", the CLI module whose DEFAULT_CONFIG names the shipped default)
DEFAULTS = [
    ("medgen.training.translator:TranslatorConfig", "medgen.cli.train_translator"),
    ("medgen.training.segmenter:SegmenterConfig", "medgen.cli.train_segmenter"),
    ("medgen.training.generator:GeneratorConfig", "medgen.cli.train_generator"),
]


def _schema(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def differences(a, b) -> list[str]:
    """Dotted keys whose values differ between two configs, ``key: a != b``."""
    fa, fb = flatten(a), flatten(b)
    return [f"{k}: {fa.get(k)!r} != {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


@pytest.mark.parametrize("schema_ref, cli_module", DEFAULTS, ids=[d[0].split(":")[1] for d in DEFAULTS])
def test_schema_defaults_equal_the_shipped_default_config(schema_ref, cli_module):
    schema = _schema(schema_ref)
    shipped = importlib.import_module(cli_module).DEFAULT_CONFIG
    loaded = load_config(None, schema, default=shipped)
    assert differences(schema(), loaded) == [], f"{schema.__name__}() differs from the shipped {shipped}"
    # the comparison sees a change of one value (so the assertion above can fail)
    changed = load_config(None, schema, default=shipped, overrides=["train.seed=12345"])
    assert differences(schema(), changed) == ["train.seed: 0 != 12345"]


@pytest.mark.parametrize("schema_ref, cli_module", DEFAULTS, ids=[d[0].split(":")[1] for d in DEFAULTS])
def test_top_level_seed_is_one_clear_error_naming_train_seed(tmp_path, schema_ref, cli_module):
    schema = _schema(schema_ref)
    path = tmp_path / "old.yaml"
    path.write_text("seed: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, schema, default="unused")
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{path}: ") and "train.seed" in line and ". Fix: " in line
    shipped = importlib.import_module(cli_module).DEFAULT_CONFIG
    with pytest.raises(ConfigError, match=r"^--set: .*train\.seed"):
        load_config(None, schema, default=shipped, overrides=["seed=3"])
    (tmp_path / "new.yaml").write_text("train:\n  seed: 3\n")
    assert load_config(tmp_path / "new.yaml", schema, default="unused").train.seed == 3
