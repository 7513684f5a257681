"""Pipeline: generate labelled synthetic volumes with a trained anatomy generator (one MLflow run).

Load the generator bundle -> for each case, sample a new anatomy from the bundle's label-map bank
(or take a user label map, e.g. CT labels for a generator trained on MR) -> synthesise the image
on the label map's grid -> write ``images/``, ``labels/``, ``label_names.json`` and
``datalist.json`` (see :mod:`medgen.inference.generate`), plus a QC picture of the first cases.
"""

from __future__ import annotations

import logging
from pathlib import Path

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
    from medgen.inference.generate import AnatomyGenerator, generate_dataset
    from medgen.pipelines.train_generator import read_label_names
    from medgen.tracking import start_run, write_run_info

    output = Path(output)
    generator = AnatomyGenerator(model, device=device, precision=precision)
    names = read_label_names(label_names) if label_names else None
    with start_run("generate", output_dir=output, enabled=mlflow) as tracker:
        tracker.log_params({"model": str(model), "n": n if n is not None else "per-label-map", "seed": seed,
                            "labels": len(labels) if labels else 0, "modality": generator.modality,
                            "precision": precision})
        entries = generate_dataset(generator, output, n=n, seed=seed, labels=labels, label_names=names)
        qc = _qc_picture(output, entries[:3], generator.modality)
        tracker.log_artifact(output / "datalist.json")
        tracker.log_artifact(output / "label_names.json")
        if qc is not None:
            tracker.log_artifact(qc, "figures")
        tracker.log_metrics({"n_generated": len(entries)})
        write_run_info(output, tracker)
    log.info("wrote %d synthetic volumes to %s", len(entries), output)
    return output / "datalist.json"


def _qc_picture(output: Path, entries: list[dict], modality: str) -> Path | None:
    """Three orthogonal views with the label overlay for the first cases."""
    try:
        from medgen.io.readers import read_volume
        from medgen.viz import CT_WIDE, save_panels_png, volume_panels
    except ImportError:  # pragma: no cover
        return None
    rows = []
    for entry in entries:
        image = read_volume(output / entry["image"])
        label = read_volume(output / entry["label"], kind="label")
        rows.append(volume_panels(image, window=CT_WIDE if modality == "ct" else None, overlay=label,
                                  title=entry["case_id"]))
    return save_panels_png(output / "qc_generated.png", rows, title="synthetic volumes with their labels") if rows else None
