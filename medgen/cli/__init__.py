"""The ``medgen`` command: one entry point with a subcommand per pipeline.

Each subcommand lives in its own module under :mod:`medgen.cli` and exposes
``register(subparsers)``; the heavy imports (torch, MONAI) happen inside the handlers so that
``medgen --help`` is instant. A :class:`medgen.errors.MedgenError` becomes one line on stderr and a
non-zero exit code.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from medgen import __version__
from medgen.errors import MedgenError

# Modules under medgen.cli that define subcommands, in the order --help lists them.
COMMAND_MODULES = ("phantoms", "preprocess", "train", "translate", "segment", "segment_mr", "generate", "synthesize",
                   "evaluate", "demo")

log = logging.getLogger("medgen")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps example blocks as written and shows defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medgen", formatter_class=HelpFormatter,
        description="Medical-imaging modality translation: preprocess CT/MR, train MR->CT translators, "
                    "segment MR scans with CT models, generate labelled synthetic volumes.",
        epilog="Example:\n  medgen demo --quick -o medgen-demo\n\nRun 'medgen COMMAND --help' for each command.")
    parser.add_argument("--version", action="version", version=f"medgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"medgen.cli.{name}").register(sub)
    return parser


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``-v/--verbose``."""
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_config(parser: argparse.ArgumentParser, default: str) -> None:
    """``-c/--config`` (path or shipped name) and repeatable ``--set key.sub=value``."""
    parser.add_argument("-c", "--config", default=None,
                        help=f"config file or shipped config name (default: {default})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=0.0001 (repeatable)")


def add_device(parser: argparse.ArgumentParser, precision: bool = True) -> None:
    """``--device auto|cpu|cuda`` and optionally ``--precision auto|fp32|bf16|fp16``."""
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="compute device")
    if precision:
        parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                            help="inference precision (auto: bf16 where the hardware supports it, else fp32)")


def subparser(sub, name: str, help_text: str, example: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand parser with the shared formatter, an example epilog and -q/-v."""
    parser = sub.add_parser(name, help=help_text, description=description or help_text,
                            epilog=f"Example:\n  {example}", formatter_class=HelpFormatter)
    add_verbosity(parser)
    return parser


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        force=True)
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL", "highdicom", "git", "dicomweb_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    setup_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    try:
        code = args.handler(args)
    except MedgenError as exc:
        log.error("%s", exc.one_line())
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except OSError as exc:  # disk full, no permission, a path under a file: one line, not a traceback
        log.error("%s", os_error_line(exc))
        log.debug("details", exc_info=True)
        return 2
    return int(code or 0)


#: The fix to print for operating-system errors that reach the command line.
_OS_FIXES = {
    errno.ENOSPC: "free disk space or choose an output folder on another disk",
    errno.EDQUOT: "free disk space (quota exceeded) or choose an output folder on another disk",
    errno.EACCES: "choose a folder you can write to, or fix its permissions",
    errno.EPERM: "choose a folder you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only; choose an output folder on a writable disk",
    errno.ENOTDIR: "a parent of this path is a file, not a folder; choose another path",
    errno.ENOENT: "check the path",
}


def os_error_line(exc: OSError) -> str:
    """An :class:`OSError` as medgen's one-line ``path: problem. Fix: ...`` message."""
    path = exc.filename if exc.filename is not None else None
    message = exc.strerror or str(exc)
    fix = _OS_FIXES.get(exc.errno, "run again with -v for details")
    return MedgenError(message, path=path, fix=fix).one_line()


if __name__ == "__main__":
    sys.exit(main())
