"""``medgen translate``: MR -> synthetic CT (HU) on the MR's own grid."""

from __future__ import annotations

from medgen.cli import add_device, subparser


def register(sub) -> None:
    parser = subparser(
        sub, "translate", "translate an MR scan to a synthetic CT (HU) with a trained translator",
        "medgen translate -i mr.nii.gz -o sct.nii.gz -m runs/translator",
        description="Translate one MR volume (file or DICOM series folder) to a synthetic CT in Hounsfield units, "
                    "written on exactly the MR's grid (shape, spacing, orientation); air (-1000 HU) outside the "
                    "body and the field of view. MODEL: a run folder, a bundle folder or an MLflow model URI "
                    "(models:/medgen-translator/1).")
    parser.add_argument("-i", "--input", required=True, metavar="MR", help="MR volume file or DICOM series folder")
    parser.add_argument("-o", "--output", required=True, metavar="SCT", help="output file (.nii.gz, .nrrd, .mha)")
    parser.add_argument("-m", "--model", required=True, metavar="MODEL", help="run dir, bundle dir or MLflow URI")
    parser.add_argument("--series-uid", default=None, help="pick one series of a DICOM folder holding several")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--keep-background", action="store_true",
                        help="do not force voxels outside the MR body mask to air")
    add_device(parser, precision=True)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from medgen.pipelines.translate import translate_file

    translate_file(args.input, args.output, args.model, device=args.device, precision=args.precision,
                   overwrite=args.overwrite, series_uid=args.series_uid,
                   mask_background=False if args.keep_background else None)
    return 0
