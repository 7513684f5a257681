"""Pipeline: train an unpaired MR -> CT translator and export it as a bundle (one MLflow run).

Read the MR and CT inputs (raw volumes are preprocessed with the config's recipes; rows of a
preprocessed manifest are used as they are) -> hold the preprocessed training volumes in memory
-> CycleGAN training with the shared loop (checkpoints, resume, validation, sample grids) ->
export ``RUN_DIR/bundle`` (kind ``translator``: G, the MR recipe, the CT window, 2.5D context)
-> log and register it in MLflow as ``medgen-translator``.

Used by ``medgen train translator``; callable from Python::

    from medgen.pipelines.train_translator import train_translator
    bundle = train_translator(config, mr_inputs=["mr/"], ct_inputs=["ct/"], run_dir="runs/tr")
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgen.errors import InputError
from medgen.training.translator import GENERATOR_NAME, PairedCase, TranslatorConfig, TranslatorTask, generator_kwargs
from medgen import distributed
from medgen.data.inputs import collect_inputs, pair_inputs
from medgen.data.sampling import body_mask
from medgen.inference.translate import AIR_HU, Translator, sct_on_source_grid
from medgen.io.geometry import resample_like
from medgen.io.readers import read_volume
from medgen.metrics.image import mae, psnr, ssim
from medgen.models.bundle import BundleSpec, load_bundle, resolve_model, save_bundle
from medgen.objectives.shape import TranslatorSpaceSegmenter
from medgen.progress import progress
from medgen.runtime import resolve_precision, seed_everything
from medgen.tracking import Tracker, start_run, write_run_info
from medgen.training.loop import LoopSettings, read_history, run_training
from medgen.training.start import holds_run_folder, start_training
from medgen.training.synth_translator import SynthTranslatorTask, synth_classes
from medgen.transforms.intensity import hu_to_unit, unit_to_hu
from medgen.transforms.recipes import preprocess
from medgen.viz import plane_slice, save_curves_png

log = logging.getLogger(__name__)

REGISTERED_NAME = "medgen-translator"


@dataclass
class TrainingVolume:
    """One preprocessed training volume held in memory."""

    case_id: str
    path: str
    image: np.ndarray  # unit range, RAS
    mask: np.ndarray  # bool body mask
    label: np.ndarray | None = None  # integer label map on the same grid (CT with --ct-labels)


def load_training_volumes(inputs: list, modality: str, config: TranslatorConfig,
                          labels: list | None = None) -> list[TrainingVolume]:
    """Read and (if raw) preprocess every case of ``inputs`` for ``modality`` (``mr``/``ct``).

    Preprocessed manifest rows are used directly; a CT preprocessed with another HU window than
    the translator's is re-windowed (read from its record), so the network's output range always
    means the translator's window. ``labels`` (label maps paired with the inputs by case id,
    :func:`medgen.data.inputs.pair_inputs`) are carried through the same preprocessing (nearest neighbour).

    Raises:
        InputError: no cases, a preprocessed case whose record does not match (spacing), or a
            label map that does not pair with (or lie on the grid of) its image.
    """
    cases = collect_inputs([str(i) for i in inputs])
    if not cases:
        raise InputError(f"no {modality.upper()} cases found", path=", ".join(map(str, inputs)),
                         fix="pass volume files, folders, DICOM series folders or a manifest.csv")
    recipe = getattr(config.preprocess, modality)
    label_of = {}
    if labels:
        label_of = {img.case_id: lab for img, lab in pair_inputs(cases, collect_inputs([str(i) for i in labels]))}
    out = []
    for case in progress(cases, desc=f"load {modality}", unit="case"):
        lab_case = label_of.get(case.case_id)
        label = read_volume(lab_case.path, kind="label") if lab_case is not None else None
        if case.preprocessed:
            volume = read_volume(case.path)
            image = np.asarray(volume.array, np.float32)
            record = _read_record(case)
            if record is not None:
                image = _rewindow(image, record, config, case.path)
            mask_path = _mask_path(case)
            mask = (read_volume(mask_path, kind="label").array > 0) if mask_path is not None else body_mask(image)
            if label is not None and label.shape != volume.shape:
                raise InputError(f"label map shape {label.shape} differs from the preprocessed image's {volume.shape}",
                                 path=lab_case.path, fix="pass raw CTs with their label maps, or a manifest written "
                                                         "by medgen preprocess -l LABELS (labels on its grid)")
            label = label.array if label is not None else None
        else:
            result = preprocess(read_volume(case.path), recipe, label=label)
            image = np.asarray(result.image.array, np.float32)
            mask = result.body_mask.array > 0
            label = result.label.array if result.label is not None else None
        if image.min() < -1.001 or image.max() > 1.001:
            raise InputError(f"preprocessed {modality.upper()} values are outside [-1, 1]", path=case.path,
                             fix=f"pass raw volumes, or a manifest written by medgen preprocess --modality {modality}")
        out.append(TrainingVolume(case.case_id, str(case.path), image, mask,
                                  None if label is None else np.asarray(label).astype(np.int32)))
    log.info("%s: %d volumes in memory (%.1f MB)", modality, len(out), sum(v.image.nbytes for v in out) / 1e6)
    return out


def _read_record(case) -> dict | None:
    path = _companion(case, ("record_path", "record"), ".json")
    return json.loads(path.read_text()) if path else None


def _mask_path(case) -> Path | None:
    return _companion(case, ("mask_path", "body_mask_path"), "_mask.nii.gz")


def _companion(case, keys: tuple[str, ...], suffix: str) -> Path | None:
    """A file medgen preprocess wrote beside a case's volume (its record, its body mask): named by
    the case's manifest row (``keys``), else ``<stem><suffix>`` next to the volume; None if absent."""
    row = case.row or {}
    for key in keys:
        if row.get(key):
            path = Path(row[key])
            path = path if path.is_absolute() else Path(case.path).parent / path.name
            if path.exists():
                return path
    stem = Path(case.path).name.split(".nii")[0]
    guess = Path(case.path).with_name(stem + suffix)
    return guess if guess.exists() else None


def _rewindow(image: np.ndarray, record: dict, config: TranslatorConfig, path) -> np.ndarray:
    """Check a preprocessed case's spacing and map its CT window onto the translator's."""
    spacing = record.get("output", {}).get("spacing")
    want = config.preprocess.mr.spacing
    if spacing and want and not np.allclose(spacing, want, atol=1e-3):
        raise InputError(f"was preprocessed at spacing {spacing}, the translator config uses {list(want)}",
                         path=path, fix="re-run medgen preprocess with the translator's recipe, or pass raw volumes")
    intensity = record.get("intensity", {})
    if intensity.get("kind") == "ct_window" and tuple(intensity["window"]) != config.ct_window:
        log.warning("%s: CT window %s re-mapped to the translator's %s", path, intensity["window"], config.ct_window)
        image = np.asarray(hu_to_unit(unit_to_hu(image, tuple(intensity["window"])), config.ct_window), np.float32)
    return image


def paired_validation_cases(val_mr: list, val_ct: list, config: TranslatorConfig, device, dtype) -> list[PairedCase]:
    """Validation cases from paired MR/CT inputs (by position): MAE/PSNR/SSIM in HU on the MR grid."""
    mrs, cts = collect_inputs([str(i) for i in val_mr]), collect_inputs([str(i) for i in val_ct])
    if len(mrs) != len(cts):
        raise InputError(f"{len(mrs)} validation MRs but {len(cts)} validation CTs", path="--val-mr/--val-ct",
                         fix="pass one CT per MR, in the same order")
    return [make_paired_case(m.case_id, read_volume(m.path), read_volume(c.path), config, device, dtype)
            for m, c in zip(mrs, cts)]


def make_paired_case(case_id: str, mr, ct, config: TranslatorConfig, device, dtype, *,
                     object_mask: np.ndarray | None = None) -> PairedCase:
    """A :class:`PairedCase` comparing G(MR) with the CT on the MR's grid inside the body.

    The MR is preprocessed once; each evaluation translates it with the current G and maps the
    result back (exactly like ``medgen translate``). The mask is the CT body (> -500 HU) on the
    MR grid unless ``object_mask`` is given.
    """
    result = preprocess(mr, config.preprocess.mr)
    ref = resample_like(ct, mr, order=1, cval=AIR_HU).array.astype(np.float32)
    mask = object_mask if object_mask is not None else body_mask(ref, threshold=-500.0)
    lo, hi = config.ct_range
    ref_clipped = np.clip(ref, lo, hi)
    settings = config.inference.model_dump()

    def translator(G):
        return Translator(G, config.model.spatial_dims, config.model.context, config.ct_window,
                          config.preprocess.mr.model_dump(mode="json"), settings)

    def evaluate(G) -> dict[str, float]:
        sct = sct_on_source_grid(translator(G), result, device=device, dtype=dtype).array
        return {"mae_hu": mae(sct, ref_clipped, mask), "psnr": psnr(sct, ref_clipped, mask, data_range=hi - lo),
                "ssim": ssim(sct, ref_clipped, mask, data_range=hi - lo)}

    def picture(G) -> list:
        sct = sct_on_source_grid(translator(G), result, device=device, dtype=dtype)
        z = None
        panels = []
        for title, vol, win in (("MR", mr, None), ("synthetic CT", sct, (lo, hi)), ("CT", mr.with_array(ref), (lo, hi))):
            img, _ = plane_slice(vol, "axial", z)
            panels.append((title, img, win))
        return panels

    return PairedCase(case_id, evaluate, picture)


def _write_inputs_csv(path: Path, volumes: dict[str, list[TrainingVolume]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["modality", "case_id", "path", "shape"])
        for modality, vols in volumes.items():
            for v in vols:
                writer.writerow([modality, v.case_id, v.path, "x".join(map(str, v.image.shape))])
    return path


def export_translator(folder: str | Path, config: TranslatorConfig, generator, *, steps: int | None = None) -> Path:
    """Write G as a ``translator`` bundle (MONAI layout + medgen.json)."""
    m = config.model
    name, kwargs = GENERATOR_NAME, generator_kwargs(m)
    multiple = m.size_multiple
    channels = kwargs["in_channels"]
    shape_rule = [f"{multiple}*n"] * m.spatial_dims
    lo, hi = config.ct_range
    metadata = {
        "task": "MR to CT translation (synthetic CT)",
        "description": ("Synthesis-supervised generator G: MR -> CT (trained on random-contrast renderings of CTs "
                        "paired with those CTs)" if config.objective == "synth" else
                        "Unpaired CycleGAN generator G: MR -> CT") + ". Apply with `medgen translate`; inputs are "
                       "MR volumes preprocessed with medgen.json's recipe, outputs map [-1, 1] onto the CT window.",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": channels,
                                 "spatial_shape": shape_rule, "dtype": "float32", "value_range": [-1, 1],
                                 "is_patch_data": True,
                                 "channel_def": {str(i): f"axial slice {i - channels // 2:+d}" for i in range(channels)}}},
            "outputs": {"pred": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": channels,
                                 "spatial_shape": shape_rule, "dtype": "float32", "value_range": [-1, 1],
                                 "hounsfield_window": [lo, hi], "is_patch_data": True,
                                 "channel_def": {str(i): f"axial slice {i - channels // 2:+d}" for i in range(channels)}}},
        },
    }
    extra = {"spatial_dims": m.spatial_dims, "context": m.context if m.spatial_dims == 2 else 1,
             "ct_window": list(config.ct_window), "patch_size": list(config.data.patch_size),
             "slice_axis": "RAS axis 2 (axial)",
             "inference": config.inference.model_dump(mode="json"),
             "ct_preprocess": config.preprocess.ct.model_dump(mode="json"), "trained_steps": steps}
    spec = BundleSpec(kind="translator", network={"name": name, "kwargs": kwargs},
                      preprocess=config.preprocess.mr.model_dump(mode="json"), extra=extra, metadata=metadata)
    return save_bundle(folder, spec, generator)


def load_segmenter_for_shape(ref: str, config: TranslatorConfig):
    """A frozen CT segmenter for the shape-consistency term, fed with translator-space CT batches."""
    spec = load_bundle(resolve_model(ref), kind="segmenter")
    return TranslatorSpaceSegmenter.from_bundle(spec, ct_window=config.ct_window, spatial_dims=config.model.spatial_dims)


@holds_run_folder("run_dir", "medgen train translator")
def train_translator(config: TranslatorConfig, *, mr_inputs: list | None, ct_inputs: list, run_dir: str | Path,
                     max_steps: int | None = None, resume: bool = False, device: str = "auto",
                     val_mr: list | None = None, val_ct: list | None = None, mlflow: bool = True,
                     paired_cases: list[PairedCase] | None = None, ct_labels: list | None = None) -> Path:
    """Train, export and register a translator; returns the bundle folder.

    Args:
        config: the resolved config.
        mr_inputs, ct_inputs: unpaired MR and CT inputs (files, folders, DICOM folders, manifests);
            MR is optional with ``objective: synth`` (then it adapts G to the real MR).
        ct_labels: label maps of the CTs (``objective: synth``: their organs become render classes;
            without them the classes are the CTs' HU tissue bands).
        run_dir: run folder (checkpoints, metrics.jsonl, samples/, bundle/, MLflow store by default).
        max_steps: override ``train.steps`` (the LR schedule follows it).
        resume: continue from the newest checkpoint in ``run_dir``.
        val_mr, val_ct: optional paired validation cases (MAE/PSNR/SSIM in HU).
        paired_cases: ready-made validation cases (see :func:`make_paired_case`), added to those.
    """
    config, run_dir, dev = start_training(config, run_dir, device=device, max_steps=max_steps)
    dtype = resolve_precision(config.train.precision, dev)
    log.info("device %s, precision %s", dev, dtype)
    check_translator_inputs(config, mr_inputs, ct_inputs, ct_labels)
    mr = load_training_volumes(mr_inputs, "mr", config) if mr_inputs else []
    ct = load_training_volumes(ct_inputs, "ct", config, labels=ct_labels)
    paired = paired_validation_cases(val_mr, val_ct, config, dev, dtype) if val_mr else []
    paired += list(paired_cases or [])
    segmenter = load_segmenter_for_shape(config.loss.shape_segmenter, config) if config.loss.shape_segmenter else None
    with start_run("train_translator", output_dir=run_dir) if mlflow else _no_run() as tracker:
        tracker.log_config(config)
        if distributed.is_main_process():  # one writer under torchrun
            inputs_csv = _write_inputs_csv(run_dir / "inputs.csv", {"mr": mr, "ct": ct})
            tracker.log_manifest(inputs_csv, "translator-inputs")
        seed_everything(config.train.seed)
        common = dict(mr_masks=[v.mask for v in mr], ct_masks=[v.mask for v in ct], device=dev, precision=dtype,
                      paired=paired, segmenter=segmenter, run_dir=run_dir, tracker=tracker)
        if config.objective == "synth":
            classes, dark = synth_classes([v.image for v in ct], [v.label for v in ct], config)
            task = SynthTranslatorTask(config, [v.image for v in ct], classes, dark_classes=dark,
                                       mr_volumes=[v.image for v in mr], **common)
        else:
            task = TranslatorTask(config, [v.image for v in mr], [v.image for v in ct], **common)
        t = config.train
        settings = LoopSettings(max_steps=t.steps, checkpoint_every=t.checkpoint_every,
                                validate_every=t.validate_every, log_every=t.log_every)
        metrics = run_training(task, run_dir, settings, tracker=tracker, resume=resume)
        bundle = run_dir / "bundle"
        if distributed.is_main_process():
            export_translator(bundle, config, task.generator, steps=t.steps)
            curves = save_curves_png(run_dir / "loss_curves.png", read_history(run_dir), phase="train",
                                     keys=["g_synth_l1", "g_synth_structure", "g_adv_ct", "g_adv_mr", "g_cycle_mr",
                                           "g_cycle_ct", "d_ct", "d_mr"])
            tracker.log_figure_png(curves)
            uri = tracker.log_bundle(bundle, REGISTERED_NAME)
            if uri:
                log.info("model registered as %s", uri)
            write_run_info(run_dir, tracker)
            log.info("final validation: %s", {k: round(v, 4) for k, v in metrics.items()})
        distributed.barrier()
    return bundle


def check_translator_inputs(config: TranslatorConfig, mr_inputs, ct_inputs, ct_labels) -> None:
    """One clear error for input combinations the config's objective cannot train on."""
    if not ct_inputs:
        raise InputError("no CT inputs given", path="--ct", fix="pass the CT volumes (files, folders or a manifest)")
    if config.objective == "cyclegan" and not mr_inputs:
        raise InputError("the CycleGAN objective needs unpaired MR scans", path="--mr",
                         fix="pass --mr MR..., or train from CTs alone with -c translator/synth_25d")
    if config.objective == "cyclegan" and ct_labels:
        raise InputError("CT label maps are used by the synthesis objective only", path="--ct-labels",
                         fix="use -c translator/synth_25d (objective: synth), or drop --ct-labels")


class _no_run:
    def __enter__(self):
        return Tracker()

    def __exit__(self, *exc):
        return False
