"""``medgen preprocess``: a batch of CT or MR volumes -> preprocessed NIfTI, records and a manifest."""

from __future__ import annotations

import logging

from medgen.cli import add_config, subparser
from medgen.cli.common import add_executor
from medgen.errors import InputError

log = logging.getLogger("medgen")

EXAMPLE = """medgen preprocess scans/ -o prep/ct --modality ct --workers 2
  medgen preprocess mr1.nii.gz dicom/mr2/ -o prep/mr --modality mr --set mr.n4=true
  medgen preprocess phantoms/*/ct.nii.gz --labels phantoms/*/labels.nii.gz -o prep/ct --modality ct"""


def register(sub) -> None:
    parser = subparser(
        sub, "preprocess", "preprocess CT or MR volumes (reorient, resample, crop, normalise) into a folder",
        EXAMPLE,
        description="Preprocess CT or MR volumes with the modality's recipe (configs/preprocess/{ct,mr}.yaml): "
                    "reorient to RAS, resample to the target spacing, crop to the body, map intensities to [-1, 1] "
                    "(CT: HU window; MR: optional N4, body percentiles). Writes OUT_DIR/<case>.nii.gz, "
                    "<case>_mask.nii.gz (body mask), <case>_label.nii.gz (with --labels), <case>.json (the record "
                    "that maps results back to the source grid and restores HU) and OUT_DIR/manifest.csv. "
                    "Re-running skips cases already done with the same input and config; a bad case is recorded "
                    "in the manifest and the others carry on (exit code 1 if any case failed). medgen never replaces or removes "
                    "a file it did not write; OUT_DIR must not be (or lie inside) an input folder, and one run at a time "
                    "writes into it.")
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="volume files (.nii.gz, .nrrd, .mha), folders of volumes, DICOM series folders, "
                             "or a CSV with a source_path column")
    parser.add_argument("-i", "--input", dest="more_inputs", action="append", default=[], metavar="INPUT",
                        help="another INPUT (repeatable; same as a positional INPUT)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder")
    parser.add_argument("--modality", choices=("ct", "mr"), default=None,
                        help="modality of the inputs; picks the shipped config preprocess/<modality>")
    add_config(parser, "preprocess/<modality>")
    parser.add_argument("-l", "--labels", nargs="+", default=None, metavar="LABELS",
                        help="label-map files/folders, paired with images by case id (suffixes such as _seg, "
                             "_labels, _ct are ignored; case7/labels.nii.gz pairs with case7/ct.nii.gz)")
    parser.add_argument("-w", "--workers", type=int, default=1, help="parallel worker processes (one case each)")
    add_executor(parser)
    parser.add_argument("--series-uid", default=None, help="pick one series of DICOM folders holding several")
    parser.add_argument("--overwrite", action="store_true",
                        help="also replace files in OUT_DIR that medgen did not write (your own files of the same "
                             "names); without it only medgen's own earlier outputs are replaced")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from medgen.pipelines.executor import prestart
    # first: the pool imports while this process does; a bad address fails here
    prestart(args.workers, args.executor, preload=("medgen.pipelines.preprocess",))

    from medgen.pipelines.preprocess import run_preprocess
    if args.workers < 1:
        raise InputError(f"must be at least 1 (got {args.workers})", path="--workers", fix="pass --workers 1 or more")
    summary = run_preprocess(list(args.inputs) + list(args.more_inputs), args.output, modality=args.modality,
                             config=args.config, overrides=args.overrides, workers=args.workers,
                             overwrite=args.overwrite, series_uid=args.series_uid, labels=args.labels,
                             mlflow=not args.no_mlflow, executor=args.executor)
    lines = summary.lines()
    (log.error if summary.failed else log.info)("%s", lines[0])
    for line in lines[1:]:
        log.error("%s", line)
    return summary.exit_code
