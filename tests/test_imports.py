"""The import contract: every module imports, every CLI module's subcommand reaches ``medgen --help``.

medgen imports its own modules plainly (no ``except ImportError`` fallback around them), so a
broken or renamed module fails here, by name, instead of silently dropping a subcommand from
``--help``. The layering between packages is checked by ``lint-imports`` (``make lint``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import subprocess
import sys

import pytest

import medgen
import medgen.cli
import medgen.pipelines

#: ``python -m medgen`` runs the command line when imported.
NOT_IMPORTABLE = {"medgen.__main__"}


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(medgen.__path__, "medgen.")]
    # pipelines/ installs as medgen.pipelines from its own folder (pyproject package-dir).
    names += [m.name for m in pkgutil.walk_packages(medgen.pipelines.__path__, "medgen.pipelines.")]
    return sorted(set(names) - NOT_IMPORTABLE)


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    """Every subcommand path (``"train translator"``) reachable from ``parser``."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.add(prefix + name)
                found |= _subcommands(child, prefix + name + " ")
    return found


def _cli_modules_with_register() -> list:
    modules = [importlib.import_module(m.name) for m in pkgutil.iter_modules(medgen.cli.__path__, "medgen.cli.")]
    return [m for m in modules if callable(getattr(m, "register", None))]


def test_walk_finds_the_packages():
    names = _modules()
    for expected in ("medgen.cli.train", "medgen.io.writers", "medgen.pipelines.batch", "medgen.distributed"):
        assert expected in names


@pytest.mark.parametrize("name", _modules())
def test_module_imports(name):
    importlib.import_module(name)


def test_every_cli_module_registers_its_subcommand():
    """The names each ``medgen.cli`` module registers all appear in the real parser's tree."""
    registered = _subcommands(medgen.cli.build_parser())
    modules = _cli_modules_with_register()
    assert len(modules) >= 10
    for module in modules:
        sub = argparse.ArgumentParser().add_subparsers()
        module.register(sub)
        assert sub.choices, f"{module.__name__}.register added no subcommand"
        # medgen.cli.train_<model> registers under ``medgen train``; every other module at the top.
        parent = "train " if module.__name__.rsplit(".", 1)[-1].startswith("train_") else ""
        missing = sorted(parent + name for name in sub.choices if parent + name not in registered)
        assert not missing, f"{module.__name__} defines {missing} but 'medgen --help' does not list it"


def test_help_lists_every_top_level_command():
    parser = medgen.cli.build_parser()
    text = parser.format_help()
    top = {p for p in _subcommands(parser) if " " not in p}
    assert {"train", "translate", "segment", "segment-mr", "demo"} <= top
    for name in top:
        assert name in text


def test_train_has_every_trainer():
    assert {"train translator", "train segmenter", "train generator"} <= _subcommands(medgen.cli.build_parser())


@pytest.mark.parametrize("code", [
    "import sys, medgen.config; assert 'torch' not in sys.modules, 'medgen.config imported torch'",
    "import sys, medgen.cli; medgen.cli.build_parser(); assert 'torch' not in sys.modules, '--help imported torch'",
])
def test_light_imports_do_not_load_torch(code):
    """Config schemas and ``medgen --help`` load without torch (fast, and usable without a GPU stack)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
