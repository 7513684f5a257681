"""``medgen train segmenter``: train a 3D CT segmenter and export it as a bundle."""

from __future__ import annotations

from medgen.cli.common import add_paired_inputs, add_training_args, subparser, training_overrides

DEFAULT_CONFIG = "segmenter/ct_unet"


def register(trainers) -> None:
    parser = subparser(
        trainers, "segmenter", "train a CT segmenter (MONAI UNet/SegResNet, Dice+CE, patch sampling)",
        "medgen train segmenter --images ct/ --labels seg/ --label-names class_map.json#total "
        "--include liver,spleen,kidney_left,kidney_right,vertebrae=vertebrae_* -o runs/seg",
        description="Train a 3D CT segmenter on CT volumes and label maps. Writes RUN_DIR/checkpoints, "
                    "RUN_DIR/metrics.jsonl and RUN_DIR/bundle (registered in MLflow as medgen-segmenter).")
    add_training_args(parser, DEFAULT_CONFIG)
    add_paired_inputs(parser, "CT volumes (files, folders, DICOM series folders or a manifest)",
                      label_names_example=" (e.g. TotalSegmentator's class_map.json#total)",
                      labels_help="; optional with -c segmenter/synth_unet --set synth.target=classes (the CTs' "
                                  "HU tissue bands are then the classes)")
    parser.add_argument("--include", default=None, metavar="NAME,NAME",
                        help="train on these labels only (others become background); glob patterns and "
                             "NEW=PATTERN|PATTERN merge labels, e.g. vertebrae=vertebrae_*")
    parser.add_argument("--val-images", nargs="+", default=None, metavar="IMG", help="held-out validation CTs")
    parser.add_argument("--val-labels", nargs="+", default=None, metavar="LBL", help="their label maps")
    parser.add_argument("--synthetic-images", nargs="+", default=None, metavar="IMG",
                        help="synthetic CTs to train on next to --images (e.g. medgen generate's OUT/images); "
                             "--set data.real_fraction=0.5 draws half the patches from the real cases "
                             "(default: every case equally often)")
    parser.add_argument("--synthetic-labels", nargs="+", default=None, metavar="LBL",
                        help="their label maps (e.g. OUT/labels)")
    parser.add_argument("--init-from", default=None, metavar="MODEL",
                        help="start from this medgen segmenter's weights (fine-tuning; same network settings and "
                             "labels), e.g. one trained on synthetic volumes, then fine-tuned here on the real ones; "
                             "same as --set train.init_from=MODEL")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from medgen.config import load_config
    from medgen.training.segmenter import SegmenterConfig
    from medgen.pipelines.train_segmenter import train_segmenter

    overrides = training_overrides(args)
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    config = load_config(args.config, SegmenterConfig, default=DEFAULT_CONFIG, overrides=overrides)
    include = [s.strip() for s in args.include.split(",") if s.strip()] if args.include else None
    bundle = train_segmenter(config, images=args.images, labels=args.labels, output=args.output,
                             label_names=args.label_names, include=include, val_images=args.val_images,
                             val_labels=args.val_labels, synthetic_images=args.synthetic_images,
                             synthetic_labels=args.synthetic_labels, max_steps=args.max_steps, resume=args.resume,
                             device=args.device, mlflow=not args.no_mlflow)
    print(bundle)
    return 0
