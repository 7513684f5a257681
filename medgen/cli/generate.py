"""``medgen generate``: synthetic labelled volumes from a trained anatomy generator."""

from __future__ import annotations

from medgen.cli import add_device, subparser
from medgen.errors import InputError


def register(sub) -> None:
    parser = subparser(
        sub, "generate", "generate synthetic labelled volumes (image + label map) with an anatomy generator",
        "medgen generate -m runs/gen -n 20 -o synth --seed 0   # then: medgen train segmenter "
        "--images synth/images --labels synth/labels --label-names synth/label_names.json -o runs/seg",
        description="Write N (image, label) NIfTI pairs on the same grid: OUT/images/<case>.nii.gz, "
                    "OUT/labels/<case>.nii.gz, OUT/label_names.json and OUT/datalist.json (MONAI style). New "
                    "anatomies are sampled by smoothly deforming the label maps stored in the model; with --labels "
                    "the given label maps are used as they are (e.g. CT label maps -> labelled synthetic MR with a "
                    "generator trained on MR). The same --seed gives the same files. MODEL: a run folder, a bundle "
                    "folder or an MLflow model URI (models:/medgen-generator/1).")
    parser.add_argument("-m", "--model", required=True, metavar="MODEL", help="run dir, bundle dir or MLflow URI")
    parser.add_argument("-n", "--num", type=int, default=None, metavar="N",
                        help="number of volumes (required unless --labels is given: then one per label map)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same volumes)")
    parser.add_argument("--labels", nargs="+", default=None, metavar="LBL",
                        help="use these label maps instead of sampling new anatomies")
    parser.add_argument("--label-names", default=None, metavar="JSON",
                        help="id -> name JSON of the --labels maps: ids are matched to the model's labels by name")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_device(parser, precision=True)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from medgen.pipelines.generate import generate

    if args.num is None and not args.labels:
        raise InputError("the number of volumes is missing", fix="pass -n N (or --labels LBL... to use given maps)")
    datalist = generate(args.model, args.output, n=args.num, seed=args.seed, labels=args.labels,
                        label_names=args.label_names, device=args.device, precision=args.precision,
                        mlflow=not args.no_mlflow)
    print(datalist)
    return 0
