"""``medgen translate``: MR -> synthetic CT (HU) on the MR's own grid."""

from __future__ import annotations

from medgen.cli import add_device, subparser
from medgen.cli.common import add_batch_args, finish_batch
from medgen.errors import InputError


def register(sub) -> None:
    parser = subparser(
        sub, "translate", "translate an MR scan to a synthetic CT (HU) with a trained translator",
        "medgen translate -i mr.nii.gz -o sct.nii.gz -m runs/translator",
        description="Translate an MR volume (file or DICOM series folder) to a synthetic CT in Hounsfield units, "
                    "written on exactly the MR's grid (shape, spacing, orientation); air (-1000 HU) outside the "
                    "body and the field of view. MODEL: a run folder, a bundle folder or an MLflow model URI "
                    "(models:/medgen-translator/1). With -i a folder, manifest or several scans and -o a folder, "
                    "every scan is translated independently to <case>_sct.nii.gz (--workers N processes): "
                    "failures are reported in translate_summary.json, finished scans are skipped on rerun, "
                    "the exit code is 1 if any scan failed.")
    parser.add_argument("-i", "--input", nargs="+", required=True, metavar="MR",
                        help="MR file, DICOM series folder, folder of scans, manifest CSV, or DICOMweb URL "
                             "http(s)://HOST:PORT/ROOT/studies/UID[/series/UID] (a study: each MR series)")
    parser.add_argument("-o", "--output", required=True, metavar="SCT",
                        help="output file (.nii.gz, .nrrd, .mha) for one scan, or an output folder for many")
    parser.add_argument("-m", "--model", required=True, metavar="MODEL", help="run dir, bundle dir or MLflow URI")
    parser.add_argument("--series-uid", default=None, help="pick one series of a DICOM folder holding several")
    parser.add_argument("--keep-background", action="store_true",
                        help="do not force voxels outside the MR body mask to air")
    add_batch_args(parser, overwrite_help="replace an existing output file, also one medgen did not write")
    add_device(parser, precision=True)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from medgen.pipelines.executor import prestart
    prestart(args.workers, args.executor, preload=("medgen.pipelines.translate",))  # imports side by side
    from medgen.io.readers import VOLUME_SUFFIXES
    from medgen.pipelines.translate import TranslateOptions, translate_batch, translate_file

    mask_background = False if args.keep_background else None
    if args.output.lower().endswith(VOLUME_SUFFIXES):
        if len(args.input) != 1:
            raise InputError(f"{len(args.input)} inputs given but -o is one file", path=args.output,
                             fix="pass an output folder for several scans")
        translate_file(args.input[0], args.output, args.model, device=args.device, precision=args.precision,
                       overwrite=args.overwrite, series_uid=args.series_uid, mask_background=mask_background)
        return 0
    options = TranslateOptions(model=args.model, device=args.device, precision=args.precision,
                               overwrite=args.overwrite, series_uid=args.series_uid, mask_background=mask_background)
    reports = translate_batch(args.input, args.output, options, workers=args.workers, executor=args.executor)
    return finish_batch(reports, "sct")
