"""Pipeline: train an anatomy generator (label map -> CT or MR) and export it (one MLflow run).

Read image/label pairs -> RAS, training spacing, label on the image grid -> label channels and
intensity scale (CT window or MR robust maximum) -> conditional-GAN training with the shared loop
(checkpoints, resume, metrics, sample grids ``label | generated | real``) -> export
``RUN_DIR/bundle`` (kind ``generator``, with the training label maps in ``bundle/label_bank/``)
-> register it in MLflow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medgen.errors import InputError
from medgen.training.generator import GeneratorConfig, GeneratorTask
from medgen import distributed
from medgen.data.inputs import collect_pairs
from medgen.data.label_image_pairs import load_pairs
from medgen.data.label_names import read_label_names
from medgen.runtime import seed_everything
from medgen.tracking import start_run, write_run_info
from medgen.training.loop import LoopSettings, run_training
from medgen.training.start import holds_run_folder, start_training

log = logging.getLogger(__name__)


@holds_run_folder("output", "medgen train generator")
def train_generator(config: GeneratorConfig, *, images: list[str | Path], labels: list[str | Path],
                    output: str | Path, label_names: str | Path | dict | None = None, max_steps: int | None = None,
                    resume: bool = False, device: str = "auto", mlflow: bool = True) -> Path:
    """Train and export an anatomy generator; returns the bundle folder.

    Args:
        config: the resolved :class:`~medgen.training.generator.GeneratorConfig`.
        images, labels: paired images (CT in HU or MR) and label maps (files, folders, manifests),
            paired by case id (:func:`medgen.data.inputs.pair_inputs`).
        output: run folder (checkpoints, metrics.jsonl, samples/, bundle/, MLflow store by default).
        label_names: id -> name (dict or JSON file); default ``label_<id>``.
        max_steps: override ``train.steps``.
        resume: continue from the newest checkpoint in ``output``.
    """
    config, output, dev = start_training(config, output, device=device, max_steps=max_steps)
    seed_everything(config.train.seed + distributed.rank())
    names = read_label_names(label_names)
    cases = collect_pairs(images, labels)
    pairs = load_pairs(cases, spacing=config.data.spacing)
    for pair in pairs:
        log.info("case %s: grid %s spacing %s", pair.case_id, pair.image.shape,
                 tuple(round(s, 2) for s in pair.image.spacing))
        if names:  # a label-name file was given: it must name every id (as for the segmenter)
            import numpy as np
            unknown = sorted(int(i) for i in np.unique(pair.label.array) if int(i) != 0 and int(i) not in names)
            if unknown:
                raise InputError(f"has label ids {unknown[:10]} that the label-name file does not name",
                                 path=pair.label.source or pair.case_id,
                                 fix=f"add names for them to {label_names}, or omit --label-names (ids are then "
                                     "named label_<id>)")
    task = GeneratorTask(config, pairs, run_dir=output, label_names=names, device=dev)
    settings = LoopSettings(max_steps=config.train.steps, checkpoint_every=config.train.checkpoint_every,
                            validate_every=config.train.validate_every, log_every=config.train.log_every)
    manifest = output / "training_cases.csv"
    if distributed.is_main_process():
        rows = ["case_id,image,label"] + [f"{i.case_id},{i.path},{lab.path}" for i, lab in cases]
        manifest.write_text("\n".join(rows) + "\n")
    bundle_dir = output / "bundle"
    with start_run("train_generator", output_dir=output, enabled=mlflow) as tracker:
        task.tracker = tracker
        tracker.log_config(config)
        tracker.log_manifest(manifest, name="generator-training")
        tracker.log_params({"n_cases": len(pairs), "n_labels": len(task.channels),
                            "label_names": json.dumps(task.label_names)[:480]})
        last = run_training(task, output, settings, tracker=tracker, resume=resume)
        if distributed.is_main_process():
            task.export(bundle_dir)
            uri = tracker.log_bundle(bundle_dir, config.export.registered_name)
            if uri:
                log.info("registered %s", uri)
            tracker.log_metrics({f"final/{k}": v for k, v in last.items()})
            write_run_info(output, tracker)
    distributed.barrier()
    return bundle_dir
