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


def add_paired_inputs(parser, images_help: str, *, label_names_example: str = "", labels_help: str = "") -> None:
    """``--images``, ``--labels`` (paired with them by case id) and ``--label-names`` of a trainer.

    ``labels_help`` (when given) says when ``--labels`` may be left out; otherwise it is required.
    """
    parser.add_argument("--images", nargs="+", required=True, metavar="IMG", help=images_help)
    parser.add_argument("--labels", nargs="+", required=not labels_help, default=None, metavar="LBL",
                        help="label maps, one per image (paired by case id, else by position)" + labels_help)
    parser.add_argument("--label-names", default=None, metavar="JSON",
                        help='id -> name JSON ({"1": "liver", ...}); FILE#KEY picks one entry of a class map'
                             + label_names_example)


def training_overrides(args) -> list[str]:
    """The ``--set`` overrides of a training command, plus ``--seed`` as ``train.seed``."""
    return list(args.overrides) + ([f"train.seed={args.seed}"] if args.seed is not None else [])


def add_batch_args(parser, *, overwrite_help: str = "replace existing outputs (never an input)") -> None:
    """``--workers``, ``--executor`` and ``--overwrite`` of a per-case batch command (:mod:`medgen.pipelines.batch`)."""
    parser.add_argument("--workers", type=int, default=1,
                        help="cases run in parallel (processes; threads with --executor threads)")
    add_executor(parser)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)


def add_tta(parser) -> None:
    """``--tta`` of the commands that run a segmenter (:func:`medgen.inference.segment.average_with_shifted_grid`)."""
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average the segmenter over a second window grid shifted "
                             "by half a stride (2x the segmenter time)")


def add_executor(parser) -> None:
    """``--executor local|threads|dask://HOST:PORT``: where a batch's cases run (:mod:`medgen.pipelines.executor`)."""
    parser.add_argument("--executor", default="local", metavar="EXECUTOR",
                        help="local (default: this machine, --workers processes), threads (--workers threads of "
                             "this process: no worker start-up) or dask://HOST:PORT (each case a task on that "
                             "dask.distributed scheduler; workers must see the same paths)")


def finish_batch(reports, output_key: str) -> int:
    """Print each finished case's output path, log a one-line summary of failures; the exit code.

    Args:
        reports: the ``CaseReport`` list a batch pipeline returns.
        output_key: which of a report's outputs to print (e.g. ``"mask"``, ``"sct"``).
    """
    import logging

    failed = [r for r in reports if r.status == "failed"]
    for r in reports:
        if r.status == "ok":
            print(r.outputs.get(output_key))
    if failed:
        logging.getLogger("medgen").error("%d of %d scans failed: %s", len(failed), len(reports),
                                          "; ".join(f"{r.case_id}: {r.error}" for r in failed[:5]))
        return 1
    return 0
