"""The end-to-end demo: every medgen capability on generated phantoms, one report, one MLflow story.

Read top to bottom, :func:`run_demo` is the product in one page:

1. **phantoms**: paired CT / MR / label volumes from :func:`medgen.data.phantoms.make_phantom`;
   different seeds for the CT training set, the MR training set (so MR and CT are *unpaired*) and
   the held-out test set (paired, so the chain can be scored against ground truth);
2. **preprocess** the training CTs and MRs (manifests with one row per case);
3. **train a CT segmenter** on the CTs and their labels;
4. **train an MR->CT translator** on the unpaired MRs and CTs;
5. **segment the held-out MRs** through the chain (MR -> synthetic CT -> CT segmenter -> mask on
   the MR) and with the two baselines (``--translator none`` and ``histogram``), plus the upper
   bound (the segmenter on the true paired CT);
6. **evaluate**: per-organ Dice of each against the phantom labels; MAE / PSNR / SSIM of the
   synthetic CT against the true CT inside the body;
7. **train an anatomy generator** and generate a few labelled volumes;
8. optionally run the chain on **real MR volumes** (``--sample-data``);
9. write ``report.md`` / ``report.html`` (figures in ``figures/``) and ``metrics.json``.

The demo is one MLflow parent run; every pipeline it calls opens its own run, which
:func:`medgen.tracking.start_run` nests under the parent in the parent's store. Stages are small
functions that call the pipelines' Python APIs, so this file holds no training or inference
logic of its own. A stage that fails is reported (and the stages that need its output are
skipped) rather than losing the whole report.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from medgen.config import StrictModel, load_config
from medgen.data.phantoms import make_phantom
from medgen.errors import OutputError
from medgen.io.atomic import ensure_writable_dir, write_text_atomic
from medgen.io.readers import read_volume
from medgen.io.volume import Volume
from medgen.io.writers import write_volume
from medgen.metrics.image import mae, psnr, ssim
from medgen.metrics.segmentation import per_label_scores
from medgen.models.bundle import MEDGEN_JSON
from medgen.models.segmenters import load_segmenter
from medgen.pipelines.demo_report import build_report
from medgen.pipelines.generate import generate
from medgen.pipelines.preprocess import run_preprocess
from medgen.pipelines.segment_mr import ChainOptions, segment_mr
from medgen.pipelines.train_generator import train_generator
from medgen.pipelines.train_segmenter import train_segmenter
from medgen.pipelines.train_translator import train_translator
from medgen.progress import progress
from medgen.runtime import resolve_device, seed_everything
from medgen.tracking import start_run, write_run_info
from medgen.training.generator import GeneratorConfig
from medgen.training.segmenter import SegmenterConfig
from medgen.training.translator import TranslatorConfig

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "demo/full"
QUICK_CONFIG = "demo/quick"

#: Organs the report's Dice table shows (phantom label names; the others are tissue classes).
ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "vertebrae", "aorta", "muscle", "fat", "bowel_gas")


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


class PhantomSettings(StrictModel):
    """How many phantoms of what size; the seeds of the four sets never overlap."""

    shape: tuple[int, int, int] = (64, 64, 32)
    spacing: tuple[float, float, float] = (3.0, 3.0, 4.5)
    mr_weighting: Literal["t1", "t2"] = "t1"
    n_ct_train: int = 4
    n_mr_train: int = 4
    n_val: int = 1
    n_test: int = 2
    seed: int = 0


class TrainSettings(StrictModel):
    """One training stage: which shipped config, how long, and ``--set`` overrides."""

    config: str
    max_steps: int
    overrides: list[str] = []


class PreprocessSettings(StrictModel):
    """``--set`` overrides for both preprocessing recipes (e.g. the target spacing)."""

    overrides: list[str] = []


class GeneratorSettings(TrainSettings):
    n_samples: int = 2


class ReportSettings(StrictModel):
    sample_cases: int = 2


class DemoConfig(StrictModel):
    """Everything the demo does, as data (``configs/demo/quick.yaml``, ``full.yaml``)."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    threads: int | None = None  # torch CPU threads (None: torch's default, one per core)
    phantoms: PhantomSettings = PhantomSettings()
    preprocess: PreprocessSettings = PreprocessSettings()
    segmenter: TrainSettings = TrainSettings(config="segmenter/ct_unet", max_steps=200)
    #: the synthesis route's contrast-agnostic segmenter (trained on renderings of the training CTs'
    #: anatomy, never on MR), scored as method ``direct`` on the held-out MRs; None: not run
    synth_segmenter: TrainSettings | None = None
    translator: TrainSettings = TrainSettings(config="translator/cyclegan_25d", max_steps=400)
    translator_shape_consistency: bool = False
    generator: GeneratorSettings = GeneratorSettings(config="generator/label2ct", max_steps=200)
    baselines: list[Literal["none", "histogram"]] = ["none", "histogram"]
    report: ReportSettings = ReportSettings()


def load_demo_config(ref: str | Path | None = None, *, quick: bool = False, overrides: list[str] = ()) -> DemoConfig:
    """The demo config: ``ref`` (path or shipped name), else ``demo/quick`` or ``demo/full``."""
    return load_config(ref, DemoConfig, default=QUICK_CONFIG if quick else DEFAULT_CONFIG, overrides=list(overrides))


# ------------------------------------------------------------------------------------------------
# Stage bookkeeping
# ------------------------------------------------------------------------------------------------


@dataclass
class StageResult:
    """What one stage did: status (ok | failed | skipped), wall time, a note, and its outputs."""

    name: str
    status: str = "ok"
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    note: str = ""
    outputs: dict = field(default_factory=dict)


class Stages:
    """Runs stages in order, timing them; a failure is recorded and dependent stages are skipped."""

    def __init__(self):
        self.results: dict[str, StageResult] = {}

    def run(self, name: str, fn: Callable[[], dict], *, needs: tuple[str, ...] = ()) -> StageResult:
        missing = [n for n in needs if n not in self.results or self.results[n].status != "ok"]
        if missing:
            result = StageResult(name, "skipped", note="needs " + ", ".join(missing))
            log.warning("[demo] %s skipped: %s", name, result.note)
            self.results[name] = result
            return result
        log.info("[demo] %s ...", name)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            outputs = fn() or {}
            result = StageResult(name, "ok", outputs=outputs)
        except _StageUnavailable as exc:
            result = StageResult(name, "skipped", note=str(exc))
            log.warning("[demo] %s skipped: %s", name, exc)
        except Exception as exc:  # noqa: BLE001 - a demo reports a broken stage and carries on
            result = StageResult(name, "failed", note=f"{type(exc).__name__}: {str(exc)[:300]}")
            log.error("[demo] %s failed: %s", name, result.note)
            log.debug("%s", traceback.format_exc())
        result.seconds = time.perf_counter() - t0
        result.cpu_seconds = time.process_time() - c0
        if result.status == "ok":
            log.info("[demo] %s done in %.1f s", name, result.seconds)
        self.results[name] = result
        return result

    def outputs(self, name: str) -> dict:
        return self.results[name].outputs if name in self.results else {}

    def ok(self, name: str) -> bool:
        return name in self.results and self.results[name].status == "ok"


class _StageUnavailable(RuntimeError):
    """A capability this build of medgen does not have (yet)."""


# ------------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------------


def make_phantom_sets(out_dir: Path, settings: PhantomSettings) -> dict:
    """Write the three phantom sets as NIfTI: ``data/{ct_train,mr_train,test}/<case>/{ct,mr,labels}.nii.gz``.

    CT training cases keep CT + labels, MR training cases keep only the MR (so nothing pairs the
    two); validation cases (used by the trainers to report progress) and test cases (never seen
    in training; the ground truth for scoring) keep all three.
    """
    base = settings.seed * 10_000
    sets = {"ct_train": (base + 100, settings.n_ct_train, ("ct", "labels")),
            "mr_train": (base + 200, settings.n_mr_train, ("mr",)),
            "val": (base + 300, settings.n_val, ("ct", "mr", "labels")),
            "test": (base + 400, settings.n_test, ("ct", "mr", "labels"))}
    root = out_dir / "data"
    written: dict[str, list[dict]] = {}
    names = None
    total = sum(n for _, n, _ in sets.values())
    bar = progress(total=total, desc="phantoms", unit="case")
    for set_name, (first_seed, count, keep) in sets.items():
        written[set_name] = []
        for seed in range(first_seed, first_seed + count):
            phantom = make_phantom(seed, shape=settings.shape, spacing=settings.spacing,
                                   mr_weighting=settings.mr_weighting)
            names = phantom.label_names
            case_dir = root / set_name / f"phantom{seed:05d}"
            case = {"case_id": case_dir.name, "seed": seed}
            for kind in keep:
                array = {"ct": phantom.ct, "mr": phantom.mr, "labels": phantom.labels}[kind]
                path = case_dir / f"{kind}.nii.gz"
                write_volume(Volume(array, phantom.affine), path, overwrite=True)
                case[kind] = str(path)
            written[set_name].append(case)
            bar.update(1)
    bar.close()
    label_file = root / "label_names.json"
    write_text_atomic(label_file, json.dumps({str(k): v for k, v in names.items()}, indent=1))
    return {"sets": written, "label_names": str(label_file)}


def preprocess_training_data(out_dir: Path, cfg: DemoConfig, phantoms: dict, *, mlflow: bool) -> dict:
    """Preprocess the training CTs and MRs (manifests; the translator trains on them as they are)."""
    outputs = {}
    for modality, set_name in (("ct", "ct_train"), ("mr", "mr_train")):
        inputs = [c[modality] for c in phantoms["sets"][set_name]]
        summary = run_preprocess(inputs, out_dir / "preprocessed" / modality, modality=modality,
                                 overrides=cfg.preprocess.overrides, mlflow=mlflow)
        if summary.failed:
            raise RuntimeError(f"{len(summary.failed)} {modality} case(s) failed: {summary.failed}")
        outputs[modality] = str(summary.manifest_path)
    return outputs


def train_ct_segmenter(out_dir: Path, cfg: DemoConfig, phantoms: dict, *, mlflow: bool) -> dict:
    """Train the CT segmenter on the training CTs and their labels (validated on a paired phantom)."""
    return _train_segmenter_stage(out_dir / "runs" / "segmenter", cfg, cfg.segmenter, phantoms,
                                  validate=True, mlflow=mlflow)


def train_synth_segmenter(out_dir: Path, cfg: DemoConfig, phantoms: dict, *, mlflow: bool) -> dict:
    """Train the contrast-agnostic segmenter on renderings of the training CTs' labels (no MR at all)."""
    return _train_segmenter_stage(out_dir / "runs" / "synth_segmenter", cfg, cfg.synth_segmenter, phantoms,
                                  validate=False, mlflow=mlflow)


def _train_segmenter_stage(run_dir: Path, cfg: DemoConfig, stage: TrainSettings, phantoms: dict, *,
                           validate: bool, mlflow: bool) -> dict:
    """One segmenter stage on the training CTs + labels (``validate``: on the paired validation phantom)."""
    config = load_config(stage.config, SegmenterConfig, default=stage.config,
                         overrides=[f"train.seed={cfg.seed}", *stage.overrides])
    train = phantoms["sets"]["ct_train"]
    val = phantoms["sets"].get("val", []) if validate else []
    bundle = train_segmenter(config, images=[c["ct"] for c in train], labels=[c["labels"] for c in train],
                             label_names=phantoms["label_names"], val_images=[c["ct"] for c in val] or None,
                             val_labels=[c["labels"] for c in val] or None, output=run_dir,
                             max_steps=stage.max_steps, device=cfg.device, mlflow=mlflow)
    return {"run_dir": str(run_dir), "bundle": str(bundle)}


def train_mr_ct_translator(out_dir: Path, cfg: DemoConfig, phantoms: dict, preprocessed: dict | None, *,
                           segmenter_dir: str | None, mlflow: bool) -> dict:
    """Train the MR->CT translator on unpaired training MRs and CTs (validated on a paired phantom)."""
    stage = cfg.translator
    overrides = [f"train.seed={cfg.seed}", *stage.overrides]
    if cfg.translator_shape_consistency and segmenter_dir:
        overrides.append(f"loss.shape_segmenter={segmenter_dir}")
    config = load_config(stage.config, TranslatorConfig, default=stage.config, overrides=overrides)
    if preprocessed:
        mr_inputs, ct_inputs = [preprocessed["mr"]], [preprocessed["ct"]]
    else:
        mr_inputs = [c["mr"] for c in phantoms["sets"]["mr_train"]]
        ct_inputs = [c["ct"] for c in phantoms["sets"]["ct_train"]]
    val = phantoms["sets"].get("val", [])
    run_dir = out_dir / "runs" / "translator"
    bundle = train_translator(config, mr_inputs=mr_inputs, ct_inputs=ct_inputs, run_dir=run_dir,
                              max_steps=stage.max_steps, device=cfg.device, val_mr=[c["mr"] for c in val] or None,
                              val_ct=[c["ct"] for c in val] or None, mlflow=mlflow)
    return {"run_dir": str(run_dir), "bundle": str(bundle)}


def segment_test_mrs(out_dir: Path, cfg: DemoConfig, phantoms: dict, segmenter_dir: str,
                     translator_dir: str | None, synth_segmenter_dir: str | None = None) -> dict:
    """Segment each held-out MR through the chain, the baselines and (when trained) the contrast-agnostic
    segmenter directly and its tissue-painting translator's chain; the CT segmenter on the true CT."""
    methods = {}  # method -> (translator, segmenter)
    if translator_dir:
        methods["chain"] = (translator_dir, segmenter_dir)
    if synth_segmenter_dir:
        methods["direct"] = ("none", synth_segmenter_dir)
        painted = Path(synth_segmenter_dir) / "translator"  # exported when it learnt every tissue (synth.target)
        if (painted / MEDGEN_JSON).exists():
            methods["painted"] = (str(painted), segmenter_dir)
    for baseline in cfg.baselines:
        methods[baseline] = (baseline, segmenter_dir)
    root = out_dir / "segment"
    masks: dict[str, dict[str, str]] = {m: {} for m in [*methods, "upper_bound"]}
    scts: dict[str, dict[str, str]] = {}
    timings: dict[str, list[float]] = {}
    for method, (translator, method_segmenter) in methods.items():
        options = ChainOptions(translator=translator, segmenter=method_segmenter, device=cfg.device,
                               precision=cfg.precision, overwrite=True)
        for case in phantoms["sets"]["test"]:
            cid = case["case_id"]
            mask, sct = root / method / f"{cid}.nii.gz", root / method / f"{cid}_sct.nii.gz"
            keep_sct = method != "direct"  # the direct route's input is the MR itself, not a synthetic CT
            report = segment_mr([case["mr"]], mask, options, save_sct=str(sct) if keep_sct else None)[0]
            masks[method][cid] = str(mask)
            if keep_sct:
                scts.setdefault(method, {})[cid] = str(sct)
            timings.setdefault(method, []).append(sum(report.timings.values()))
    # upper bound: the same segmenter on the true CT of the same anatomy
    segmenter = load_segmenter(segmenter_dir)
    for case in phantoms["sets"]["test"]:
        t0 = time.perf_counter()
        ct = read_volume(case["ct"])
        pred = segmenter.segment(ct, device=_device(cfg.device), precision=cfg.precision)
        path = root / "upper_bound" / f"{case['case_id']}.nii.gz"
        write_volume(pred.with_array(pred.array.astype(np.uint8)), path, overwrite=True)
        masks["upper_bound"][case["case_id"]] = str(path)
        timings.setdefault("upper_bound", []).append(time.perf_counter() - t0)
    return {"masks": masks, "scts": scts,
            "seconds_per_scan": {m: float(np.mean(t)) for m, t in timings.items()}}


def evaluate_test_set(out_dir: Path, phantoms: dict, segmented: dict, segmenter_dir: str, *, mlflow: bool) -> dict:
    """Per-organ Dice of every method and sCT error against the phantom ground truth (one MLflow run)."""
    result = score_test_set(phantoms, segmented, segmenter_dir)
    path = write_text_atomic(out_dir / "segment" / "evaluation.json", json.dumps(result, indent=1, default=_json))
    with start_run("evaluate", output_dir=out_dir / "segment", enabled=mlflow) as tracker:
        tracker.log_params({"methods": ",".join(result["dice"]), "n_test_cases": len(phantoms["sets"]["test"])})
        for method, organs in result["summary"]["dice_mean"].items():
            tracker.log_metrics({f"dice/{method}/{o}": v for o, v in organs.items()})
        tracker.log_metrics({f"dice_mean/{m}": v for m, v in result["summary"]["dice_organs_mean"].items()})
        for method, means in result["summary"]["translation_mean"].items():
            tracker.log_metrics({f"sct/{method}/{k}": v for k, v in means.items()})
        tracker.log_artifact(path)
    return result


def score_test_set(phantoms: dict, segmented: dict, segmenter_dir: str) -> dict:
    """Per-organ Dice of every method and sCT error against the phantom ground truth."""
    ref_names = json.loads(Path(phantoms["label_names"]).read_text())
    pred_names = load_segmenter(segmenter_dir).label_names
    dice: dict[str, dict[str, dict[str, float]]] = {}
    for method, per_case in segmented["masks"].items():
        for case in phantoms["sets"]["test"]:
            cid = case["case_id"]
            if cid not in per_case:
                continue
            ref = read_volume(case["labels"], kind="label")
            pred = read_volume(per_case[cid], kind="label")
            scores = per_label_scores(pred.array, ref.array, pred_names=pred_names, ref_names=ref_names,
                                      spacing=ref.spacing, compute_hd95=False)
            dice.setdefault(method, {})[cid] = {name: s["dice"] for name, s in scores.items()}
    translation: dict[str, dict[str, dict[str, float]]] = {}
    for method, per_case in segmented.get("scts", {}).items():
        for case in phantoms["sets"]["test"]:
            if case["case_id"] not in per_case:
                continue
            ct = read_volume(case["ct"]).array.astype(np.float32)
            body = read_volume(case["labels"], kind="label").array > 0
            sct = read_volume(per_case[case["case_id"]]).array.astype(np.float32)
            translation.setdefault(method, {})[case["case_id"]] = {
                "mae_hu": mae(sct, ct, body), "psnr_db": psnr(sct, ct, body, data_range=2000.0),
                "ssim": ssim(sct, ct, body, data_range=2000.0)}
    return {"dice": dice, "translation": translation, "summary": summarise(dice, translation)}


def summarise(dice: dict, translation: dict) -> dict:
    """Means over test cases: ``dice_mean[method][organ]``, ``dice_organs_mean[method]``, sCT means."""
    out: dict = {"dice_mean": {}, "dice_organs_mean": {}, "translation_mean": {}}
    for method, per_case in dice.items():
        organs = sorted({o for scores in per_case.values() for o in scores})
        means = {o: float(np.mean([s[o] for s in per_case.values() if o in s])) for o in organs}
        out["dice_mean"][method] = means
        shown = [means[o] for o in ORGANS if o in means]
        out["dice_organs_mean"][method] = float(np.mean(shown)) if shown else float("nan")
    for method, per_case in translation.items():
        keys = sorted({k for m in per_case.values() for k in m})
        out["translation_mean"][method] = {k: float(np.mean([m[k] for m in per_case.values()])) for k in keys}
    return out


def train_and_generate(out_dir: Path, cfg: DemoConfig, phantoms: dict, *, mlflow: bool) -> dict:
    """Train the anatomy generator on the training CTs + labels and generate labelled volumes."""
    stage = cfg.generator
    config = load_config(stage.config, GeneratorConfig, default=stage.config,
                         overrides=[f"train.seed={cfg.seed}", *stage.overrides])
    run_dir = out_dir / "runs" / "generator"
    cases = phantoms["sets"]["ct_train"]
    bundle = train_generator(config, images=[c["ct"] for c in cases], labels=[c["labels"] for c in cases],
                             label_names=phantoms["label_names"], output=run_dir, max_steps=stage.max_steps,
                             device=cfg.device, mlflow=mlflow)
    gen_dir = out_dir / "generated"
    datalist = generate(bundle, gen_dir, n=stage.n_samples, seed=cfg.seed, device=cfg.device,
                        precision=cfg.precision, mlflow=mlflow)
    return {"run_dir": str(run_dir), "bundle": str(bundle), "generated_dir": str(gen_dir), "datalist": str(datalist),
            "modality": config.data.modality}


def find_sample_mrs(sample_dir: Path) -> list[Path]:
    """Real MR volumes in a sample-data folder (``example_mr_sm.nii.gz`` as shipped by TotalSegmentator)."""
    names = ("example_mr_sm.nii.gz",)
    found = [p for n in names for p in sorted(sample_dir.rglob(n))]
    return found


def segment_real_mrs(out_dir: Path, cfg: DemoConfig, sample_dir: Path, segmenter_dir: str,
                     translator_dir: str) -> dict:
    """Run the chain on the real MR(s) of a sample-data folder (models trained on phantoms only)."""
    mrs = find_sample_mrs(sample_dir)
    if not mrs:
        raise _StageUnavailable(f"no example_mr_sm.nii.gz under {sample_dir}")
    options = ChainOptions(translator=translator_dir, segmenter=segmenter_dir, device=cfg.device,
                           precision=cfg.precision, overwrite=True)
    results = {}
    for mr in mrs:
        cid = mr.name.split(".")[0]
        mask = out_dir / "real" / f"{cid}.nii.gz"
        report = segment_mr([mr], mask, options, save_sct="auto", qc="auto")[0]
        results[cid] = {"mr": str(mr), **report.outputs, "labels_found": report.labels_found,
                        "seconds": round(sum(report.timings.values()), 2)}
    return {"cases": results}


def _device(name: str) -> str:
    return str(resolve_device(name))


# ------------------------------------------------------------------------------------------------
# The workflow
# ------------------------------------------------------------------------------------------------


MARKER = ".medgen-demo"
#: Sub-folders a demo writes; a re-run into the same folder replaces them (MLflow history is kept).
DEMO_FOLDERS = ("data", "preprocessed", "runs", "segment", "generated", "real", "figures")


def prepare_output_dir(out_dir: Path) -> Path:
    """Create ``out_dir``, or clear a previous demo's results in it.

    Raises:
        OutputError: ``out_dir`` is a non-empty folder that a demo did not write.
    """
    import shutil

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MARKER).exists():
            raise OutputError("is not empty and does not hold a previous demo", path=out_dir,
                              fix="choose a new or empty folder with -o")
        log.info("replacing the previous demo results in %s (MLflow runs are kept)", out_dir)
        for name in DEMO_FOLDERS:
            shutil.rmtree(out_dir / name, ignore_errors=True)
    ensure_writable_dir(out_dir, min_free_bytes=200 * 2**20)
    (out_dir / MARKER).write_text("written by medgen demo; a re-run may replace this folder's results\n")
    return out_dir


@dataclass
class DemoResult:
    out_dir: Path
    report_md: Path
    report_html: Path
    metrics_path: Path
    tracking_uri: str | None
    stages: dict[str, StageResult]

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.stages.values())


def run_demo(out_dir: str | Path, config: DemoConfig, *, sample_data: str | Path | None = None,
             config_name: str = "", mlflow: bool = True) -> DemoResult:
    """Run the whole demo into ``out_dir`` and write its report; see the module docstring."""
    import torch

    out_dir = prepare_output_dir(Path(out_dir))
    seed_everything(config.seed)
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run_stages(out_dir, config, sample_data=sample_data, config_name=config_name, mlflow=mlflow)
    finally:
        torch.set_num_threads(threads_before)


def _run_stages(out_dir: Path, config: DemoConfig, *, sample_data, config_name: str, mlflow: bool) -> DemoResult:
    stages = Stages()
    t_start = time.perf_counter()
    with start_run("demo", output_dir=out_dir, tags={"medgen.demo_config": config_name}, enabled=mlflow) as tracker:
        tracker.log_config(config)
        phantoms = stages.run("phantoms", lambda: make_phantom_sets(out_dir, config.phantoms)).outputs
        stages.run("preprocess", lambda: preprocess_training_data(out_dir, config, phantoms, mlflow=mlflow),
                   needs=("phantoms",))
        stages.run("train segmenter", lambda: train_ct_segmenter(out_dir, config, phantoms, mlflow=mlflow),
                   needs=("phantoms",))
        seg_dir = stages.outputs("train segmenter").get("run_dir")
        stages.run("train translator",
                   lambda: train_mr_ct_translator(out_dir, config, phantoms, stages.outputs("preprocess") or None,
                                                  segmenter_dir=seg_dir, mlflow=mlflow),
                   needs=("phantoms",))
        tr_dir = stages.outputs("train translator").get("run_dir")
        synth_dir = None
        if config.synth_segmenter is not None:
            stages.run("train synth segmenter", lambda: train_synth_segmenter(out_dir, config, phantoms, mlflow=mlflow),
                       needs=("phantoms",))
            synth_dir = stages.outputs("train synth segmenter").get("run_dir")
        stages.run("segment test MRs",
                   lambda: segment_test_mrs(out_dir, config, phantoms, seg_dir, tr_dir, synth_dir),
                   needs=("train segmenter",))
        stages.run("evaluate", lambda: evaluate_test_set(out_dir, phantoms, stages.outputs("segment test MRs"), seg_dir,
                                                    mlflow=mlflow),
                   needs=("segment test MRs",))
        stages.run("generator", lambda: train_and_generate(out_dir, config, phantoms, mlflow=mlflow),
                   needs=("phantoms",))
        sample_dir = Path(sample_data) if sample_data else None
        if sample_dir is not None:
            stages.run("real MR", lambda: segment_real_mrs(out_dir, config, sample_dir, seg_dir, tr_dir),
                       needs=("train segmenter", "train translator"))
        total = time.perf_counter() - t_start
        metrics = collect_metrics(config, stages, total, tracker)
        metrics_path = write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=_json))
        report_md, report_html = build_report(out_dir, config, stages, metrics, config_name=config_name,
                                              sample_dir=sample_dir)
        tracker.log_metrics(_flat_metrics(metrics))
        for path in (metrics_path, report_md, report_html):
            tracker.log_artifact(path, "report")
        tracker.log_artifact(out_dir / "figures", "report/figures")
        write_run_info(out_dir, tracker)
        uri = tracker.tracking_uri
    return DemoResult(out_dir, report_md, report_html, metrics_path, uri, stages.results)


def collect_metrics(config: DemoConfig, stages: Stages, total_seconds: float, tracker) -> dict:
    """Everything numeric the demo measured, for ``metrics.json``."""
    evaluation = stages.outputs("evaluate")
    return {
        "config": config.model_dump(mode="json"),
        "stages": {name: {"status": r.status, "seconds": round(r.seconds, 2), "cpu_seconds": round(r.cpu_seconds, 2),
                          "note": r.note, "outputs": r.outputs}
                   for name, r in stages.results.items()},
        "total_seconds": round(total_seconds, 2),
        "segmentation": {"per_case": evaluation.get("dice", {}),
                         "mean": evaluation.get("summary", {}).get("dice_mean", {}),
                         "organs_mean": evaluation.get("summary", {}).get("dice_organs_mean", {}),
                         "organs": list(ORGANS)},
        "translation": {"per_case": evaluation.get("translation", {}),
                        "mean": evaluation.get("summary", {}).get("translation_mean", {})},
        "mlflow": mlflow_summary(tracker),
        "torch_threads": _torch_threads(),
        "cpu_count": os.cpu_count(),
    }


def mlflow_summary(tracker) -> dict:
    """The parent run, its nested runs and the model versions they registered."""
    info: dict = {"tracking_uri": tracker.tracking_uri, "parent_run_id": tracker.run_id, "runs": [], "models": []}
    if not tracker.active:
        return info
    try:
        from mlflow import MlflowClient
        client = MlflowClient(tracking_uri=tracker.tracking_uri)
        runs = client.search_runs([tracker.run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{tracker.run_id}'")
        info["runs"] = [{"name": "demo", "run_id": tracker.run_id, "parent": None, "status": "parent run"}]
        info["runs"] += [{"name": r.info.run_name, "run_id": r.info.run_id, "parent": tracker.run_id,
                          "status": r.info.status} for r in sorted(runs, key=lambda r: r.info.start_time)]
        run_ids = {r["run_id"] for r in info["runs"]}
        for model in client.search_registered_models():
            for version in client.search_model_versions(f"name = '{model.name}'"):
                if version.run_id in run_ids:
                    info["models"].append({"name": model.name, "version": version.version,
                                           "uri": f"models:/{model.name}/{version.version}"})
    except Exception as exc:  # noqa: BLE001 - a summary must not fail the demo
        log.warning("could not list the MLflow runs: %s", exc)
    return info


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def _flat_metrics(metrics: dict) -> dict[str, float]:
    """The headline numbers as MLflow metrics on the parent run."""
    seg = metrics.get("segmentation", {})
    flat = {f"dice_mean/{m}": v for m, v in seg.get("organs_mean", {}).items()}
    for method, per_organ in seg.get("mean", {}).items():
        flat.update({f"dice/{method}/{o}": v for o, v in per_organ.items()})
    for method, means in metrics.get("translation", {}).get("mean", {}).items():
        flat.update({f"sct/{method}/{k}": v for k, v in means.items()})
    flat.update({f"seconds/{n.replace(' ', '_')}": s["seconds"] for n, s in metrics["stages"].items()})
    flat["seconds/total"] = metrics["total_seconds"]
    return flat


def _json(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
