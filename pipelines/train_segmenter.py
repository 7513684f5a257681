"""Pipeline: train a CT segmenter and export it as a bundle (one MLflow run).

Read image/label pairs (real, plus optional synthetic ones from ``medgen generate``, sampled at
``data.real_fraction``) -> align grids -> remap labels (names, --include) -> prepare at the
model's spacing and HU window -> patch training with the shared loop -> export ``RUN_DIR/bundle``
(kind ``segmenter``: label names, input spacing/scaling, patch size and a CT reference histogram of
the real training CTs for the histogram-matching baseline) -> register it in MLflow as
``medgen-segmenter``. A segmenter that learns the whole render class map (``synth.target:
classes``) is also exported as a tissue-painting translator (``RUN_DIR/translator``, registered as
``<registered_name>-translator``; :mod:`medgen.models.tissue_translator`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medgen.errors import InputError
from medgen.training.segmenter import (
    SegmenterConfig, SegmenterTask, body_quantiles, class_mean_hu, input_spec, plan_labels, prepare_case,
    training_label_names,
)
from medgen import distributed
from medgen.data.inputs import collect_inputs, pair_inputs
from medgen.data.label_names import read_label_names
from medgen.io.readers import read_volume
from medgen.models.bundle import BundleSpec, save_bundle
from medgen.models.tissue_translator import export_tissue_translator
from medgen.runtime import seed_everything
from medgen.tracking import start_run, write_run_info
from medgen.training.loop import LoopSettings, run_training
from medgen.training.start import holds_run_folder, start_training

log = logging.getLogger(__name__)


@holds_run_folder("output", "medgen train segmenter")
def train_segmenter(
    config: SegmenterConfig,
    *,
    images: list[str | Path],
    labels: list[str | Path] | None,
    output: str | Path,
    label_names: str | Path | dict | None = None,
    include: list[str] | None = None,
    val_images: list[str | Path] | None = None,
    val_labels: list[str | Path] | None = None,
    synthetic_images: list[str | Path] | None = None,
    synthetic_labels: list[str | Path] | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    device: str = "auto",
    mlflow: bool = True,
) -> Path:
    """Train and export a CT segmenter; returns the bundle folder.

    Args:
        config: the resolved training config.
        images, labels: CT inputs and their label maps (files, folders or manifests), paired by
            case id (:func:`medgen.data.inputs.pair_inputs`). ``labels`` may be empty when the
            network learns the render class map (``synth.target: classes``): every voxel's class
            is then its HU tissue band (unlabelled CTs train a tissue segmenter / translator).
        output: run folder (checkpoints, metrics, bundle, MLflow store by default).
        label_names: id -> name mapping or JSON file (``FILE#KEY`` for one entry of a class map);
            default: ``label_<id>`` for every id found.
        include: names / patterns of the labels to train on (others become background).
        val_images, val_labels: held-out pairs for validation Dice (else the last
            ``data.val_cases`` real cases, else fit on a training case).
        synthetic_images, synthetic_labels: generated pairs (e.g. ``medgen generate``'s
            ``images``/``labels`` folders) trained on next to the real ones; the share of patches
            drawn from real cases is ``data.real_fraction`` (``None``: every case equally often).
        max_steps: override ``train.steps``.
        resume: continue from the newest checkpoint in ``output``.
    """
    config, output, dev = start_training(config, output, device=device, max_steps=max_steps)
    seed = config.train.seed
    seed_everything(seed + distributed.rank())

    if labels:
        pairs = pair_inputs(collect_inputs(images), collect_inputs(labels))
    elif config.synth.learns_classes:
        pairs = [(image, None) for image in collect_inputs(images)]  # HU tissue bands only
    else:
        raise InputError("no label maps given", path="--labels",
                         fix="pass one label map per CT, or learn the CTs' HU tissue bands alone with "
                             "-c segmenter/synth_unet --set synth.target=classes")
    val_pairs = pair_inputs(collect_inputs(val_images), collect_inputs(val_labels)) if val_images else []
    if bool(synthetic_images) != bool(synthetic_labels):
        raise InputError("synthetic images and labels must be given together", path="--synthetic-images",
                         fix="pass --synthetic-images and --synthetic-labels (e.g. OUT/images and OUT/labels)")
    synth_pairs = (pair_inputs(collect_inputs(synthetic_images), collect_inputs(synthetic_labels))
                   if synthetic_images else [])
    if config.data.real_fraction is not None and not synth_pairs:
        log.warning("data.real_fraction=%s has no effect without synthetic cases", config.data.real_fraction)
    if label_names:
        source_names = read_label_names(label_names)
    else:  # no names given: name every id found in the label maps label_<id>
        ids = set()
        for _, lab_case in pairs + val_pairs + synth_pairs:
            if lab_case is not None:
                ids |= {int(i) for i in np.unique(read_volume(lab_case.path, kind="label").array)}
        source_names = {0: "background", **{i: f"label_{i}" for i in sorted(ids) if i != 0}}
    plan = plan_labels(source_names, include)
    log.info("training classes: %s", plan.names)
    spec = input_spec(config)

    quantiles: list[np.ndarray] = []  # body HU quantiles of the real training CTs (histogram baseline)
    synth = config.synth
    rendered = synth if synth.enabled else None  # the real training CTs are rendered: they need classes
    class_target = synth if synth.learns_classes else None  # every case's target needs its classes
    names = training_label_names(plan, synth)
    cases = _prepare_cases(pairs, spec, plan, quantiles=quantiles, synth=rendered)
    painting = class_mean_hu(cases)  # mean HU per class of the real training CTs (tissue translator)
    # validation scores the same classes the network learns
    val_cases = _prepare_cases(val_pairs, spec, plan, synth=class_target)
    if not cases:
        raise InputError("no training cases", path="--images")
    if not val_cases and config.data.val_cases > 0:
        if config.data.val_cases >= len(cases):
            raise InputError(f"data.val_cases={config.data.val_cases} leaves no training case", path="--set")
        val_cases, cases = cases[-config.data.val_cases:], cases[:-config.data.val_cases]
    cases += _prepare_cases(synth_pairs, spec, plan, synthetic=True, synth=class_target)
    for case in cases:
        present = sorted(int(c) for c in np.unique(case.label) if c)
        log.info("case %s%s: grid %s, classes %s", case.case_id, " (synthetic)" * case.synthetic, case.image.shape,
                 present)

    task = SegmenterTask(config, cases, val_cases, names, device=dev, seed=seed)
    settings = LoopSettings(max_steps=config.train.steps, checkpoint_every=config.train.checkpoint_every,
                            validate_every=config.train.validate_every, log_every=config.train.log_every)
    manifest = output / "training_cases.csv"
    if distributed.is_main_process():
        rows = ["case_id,image,label,role"] + [f"{i.case_id},{i.path},{lab.path if lab else ''},train"
                                                for i, lab in pairs] + \
               [f"{i.case_id},{i.path},{lab.path},val" for i, lab in val_pairs] + \
               [f"{i.case_id},{i.path},{lab.path},synthetic" for i, lab in synth_pairs]
        manifest.write_text("\n".join(rows) + "\n")
    bundle_dir = output / "bundle"
    with start_run("train_segmenter", output_dir=output, enabled=mlflow) as tracker:
        tracker.log_config(config)
        tracker.log_manifest(manifest, name="segmenter-training")
        tracker.log_params({"label_names": json.dumps(names)[:480], "n_train_cases": len(cases),
                            "n_val_cases": len(val_cases), "n_synthetic_cases": len(synth_pairs)})
        last = run_training(task, output, settings, tracker=tracker, resume=resume)
        if distributed.is_main_process():
            extra = {"input": spec.to_dict(), "source_label_names": {str(k): v for k, v in plan.source_names.items()},
                     "ct_reference_quantiles": np.mean(quantiles, axis=0).round(2).tolist(),
                     "ct_reference_threshold_hu": -500.0, "final_validation": last}
            if painting:
                extra["class_mean_hu"] = {str(k): v for k, v in painting.items()}
            # painting classes (synth.target: classes), not structures: segmenting leaves them out
            extra["tissue_class_ids"] = sorted(set(names) - set(plan.names))
            bundle = BundleSpec(
                kind="segmenter", network=task.network_desc,
                preprocess={"orientation": "RAS", "spacing": spec.spacing and list(spec.spacing),
                            "hu_window": [spec.a_min, spec.a_max], "range": [spec.b_min, spec.b_max],
                            "intensity": spec.intensity, "percentiles": list(spec.percentiles)},
                label_names=names, extra=extra,
                metadata={"task": "CT segmentation", "description": "3D CT segmenter trained by medgen",
                          "network_data_format": {
                              "inputs": {"image": {"type": "image", "num_channels": 1,
                                                   "format": "hounsfield" if spec.intensity == "window" else "magnitude",
                                                   "spatial_shape": list(spec.patch_size), "dtype": "float32",
                                                   "value_range": [spec.a_min, spec.a_max]}},
                              "outputs": {"pred": {"type": "image", "format": "segmentation",
                                                   "num_channels": len(names), "dtype": "float32",
                                                   "channel_def": {str(k): v for k, v in names.items()}}}}})
            save_bundle(bundle_dir, bundle, task.network)
            uri = tracker.log_bundle(bundle_dir, config.export.registered_name)
            if uri:
                log.info("registered %s", uri)
            if synth.learns_classes:  # it knows every voxel's tissue: also a tissue-painting translator
                translator_dir = export_tissue_translator(bundle_dir, output / "translator")
                uri = tracker.log_bundle(translator_dir, config.export.registered_name + "-translator",
                                         artifact_path="translator")
                log.info("tissue-painting translator %s%s", translator_dir, f" ({uri})" if uri else "")
            write_run_info(output, tracker)
    distributed.barrier()
    return bundle_dir


def _prepare_cases(pairs: list[tuple], spec, plan, *, synthetic: bool = False,
                   quantiles: list[np.ndarray] | None = None, synth=None) -> list:
    """Read and prepare ``(image, label)`` case pairs.

    ``quantiles``, when given, collects each image's body HU quantiles while the raw image is in
    memory (only the real training CTs need them, for the histogram-matching baseline).
    ``synth`` (a ``SynthConfig``: training on renderings) gives each case its rendering classes.
    """
    cases = []
    for img_case, lab_case in pairs:
        image = read_volume(img_case.path)
        label = (read_volume(lab_case.path, kind="label") if lab_case is not None
                 else image.with_array(np.zeros(image.shape, np.uint8)))  # no labels: HU tissue bands only
        cases.append(prepare_case(img_case.case_id, image, label, spec, plan, synthetic=synthetic,
                                  synth=synth))
        if quantiles is not None:
            quantiles.append(body_quantiles(image.array))
        del image, label
    return cases
