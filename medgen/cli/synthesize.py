"""``medgen synthesize``: MR-like renderings of random contrast from CT label maps (and CTs)."""

from __future__ import annotations

from medgen.cli import add_config, subparser

DEFAULT_CONFIG = "synth/abdomen"


def register(sub) -> None:
    parser = subparser(
        sub, "synthesize", "render labelled images of random contrast from CT label maps (domain randomisation)",
        "medgen synthesize --labels ct_labels/ --ct ct_scans/ -o renders -n 20 --seed 0",
        description="Write N renderings of the given anatomy: per-class intensities of random order, partial-volume "
                    "blur, random slice thickness (1-8 mm) and in-plane resolution, bias field, gamma and noise, after "
                    "a random smooth warp (labels warped exactly with the image). With --ct, voxels without a label "
                    "get tissue classes from the CT's HU bands (fat, fluid, soft tissue, bone, air). Outputs: "
                    "OUT/images, OUT/labels, OUT/datalist.json, OUT/qc_synthesized.png (and label_names.json with "
                    "--label-names). These are the images `-c segmenter/synth_unet` trains on.")
    parser.add_argument("--labels", nargs="+", required=True, metavar="LBL", help="label map files or folders")
    parser.add_argument("--ct", nargs="+", default=None, metavar="CT",
                        help="the CTs of the label maps (paired by case id or order): tissue classes from HU")
    parser.add_argument("--label-names", default=None, metavar="JSON", help="id -> name JSON (FILE#KEY for a class map)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="new output folder")
    parser.add_argument("-n", "--num", type=int, required=True, metavar="N", help="number of renderings")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the config's; same seed, same files)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_config(parser, DEFAULT_CONFIG)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from medgen.config import load_config
    from medgen.data.synthesis import SynthesisConfig
    from medgen.pipelines.synthesize import synthesize

    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    config = load_config(args.config, SynthesisConfig, default=DEFAULT_CONFIG, overrides=overrides)
    print(synthesize(config, labels=args.labels, output=args.output, n=args.num, cts=args.ct,
                     label_names=args.label_names, mlflow=not args.no_mlflow))
    return 0
