"""Pipeline: generate labelled synthetic volumes with a trained anatomy generator (one MLflow run).

Load the generator bundle -> for each case, sample a new anatomy from the bundle's label-map bank
(or take a user label map, e.g. CT labels for a generator trained on MR) -> synthesise the image
on the label map's grid -> write ``images/``, ``labels/``, ``label_names.json`` and
``datalist.json`` (see :mod:`medgen.inference.generate`), plus a QC picture of the first cases.
"""

from __future__ import annotations

import logging
from pathlib import Path
from medgen.data.inputs import collect_pairs
from medgen.data.label_image_pairs import mr_robust_max
from medgen.data.label_names import read_label_names
from medgen.inference.generate import AnatomyGenerator, generate_dataset
from medgen.io.outdir import claim_output_dir
from medgen.io.readers import read_volume
from medgen.metrics.realism import frechet_distance, per_label_wasserstein
from medgen.tracking import finish_dataset_run, start_run
from medgen.transforms.intensity import hu_to_unit
from medgen.viz import CT_WIDE, save_panels_png, volume_panels

log = logging.getLogger(__name__)


def generate(model: str | Path, output: str | Path, *, n: int | None = None, seed: int = 0,
             labels: list[str | Path] | None = None, label_names: str | Path | dict | None = None,
             device: str = "auto", precision: str = "fp32", mlflow: bool = True) -> Path:
    """Generate ``n`` synthetic ``(image, label)`` pairs into ``output``; returns ``output/datalist.json``.

    Args:
        model: run dir, bundle dir or MLflow URI of a generator.
        output: output folder.
        n: number of volumes (default with ``labels``: one per label map).
        seed: same seed -> same files.
        labels: optional user label maps to synthesise images for (instead of sampled anatomies).
        label_names: the user maps' id -> name, to match them to the model's labels by name.
        device, precision: inference device and precision.
    """
    output = Path(output)
    generator = AnatomyGenerator(model, device=device, precision=precision)
    names = read_label_names(label_names) if label_names else None
    # the shared output-folder claim (as the batch commands): outside the inputs, locked, and every
    # file written is checked against the ownership ledger (a user's label_names.json is refused)
    with claim_output_dir(output, inputs=[model, *(labels or [])], command="medgen generate",
                          outputs=("datalist.json", "label_names.json", "qc_generated.png")), \
            start_run("generate", output_dir=output, enabled=mlflow) as tracker:
        tracker.log_params({"model": str(model), "n": n if n is not None else "per-label-map", "seed": seed,
                            "labels": len(labels) if labels else 0, "modality": generator.modality,
                            "precision": precision})
        entries = generate_dataset(generator, output, n=n, seed=seed, labels=labels, label_names=names)
        qc = _qc_picture(output, entries[:3], generator.modality)
        finish_dataset_run(tracker, output, [output / "datalist.json", output / "label_names.json"], figure=qc,
                           metrics={"n_generated": len(entries)})
    log.info("wrote %d synthetic volumes to %s", len(entries), output)
    return output / "datalist.json"


def _qc_picture(output: Path, entries: list[dict], modality: str) -> Path | None:
    """Three orthogonal views with the label overlay for the first cases."""
    rows = []
    for entry in entries:
        image = read_volume(output / entry["image"])
        label = read_volume(output / entry["label"], kind="label")
        rows.append(volume_panels(image, window=CT_WIDE if modality == "ct" else None, overlay=label,
                                  title=entry["case_id"]))
    return save_panels_png(output / "qc_generated.png", rows, title="synthetic volumes with their labels") if rows else None


def realism_report(generated: str | Path, real_images: list[str | Path], real_labels: list[str | Path], *,
                   ct_window: tuple[float, float] = (-1000.0, 1000.0)) -> dict:
    """Realism of a generated folder against real labelled images (the numbers ``medgen evaluate`` reports).

    Args:
        generated: a folder written by :func:`generate` (``datalist.json``, ``label_names.json``).
        real_images, real_labels: real images and label maps with the same label ids (files or
            folders, paired by case id: :func:`medgen.data.inputs.pair_inputs`).
        ct_window: HU window used to bring CT into the unit range for the Frechet distance.

    Returns:
        ``{"wasserstein": {label: distance in image units}, "wasserstein_mean", "frechet_random_conv",
        "n_generated", "n_real", "feature_net"}``.
    """
    import json

    import numpy as np


    generated = Path(generated)
    datalist = json.loads((generated / "datalist.json").read_text())
    names = {int(k): v for k, v in datalist.get("label_names", {}).items()}
    modality = datalist.get("modality", "ct")
    fake = [(read_volume(generated / e["image"]).array, read_volume(generated / e["label"], kind="label").array)
            for e in datalist["training"]]
    real = [(read_volume(i.path).array, read_volume(lab.path, kind="label").array)
            for i, lab in collect_pairs(real_images, real_labels)]

    def unit(array: np.ndarray) -> np.ndarray:
        if modality == "ct":
            return hu_to_unit(array, ct_window)
        return 2.0 * np.clip(array / mr_robust_max(array), 0, 1) - 1.0

    w = per_label_wasserstein([f[0] for f in fake], [r[0] for r in real], [f[1] for f in fake], names,
                              real_labels=[r[1] for r in real])
    fd = frechet_distance([unit(f[0]) for f in fake], [unit(r[0]) for r in real])
    return {"wasserstein": w, "wasserstein_mean": float(np.mean(list(w.values()))) if w else float("nan"),
            "frechet_random_conv": fd, "n_generated": len(fake), "n_real": len(real),
            "feature_net": "medgen.metrics.realism.RandomConvFeatures(seed=0) on axial slices (fixed, untrained)"}
