"""``medgen segment``: masks from a segmenter applied directly (no translation), e.g. on CT."""

from __future__ import annotations

from medgen.cli import add_device, subparser
from medgen.cli.common import add_batch_args, add_tta, finish_batch


def register(sub) -> None:
    parser = subparser(
        sub, "segment", "segment volumes (e.g. CT) directly with a segmenter",
        "medgen segment -i ct.nii.gz -o mask.nii.gz -m runs/segmenter",
        description="Segment a volume (file or DICOM series folder) with any supported segmenter and write the "
                    "mask on the input's exact grid plus <mask>.labels.json. With -i a folder, manifest or several "
                    "inputs and -o a folder, every volume is segmented independently to <case>.nii.gz "
                    "(--workers N processes): failures are reported in segment_summary.json, finished volumes are "
                    "skipped on rerun, the exit code is 1 if any volume failed. Each call is one MLflow run.")
    parser.add_argument("-i", "--input", nargs="+", required=True, metavar="IMAGE",
                        help="volume file, DICOM series folder, folder of volumes, manifest CSV, or DICOMweb URL "
                             "http(s)://HOST:PORT/ROOT/studies/UID[/series/UID] (a study: each --modality series)")
    parser.add_argument("-o", "--output", required=True, metavar="MASK",
                        help="mask file (.nii.gz/.nrrd/.mha) for one volume, or an output folder for many")
    parser.add_argument("-m", "--segmenter", "--model", dest="segmenter", required=True, metavar="SEGMENTER",
                        help="medgen run/bundle dir, MLflow URI, MONAI bundle folder, TorchScript file (+ sidecar), "
                             "or totalsegmentator[:task][:fast]")
    parser.add_argument("--trust-bundle", action="store_true",
                        help="allow a MONAI bundle's config expressions to run (only for bundles you trust)")
    parser.add_argument("--dicom-seg", nargs="?", const="auto", default=None, metavar="OUT.dcm",
                        help="also write a DICOM SEG referencing the series (DICOM input); in batch mode any value "
                             "turns it on")
    parser.add_argument("--push-seg", action="store_true",
                        help="store each DICOM SEG back into the DICOMweb study it came from (credentials from "
                             "MEDGEN_DICOMWEB_TOKEN or MEDGEN_DICOMWEB_USER/MEDGEN_DICOMWEB_PASSWORD)")
    parser.add_argument("--modality", default="CT", help="series of a DICOMweb study URL to segment")
    parser.add_argument("--series-uid", default=None, help="series to read from a folder holding several")
    add_tta(parser)
    add_batch_args(parser)
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_device(parser, precision=True)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from medgen.pipelines.segment import SegmentOptions, segment

    options = SegmentOptions(segmenter=args.segmenter, trust_bundle=args.trust_bundle, device=args.device,
                             precision=args.precision, overwrite=args.overwrite, series_uid=args.series_uid,
                             tta=args.tta, push_seg=args.push_seg)
    reports = segment(args.input, args.output, options, dicom_seg=args.dicom_seg, workers=args.workers,
                      executor=args.executor,
                      mlflow=not args.no_mlflow, modality=args.modality)
    return finish_batch(reports, "mask")
