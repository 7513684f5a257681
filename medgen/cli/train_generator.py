"""``medgen train generator``: train a label map -> CT/MR anatomy generator and export it as a bundle."""

from __future__ import annotations

from medgen.cli.common import add_paired_inputs, add_training_args, subparser, training_overrides

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
    add_paired_inputs(parser, "images (CT in HU, or MR): files, folders, DICOM series folders or a manifest")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from medgen.config import load_config
    from medgen.pipelines.train_generator import train_generator
    from medgen.training.generator import GeneratorConfig

    config = load_config(args.config, GeneratorConfig, default=DEFAULT_CONFIG, overrides=training_overrides(args))
    bundle = train_generator(config, images=args.images, labels=args.labels, output=args.output,
                             label_names=args.label_names, max_steps=args.max_steps, resume=args.resume,
                             device=args.device, mlflow=not args.no_mlflow)
    print(bundle)
    return 0
