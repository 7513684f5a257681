"""Pipeline: render labelled MR-like volumes of random contrast from CT anatomy (``medgen synthesize``).

Label maps (+ optionally their CTs, whose HU tissue bands fill the unlabelled voxels) -> N random
renderings (:func:`medgen.data.synthesis.render_volume`, rendering ``i`` seeded by ``(seed, i)``)
-> ``OUT/images``, ``OUT/labels``, ``label_names.json`` (with ``--label-names``), a MONAI-style
``datalist.json`` and a QC montage of the first renderings; one MLflow run. The renderings are the
images the contrast-agnostic segmenter and the synthesis-supervised translator train on, written
out for inspection or for other tools.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medgen.data.synthesis import SynthesisConfig, render_volume
from medgen.data.inputs import collect_inputs, pair_inputs
from medgen.data.label_names import read_label_names
from medgen.errors import InputError, OutputError
from medgen.io.atomic import write_text_atomic
from medgen.io.outdir import claim_output_dir
from medgen.io.readers import read_volume
from medgen.io.writers import write_volume
from medgen.progress import progress
from medgen.tracking import finish_dataset_run, start_run
from medgen.training.segmenter import align_label
from medgen.viz import save_panels_png, volume_panels

log = logging.getLogger(__name__)


def synthesize(config: SynthesisConfig, *, labels: list[str | Path], output: str | Path, n: int,
               cts: list[str | Path] | None = None, label_names: str | Path | None = None,
               mlflow: bool = True) -> Path:
    """Write ``n`` rendered ``(image, label)`` pairs into ``output``; returns ``output/datalist.json``."""
    if n < 1:
        raise InputError(f"-n must be at least 1, got {n}", path="-n", fix="pass -n N with N >= 1")
    label_cases = collect_inputs(labels)
    if not label_cases:
        raise InputError("no label maps found", path=str(labels[0]), fix="pass label map files or folders")
    pairs = pair_inputs(collect_inputs(cts), label_cases) if cts else [(None, c) for c in label_cases]
    names = read_label_names(label_names) if label_names else None
    output = Path(output)
    if (output / "datalist.json").exists():
        raise OutputError("already holds rendered volumes (datalist.json)", path=output,
                          fix="choose a new output folder; medgen never overwrites generated data")
    entries = []
    # the shared output-folder claim: outside the inputs, locked, and every file written is checked
    # against the ownership ledger (a user's label_names.json or picture of the same name is refused)
    with claim_output_dir(output, inputs=[*labels, *(cts or [])], command="medgen synthesize",
                          outputs=("datalist.json", "label_names.json", "qc_synthesized.png")), \
            start_run("synthesize", output_dir=output, enabled=mlflow) as tracker:
        (output / "images").mkdir(exist_ok=True)
        (output / "labels").mkdir(exist_ok=True)
        tracker.log_config(config)
        tracker.log_params({"n": n, "n_label_maps": len(pairs), "with_ct": bool(cts)})
        current, case = None, None
        for i in progress(range(n), total=n, desc="synthesize", unit="volume"):
            k = i % len(pairs)
            if k != current:  # one case in memory at a time
                current, case = k, _read_case(*pairs[k])
            lab_case, label, ct = case
            seed = int(np.random.SeedSequence([config.seed, i]).generate_state(1)[0])
            n_ids = int(max(label.array.max(), max(names) if names else 0)) + 1
            image, lab = render_volume(label, ct, config, seed=seed, n_label_ids=n_ids)
            case_id = f"{lab_case.case_id}_r{i:04d}"
            image_path = write_volume(image, output / "images" / f"{case_id}.nii.gz", dtype=np.float32)
            label_path = write_volume(lab, output / "labels" / f"{case_id}.nii.gz")
            entries.append({"image": str(image_path.relative_to(output)), "label": str(label_path.relative_to(output)),
                            "case_id": case_id, "source": str(lab_case.path)})
        names_json = {str(k): v for k, v in sorted(names.items())} if names else None
        if names_json:
            write_text_atomic(output / "label_names.json", json.dumps(names_json, indent=1))
        datalist = {"description": f"MR-like renderings of random contrast from CT anatomy (medgen synthesize, "
                                   f"seed {config.seed})", "modality": "MR", "label_names": names_json,
                    "seed": config.seed, "training": [{"image": e["image"], "label": e["label"]} for e in entries]}
        write_text_atomic(output / "datalist.json", json.dumps(datalist, indent=1))
        qc = _qc_montage(output, entries[:4])
        finish_dataset_run(tracker, output, [output / "datalist.json"], figure=qc, metrics={"n_rendered": len(entries)})
    log.info("wrote %d renderings to %s", len(entries), output)
    return output / "datalist.json"


def _read_case(ct_case, lab_case) -> tuple:
    """``(label case, label Volume, CT Volume or None)``, the label on the CT's grid."""
    label = read_volume(lab_case.path, kind="label")
    ct = read_volume(ct_case.path) if ct_case is not None else None
    if ct is not None:
        label = align_label(ct, label)
    if label.array.min() < 0 or label.array.max() > 65000:
        raise InputError(f"label ids {int(label.array.min())}..{int(label.array.max())} are out of range",
                         path=lab_case.path, fix="label ids must be 0..65000")
    return lab_case, label, ct


def _qc_montage(output: Path, entries: list[dict]) -> Path | None:
    """Three orthogonal views of the first renderings with their label outlines."""
    rows = [volume_panels(read_volume(output / e["image"]), window=(-1.0, 1.0),
                          overlay=read_volume(output / e["label"], kind="label"), title=e["case_id"])
            for e in entries]
    return save_panels_png(output / "qc_synthesized.png", rows, title="renderings with their labels") if rows else None
