"""``medgen train translator``: train an MR -> CT translator (unpaired CycleGAN, or synthesis-supervised)."""

from __future__ import annotations

from medgen.cli.common import add_training_args, subparser, training_overrides
from medgen.errors import InputError

DEFAULT_CONFIG = "translator/cyclegan_25d"


def register(trainers) -> None:
    parser = subparser(
        trainers, "translator", "train an MR->CT translator (CycleGAN or synthesis-supervised; 2D, 2.5D or 3D)",
        "medgen train translator --mr mr_scans/ --ct ct_scans/ -o runs/translator --max-steps 200\n"
        "  medgen train translator -c translator/synth_25d --ct ct_scans/ [--ct-labels labels/] [--mr mr_scans/] "
        "-o runs/synth",
        description="Train an MR->CT translator. CycleGAN configs learn from unpaired MR and CT scans; synth "
                    "configs (objective: synth) learn from exact pairs rendered from the CTs (random MR-like "
                    "contrast of their label/HU tissue classes, the CT as target), plus CycleGAN terms on real MR "
                    "when --mr is given. Raw volumes are preprocessed "
                    "with the config's recipes (preprocess.mr / preprocess.ct); manifests from medgen preprocess "
                    "are used as they are. Writes RUN_DIR/checkpoints, metrics.jsonl, samples/*.png and "
                    "RUN_DIR/bundle (registered in MLflow as medgen-translator). Shipped configs: "
                    "translator/cyclegan_2d, translator/cyclegan_25d (default), translator/cyclegan_3d, "
                    "translator/synth_25d, translator/synth_3d.")
    add_training_args(parser, DEFAULT_CONFIG)
    parser.add_argument("--mr", nargs="+", default=None, metavar="INPUT",
                        help="MR volumes: files, folders, DICOM series folders or a manifest.csv (required by "
                             "CycleGAN configs; optional with synth configs, where they adapt G to the scanner)")
    parser.add_argument("--ct", nargs="+", default=None, metavar="INPUT",
                        help="CT volumes (unpaired with the MRs): files, folders, DICOM folders or a manifest.csv")
    parser.add_argument("--ct-labels", nargs="+", default=None, metavar="INPUT",
                        help="synth configs: label maps of the CTs (paired by case id or order); their organs become "
                             "render classes. Without them the classes are the CTs' HU tissue bands")
    parser.add_argument("--val-mr", nargs="+", default=None, metavar="INPUT",
                        help="optional paired validation MRs (MAE/PSNR/SSIM in HU against --val-ct)")
    parser.add_argument("--val-ct", nargs="+", default=None, metavar="INPUT",
                        help="the CTs paired with --val-mr, same order")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from medgen.config import load_config
    from medgen.pipelines.train_translator import train_translator
    from medgen.training.translator import TranslatorConfig

    config = load_config(args.config, TranslatorConfig, default=DEFAULT_CONFIG, overrides=training_overrides(args))
    if bool(args.val_mr) != bool(args.val_ct):
        raise InputError("--val-mr and --val-ct must be given together", fix="pass both, paired in the same order")
    from medgen.pipelines.train_translator import check_translator_inputs
    check_translator_inputs(config, args.mr, args.ct, args.ct_labels)
    bundle = train_translator(config, mr_inputs=args.mr, ct_inputs=args.ct, run_dir=args.output,
                              max_steps=args.max_steps, resume=args.resume, device=args.device,
                              val_mr=args.val_mr, val_ct=args.val_ct, mlflow=not args.no_mlflow,
                              ct_labels=args.ct_labels)
    print(bundle)
    return 0
