"""``medgen train {translator,segmenter,generator}``: one parent command, a module per trainer.

Each trainer's arguments live in ``medgen.cli.train_<name>`` (``register(subparsers)``).
"""

from __future__ import annotations

import importlib

TRAINERS = ("translator", "segmenter", "generator")


def register(sub) -> None:
    parser = sub.add_parser("train", help="train a translator, segmenter or anatomy generator",
                            description="Train a model; each run writes RUN_DIR/{checkpoints,bundle} and one MLflow run.")
    trainers = parser.add_subparsers(dest="trainer", metavar="MODEL")
    for name in TRAINERS:
        importlib.import_module(f"medgen.cli.train_{name}").register(trainers)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
