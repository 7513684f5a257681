"""``medgen train generator``: train a label map -> CT/MR anatomy generator and export it as a bundle."""

from __future__ import annotations

from medgen.cli.common import add_training_args, subparser

DEFAULT_CONFIG = "generator/label2ct"


def register(trainers) -> None:
    parser = subparser(
        trainers, "generator", "train an anatomy generator (label map -> CT or MR; SPADE conditional GAN)",
        "medgen train generator -c generator/label2ct --images ct/ --labels seg/ --label-names names.json -o runs/gen",
        description="Train a label-conditioned image generator on paired images and label maps. Writes "
                    "RUN_DIR/checkpoints, RUN_DIR/metrics.jsonl, RUN_DIR/samples (label | generated | real) and "
                    "RUN_DIR/bundle (with the training label maps, so 'medgen generate' can sample new anatomies). "
                    "Use -c generator/label2mr for MR images.")
    add_training_args(parser, DEFAULT_CONFIG)
    parser.add_argument("--images", nargs="+", required=True, metavar="IMG",
                        help="images (CT in HU, or MR): files, folders, DICOM series folders or a manifest")
    parser.add_argument("--labels", nargs="+", required=True, metavar="LBL",
                        help="label maps, one per image (paired by case id, else by position)")
    parser.add_argument("--label-names", default=None, metavar="JSON",
                        help='id -> name JSON ({"1": "liver", ...}); FILE#KEY picks one entry of a class map')
    parser.set_defaults(handler=run)


def run(args) -> int:
    from medgen.config import load_config
    from medgen.pipelines.train_generator import train_generator
    from medgen.training.generator import GeneratorConfig

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    config = load_config(args.config, GeneratorConfig, default=DEFAULT_CONFIG, overrides=overrides)
    bundle = train_generator(config, images=args.images, labels=args.labels, output=args.output,
                             label_names=args.label_names, max_steps=args.max_steps, resume=args.resume,
                             device=args.device, mlflow=not args.no_mlflow)
    print(bundle)
    return 0
