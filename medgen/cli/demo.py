"""``medgen demo``: the whole product on generated phantoms, with a report and MLflow runs."""

from __future__ import annotations

import logging
import os

from medgen.cli import add_config, subparser
from medgen.errors import InputError

log = logging.getLogger("medgen.demo")


def register(sub) -> None:
    parser = subparser(
        sub, "demo", "run the end-to-end demo on generated phantoms (no download, no GPU)",
        "medgen demo --quick -o medgen-demo",
        description="Generate phantoms, preprocess, train a CT segmenter, an MR->CT translator and an anatomy "
                    "generator, segment held-out MRs through the chain and the baselines, evaluate, and write "
                    "OUT_DIR/report.html (+ report.md, metrics.json, figures/) and MLflow runs. About 15 minutes "
                    "on a 2-core CPU; --quick about 3 minutes.")
    parser.add_argument("-o", "--output", default="medgen-demo", metavar="OUT_DIR",
                        help="output folder (re-running into a previous demo's folder replaces its results)")
    parser.add_argument("--quick", action="store_true", help="smaller, shorter demo for a first look (config demo/quick)")
    add_config(parser, "demo/full (demo/quick with --quick)")
    parser.add_argument("--sample-data", default=os.environ.get("MEDGEN_SAMPLE_DATA"), metavar="DIR",
                        help="folder of real volumes (e.g. ../shared/data/totalsegmentator): also run the chain on "
                             "its MR scans; taken from the MEDGEN_SAMPLE_DATA environment variable when set")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from pathlib import Path

    from medgen.pipelines.demo import load_demo_config, run_demo
    from medgen.tracking import ui_command

    config = load_demo_config(args.config, quick=args.quick, overrides=args.overrides)
    name = args.config or ("demo/quick" if args.quick else "demo/full")
    out_dir = Path(args.output)
    sample = Path(args.sample_data) if args.sample_data else None
    if sample is not None and not sample.is_dir():
        raise InputError("is not a folder", path=sample, fix="pass a folder of real volumes or leave --sample-data out")
    log.info("medgen demo (%s) -> %s", name, out_dir)
    result = run_demo(out_dir, config, sample_data=sample, config_name=name, mlflow=not args.no_mlflow)
    log.info("report: %s (and %s)", result.report_html.resolve(), result.report_md.name)
    log.info("metrics: %s", result.metrics_path.resolve())
    if result.tracking_uri:
        log.info("MLflow runs: %s", ui_command(result.tracking_uri))
    failed = [n for n, s in result.stages.items() if s.status == "failed"]
    if failed:
        log.error("stages failed: %s (see the report's stage table)", ", ".join(failed))
        return 1
    return 0
