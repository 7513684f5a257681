"""``medgen evaluate segmentation|translation|generator``: metrics of predictions against references."""

from __future__ import annotations

from medgen.cli import subparser


def register(sub) -> None:
    parser = sub.add_parser("evaluate", help="evaluate segmentations (Dice, HD95) or synthetic CTs (MAE, PSNR, SSIM)",
                            description="Compare a prediction with a reference; predictions on another grid are "
                                        "resampled onto the reference grid in world coordinates.")
    kinds = parser.add_subparsers(dest="evaluation", metavar="KIND")
    seg = subparser(kinds, "segmentation", "Dice and HD95 per label, matched by label name",
                    "medgen evaluate segmentation --pred mask.nii.gz --ref truth.nii.gz --ref-labels names.json "
                    "-o scores.csv")
    seg.add_argument("--pred", required=True, help="predicted label map")
    seg.add_argument("--ref", required=True, help="reference label map")
    seg.add_argument("--pred-labels", default=None, metavar="JSON",
                     help="prediction id->name JSON (FILE#KEY for a class map; default: <pred>.labels.json)")
    seg.add_argument("--ref-labels", default=None, metavar="JSON", help="reference id->name JSON (FILE#KEY allowed)")
    seg.add_argument("-o", "--output", default=None, metavar="OUT", help=".json or .csv (default: JSON on stdout)")
    seg.add_argument("--overwrite", action="store_true")
    seg.set_defaults(handler=run_segmentation)
    tr = subparser(kinds, "translation", "MAE (HU), PSNR and SSIM of a synthetic CT",
                   "medgen evaluate translation --pred sct.nii.gz --ref ct.nii.gz --mask body.nii.gz -o metrics.json")
    tr.add_argument("--pred", required=True, help="synthetic CT (HU)")
    tr.add_argument("--ref", required=True, help="reference CT (HU)")
    tr.add_argument("--mask", default=None, help="evaluate inside this mask only (non-zero voxels)")
    tr.add_argument("--data-range", type=float, default=2000.0, help="HU range for PSNR/SSIM")
    tr.add_argument("-o", "--output", default=None, metavar="OUT", help=".json or .csv (default: JSON on stdout)")
    tr.add_argument("--overwrite", action="store_true")
    tr.set_defaults(handler=run_translation)
    gen = subparser(kinds, "generator", "realism of generated volumes: per-label Wasserstein distance and a "
                    "Frechet distance (fixed seeded random-conv features)",
                    "medgen evaluate generator --generated synth/ --real-images ct/ --real-labels seg/ -o realism.json")
    gen.add_argument("--generated", required=True, metavar="DIR", help="a folder written by medgen generate")
    gen.add_argument("--real-images", required=True, nargs="+", metavar="IMG", help="real images (files or folders)")
    gen.add_argument("--real-labels", required=True, nargs="+", metavar="LBL", help="their label maps")
    gen.add_argument("-o", "--output", default=None, metavar="OUT.json", help="JSON file (default: stdout)")
    gen.add_argument("--overwrite", action="store_true")
    gen.set_defaults(handler=run_generator)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def run_segmentation(args) -> int:
    from medgen.pipelines.evaluate import evaluate_segmentation
    return _report(evaluate_segmentation(args.pred, args.ref, pred_labels=args.pred_labels,
                                         ref_labels=args.ref_labels), args)


def run_translation(args) -> int:
    from medgen.pipelines.evaluate import evaluate_translation
    return _report(evaluate_translation(args.pred, args.ref, mask_path=args.mask, data_range=args.data_range), args)


def _report(report, args) -> int:
    """Write ``report`` to ``-o`` (atomically), or print it when no ``-o`` was given."""
    from medgen.pipelines.evaluate import write_report
    text = write_report(report, args.output, overwrite=args.overwrite)
    if args.output is None:
        print(text)
    return 0


def run_generator(args) -> int:
    import json

    from medgen.io.atomic import check_output_path, write_text_atomic
    from medgen.pipelines.generate import realism_report
    report = realism_report(args.generated, args.real_images, args.real_labels)
    text = json.dumps(report, indent=2)
    if args.output is None:
        print(text)
    else:
        write_text_atomic(check_output_path(args.output, overwrite=args.overwrite), text)
    return 0
