"""Argument groups shared by several subcommands (kept here so each command module stays small)."""

from __future__ import annotations

from medgen.cli import add_config, add_device, add_verbosity, subparser  # noqa: F401 - re-exported


def add_training_args(parser, default_config: str) -> None:
    """``-c``, ``--set``, ``-o RUN_DIR``, ``--max-steps``, ``--resume``, ``--device``, ``--seed``."""
    add_config(parser, default_config)
    parser.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run folder (checkpoints, bundle, logs)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the configured number of steps")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in RUN_DIR")
    parser.add_argument("--seed", type=int, default=None, help="override the configured seed")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_device(parser, precision=False)
