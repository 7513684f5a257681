"""``medgen phantoms``: write paired CT/MR/label abdomen phantoms (deterministic per seed)."""

from __future__ import annotations

from medgen.cli import subparser


def register(sub) -> None:
    parser = subparser(
        sub, "phantoms", "write procedural abdomen phantoms (paired CT, MR, labels)",
        "medgen phantoms -o phantoms -n 4 --seed 0 --shape 96 96 48 --spacing 2 2 3 --mr-weighting t2",
        description="Write N synthetic abdomen phantoms as OUT_DIR/phantom_000/{ct,mr,labels}.nii.gz ... plus "
                    "OUT_DIR/label_names.json (label id -> name). Case i uses seed SEED + i, so the output is "
                    "identical every time. CT is in HU, MR in arbitrary units (T1- or T2-like), labels uint8.")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder")
    parser.add_argument("-n", "--num", type=int, default=4, metavar="N", help="number of phantoms")
    parser.add_argument("-s", "--seed", type=int, default=0, help="seed of the first phantom")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 48), metavar=("X", "Y", "Z"),
                        help="grid size in voxels (RAS axes)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.0, 2.0, 3.0), metavar=("SX", "SY", "SZ"),
                        help="voxel size in mm")
    parser.add_argument("--mr-weighting", choices=("t1", "t2"), default="t1", help="MR contrast")
    parser.add_argument("--overwrite", action="store_true", help="replace existing phantom files")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from medgen.pipelines.phantoms import run_phantoms

    run_phantoms(args.output, n=args.num, seed=args.seed, shape=tuple(args.shape), spacing=tuple(args.spacing),
                 mr_weighting=args.mr_weighting, overwrite=args.overwrite)
    return 0
