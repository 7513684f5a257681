"""``medgen segment-mr``: masks on MR scans from a CT segmenter, through synthetic CT."""

from __future__ import annotations

from medgen.cli import add_device, subparser
from medgen.cli.common import add_batch_args, add_tta, finish_batch


def register(sub) -> None:
    parser = subparser(
        sub, "segment-mr", "segment MR scans with a CT segmenter via synthetic CT",
        "medgen segment-mr -i mr.nii.gz -o mask.nii.gz --translator runs/translator --segmenter runs/segmenter "
        "--qc qc.png",
        description="MR -> synthetic CT (translator) -> CT segmenter -> mask on the MR's exact grid, plus "
                    "<mask>.labels.json. --translator none|histogram runs the baselines (segmenter on the "
                    "normalised / histogram-matched MR). With -i a folder or manifest and -o a folder, every scan "
                    "is processed independently: failures are reported, finished scans are skipped on rerun, "
                    "the exit code is 1 if any scan failed.")
    parser.add_argument("-i", "--input", nargs="+", required=True, metavar="MR",
                        help="MR file, DICOM series folder, folder of scans, manifest CSV, or DICOMweb URL "
                             "http(s)://HOST:PORT/ROOT/studies/UID[/series/UID] (a study: each MR series)")
    parser.add_argument("-o", "--output", required=True, metavar="MASK",
                        help="mask file (.nii.gz/.nrrd/.mha) for one scan, or an output folder for many")
    parser.add_argument("--translator", required=True, metavar="MODEL",
                        help="translator run dir, bundle dir or MLflow URI; or 'none' / 'histogram' (baselines)")
    parser.add_argument("--segmenter", required=True, metavar="MODEL",
                        help="medgen run/bundle dir, MLflow URI, MONAI bundle folder, TorchScript file (+ sidecar), "
                             "or totalsegmentator[:task][:fast]")
    parser.add_argument("--trust-bundle", action="store_true",
                        help="allow a MONAI bundle's config expressions to run (only for bundles you trust)")
    parser.add_argument("--ct-reference", default=None, metavar="CT",
                        help="CT whose histogram the 'histogram' baseline matches (default: the segmenter's own)")
    parser.add_argument("--dicom-seg", nargs="?", const="auto", default=None, metavar="OUT.dcm",
                        help="also write a DICOM SEG referencing the MR series (DICOM input); in batch mode "
                             "any value turns it on")
    parser.add_argument("--qc", nargs="?", const="auto", default=None, metavar="OUT.png",
                        help="also write a QC picture (MR | synthetic CT | mask on MR, three planes)")
    parser.add_argument("--save-sct", nargs="?", const="auto", default=None, metavar="SCT",
                        help="also write the synthetic CT (HU, MR grid)")
    parser.add_argument("--push-seg", action="store_true",
                        help="DICOMweb input: store the DICOM SEG back into the study (and, with --save-sct, the "
                             "synthetic CT as a new series); credentials from MEDGEN_DICOMWEB_TOKEN or "
                             "MEDGEN_DICOMWEB_USER/MEDGEN_DICOMWEB_PASSWORD")
    parser.add_argument("--series-uid", default=None, help="series to read from a folder holding several")
    add_tta(parser)
    parser.add_argument("--agreement", action="store_true",
                        help="reliability flag without ground truth: run the chain again on a perturbed copy of the "
                             "MR (contrast and position) and report per-structure agreement (Dice between the two "
                             "masks) in labels.json, the summary and the QC picture; low agreement is flagged")
    parser.add_argument("--agreement-threshold", type=float, default=0.7,
                        help="agreement below which a case or structure is flagged")
    add_batch_args(parser)
    add_device(parser, precision=True)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from medgen.pipelines.segment_mr import ChainOptions, segment_mr

    options = ChainOptions(translator=args.translator, segmenter=args.segmenter, trust_bundle=args.trust_bundle,
                           device=args.device, precision=args.precision, overwrite=args.overwrite,
                           series_uid=args.series_uid, ct_reference=args.ct_reference, tta=args.tta,
                           push_seg=args.push_seg, push_sct=args.push_seg and bool(args.save_sct),
                           agreement=args.agreement, agreement_threshold=args.agreement_threshold)
    reports = segment_mr(args.input, args.output, options, save_sct=args.save_sct, qc=args.qc,
                         dicom_seg=args.dicom_seg, workers=args.workers, executor=args.executor)
    return finish_batch(reports, "mask")
