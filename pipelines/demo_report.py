"""The demo's report: figures (PNG, via :mod:`medgen.viz`) and the document (:mod:`medgen.report`).

Kept apart from :mod:`medgen.pipelines.demo` so the workflow reads as a workflow. Display rules
(radiological orientation, HU windows, aspect ratio from the voxel spacing) come from
:mod:`medgen.viz`; this module only decides *what* to show: the slice through the organs of
interest, the same window for every CT-like panel, one colour per label with a legend.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medgen.report import Report
from medgen.io.atomic import atomic_path
from medgen.io.geometry import reorient
from medgen.io.readers import read_volume
from medgen.tracking import ui_command
from medgen.training.loop import read_history
from medgen.viz import CT_SOFT_TISSUE, Panel, label_colormap, percentile_window, plane_slice, save_panels_png

log = logging.getLogger(__name__)

METHOD_TITLES = {
    "chain": "chain (MR -> sCT -> CT segmenter)",
    "none": "baseline: no translation",
    "histogram": "baseline: histogram matching",
    "upper_bound": "upper bound: segmenter on the true CT",
}
METHOD_TITLES["direct"] = "contrast-agnostic segmenter on the MR (synthesis route)"
METHOD_TITLES["painted"] = "painted chain (MR -> tissue-painted sCT -> CT segmenter; synthesis route)"
METHOD_ORDER = ("chain", "painted", "direct", "none", "histogram", "upper_bound")
METHOD_COLOURS = {"chain": "#1f77b4", "painted": "#8c564b", "direct": "#9467bd", "none": "#bbbbbb",
                  "histogram": "#ff7f0e", "upper_bound": "#2ca02c"}


#: Overlay colours by label name: an index into :func:`medgen.viz.label_colormap` (tab20), chosen so
#: that neighbouring organs differ in hue. Tissue classes (fat, muscle, soft tissue) are left out
#: of overlays: they cover most of the body and would hide the organs.
DISPLAY_COLOURS = {"liver": 3, "spleen": 9, "kidney_left": 5, "kidney_right": 19, "vertebrae": 11, "aorta": 7,
                   "bowel_gas": 13, "stomach": 17, "pancreas": 15, "inferior_vena_cava": 1}


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def display_labels(volume, names: dict | None):
    """``volume`` with label ids replaced by display colour ids (organs only, matched by name)."""
    if volume is None:
        return None
    names = names if names is not None else volume.meta.get("label_names") or {}
    lut = np.zeros(int(volume.array.max()) + 1, np.uint8)
    for label_id, name in names.items():
        if 0 < int(label_id) < lut.size and str(name) in DISPLAY_COLOURS:
            lut[int(label_id)] = DISPLAY_COLOURS[str(name)]
    return volume.with_array(lut[volume.array.astype(np.int64)])


def _centre(labels: np.ndarray, ids: tuple[int, ...]) -> tuple[int, int, int]:
    """RAS voxel indices of the centroid of ``ids`` in a RAS label array (the middle if absent)."""
    mask = np.isin(labels, ids)
    if not mask.any():
        return tuple(s // 2 for s in labels.shape)
    return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))


def _ras(volume):
    return reorient(volume, "RAS")


def _panel(volume, plane: str, centre, *, window=None, overlay=None, title: str = ""):
    """One display panel of ``volume`` (any orientation) through RAS voxel ``centre``."""
    index = centre[{"axial": 2, "coronal": 1, "sagittal": 0}[plane]]
    image, aspect = plane_slice(volume, plane, index)
    over = plane_slice(overlay, plane, index)[0] if overlay is not None else None
    return Panel(image, aspect, window if window is not None else percentile_window(volume.array),
                 overlay=over, title=title)


def _mask_names(mask_path: str | Path, fallback: dict) -> dict:
    """Label names written beside a mask by ``segment-mr`` (``<mask>.labels.json``), else ``fallback``."""
    path = Path(str(mask_path).removesuffix(".nii.gz") + ".labels.json")
    if path.exists():
        try:
            return {int(k): v for k, v in json.loads(path.read_text())["label_names"].items()}
        except (ValueError, KeyError):
            pass
    return fallback


def _read_mask(path, names: dict):
    return display_labels(read_volume(path, kind="label"), _mask_names(path, names))


def _blank(title: str):
    return Panel(np.zeros((8, 8), np.float32), 1.0, (0.0, 1.0), title=f"{title}\n(not available)")


def sample_rows_figure(path: Path, test_cases: list[dict], segmented: dict, names: dict, *,
                       n_cases: int) -> Path | None:
    """Per held-out case, axial and coronal rows: MR | synthetic CT | true CT | chain mask | reference."""
    rows = []
    masks = segmented.get("masks", {})
    chain_method = "chain" if "chain" in masks else next(iter(masks), None)
    sct_paths = segmented.get("scts", {}).get("chain", {})
    for case in test_cases[:n_cases]:
        cid = case["case_id"]
        mr, ct = read_volume(case["mr"]), read_volume(case["ct"])
        ref = read_volume(case["labels"], kind="label")
        centre = _centre(_ras(ref).array, _ids(names, ("liver", "spleen", "kidney_left", "kidney_right")))
        ref = display_labels(ref, names)
        sct = read_volume(sct_paths[cid]) if cid in sct_paths else None
        pred = _read_mask(masks[chain_method][cid], names) if chain_method and cid in masks[chain_method] else None
        for plane in ("axial", "coronal"):
            label = f"{cid} {plane}"
            rows.append([
                _panel(mr, plane, centre, title=f"MR ({label})"),
                _panel(sct, plane, centre, window=CT_SOFT_TISSUE, title="synthetic CT (W400 L40)") if sct is not None
                else _blank("synthetic CT"),
                _panel(ct, plane, centre, window=CT_SOFT_TISSUE, title="true CT (W400 L40)"),
                _panel(mr, plane, centre, overlay=pred, title=f"{chain_method} mask on MR") if pred is not None
                else _blank("mask"),
                _panel(mr, plane, centre, overlay=ref, title="reference labels on MR"),
            ])
    if not rows:
        return None
    return save_panels_png(path, rows, title="Held-out phantoms: MR | synthetic CT | true CT | masks", panel_size=2.6)


def methods_figure(path: Path, case: dict, segmented: dict, names: dict) -> Path | None:
    """One held-out case, axial: the mask of every method next to the reference."""
    masks = segmented.get("masks", {})
    cid = case["case_id"]
    mr, ct = read_volume(case["mr"]), read_volume(case["ct"])
    ref = read_volume(case["labels"], kind="label")
    centre = _centre(_ras(ref).array, _ids(names, ("liver", "spleen", "kidney_left", "kidney_right")))
    ref = display_labels(ref, names)
    row = []
    for method in METHOD_ORDER:
        if method in masks and cid in masks[method]:
            base = ct if method == "upper_bound" else mr
            window = CT_SOFT_TISSUE if method == "upper_bound" else None
            row.append(_panel(base, "axial", centre, window=window, overlay=_read_mask(masks[method][cid], names),
                              title=METHOD_TITLES[method].replace(": ", ":\n")))
    row.append(_panel(mr, "axial", centre, overlay=ref, title="reference labels"))
    if len(row) < 2:
        return None
    return save_panels_png(path, [row], title=f"{cid}: what each method segments (axial)", panel_size=2.8)


def dice_bar_figure(path: Path, dice_mean: dict, organs: list[str]) -> Path | None:
    """Grouped bars: mean Dice per organ for each method."""
    import matplotlib.pyplot as plt

    methods = [m for m in METHOD_ORDER if m in dice_mean]
    organs = [o for o in organs if any(o in dice_mean[m] for m in methods)]
    if not methods or not organs:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(organs) + 2), 3.6))
    width = 0.8 / len(methods)
    x = np.arange(len(organs))
    for i, method in enumerate(methods):
        values = [dice_mean[method].get(o, np.nan) for o in organs]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, values, width, label=METHOD_TITLES[method],
               color=METHOD_COLOURS[method])
    ax.set_xticks(x, [o.replace("_", "\n") for o in organs], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (mean over held-out phantoms)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def legend_figure(path: Path, label_names: dict) -> Path:
    """The overlay colours of the organs in ``label_names`` (tissue classes are not overlaid)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cmap = label_colormap()
    present = {str(v) for v in label_names.values()}
    items = [(name, colour) for name, colour in DISPLAY_COLOURS.items() if name in present]
    fig, ax = plt.subplots(figsize=(7.5, 0.6))
    ax.axis("off")
    ax.legend(handles=[Patch(color=cmap(colour), alpha=0.7, label=name.replace("_", " ")) for name, colour in items],
              loc="center", ncol=min(len(items), 7), fontsize=8, frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def _ids(names: dict, wanted: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(int(k) for k, v in names.items() if v in wanted)


def curves_figure(path: Path, name: str, run_dir: str | Path) -> Path | None:
    """Training losses and validation metrics of one run (from its ``metrics.jsonl``) in one picture.

    Loss components share one panel (totals are left out: they would flatten the rest); validation
    metrics get one panel per quantity, since MAE in HU, PSNR in dB and Dice do not share a scale
    (metrics named ``group/part``, e.g. per-organ Dice, share their group's panel).
    """
    import matplotlib.pyplot as plt

    history = read_history(run_dir)
    skip = {"step", "phase", "steps_per_s", "lr"}
    train = [r for r in history if r.get("phase") == "train"]
    val = [r for r in history if r.get("phase") == "val"]
    train_keys = sorted({k for r in train for k in r if k not in skip and not k.endswith("total")
                         and isinstance(r[k], (int, float))})
    groups: dict[str, list[str]] = {}
    for key in sorted({k for r in val for k in r if k not in skip and isinstance(r[k], (int, float))}):
        groups.setdefault(key.split("/")[0], []).append(key)
    panels = ([("training losses", train, train_keys)] if train_keys else []) + \
             [(f"validation: {g}", val, keys) for g, keys in list(groups.items())[:5]]
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.6, 2.9 * nrows + 0.4), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (title, rows, keys) in zip(axes.ravel(), panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r and r[key] == r[key]]
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 8 else None, markersize=3,
                        label=key.split("/", 1)[-1] if "/" in key else key)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=6, ncol=2 if len(keys) > 6 else 1)
    fig.suptitle(f"{name}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def generated_pairs(gen_dir: Path) -> list[tuple[Path, Path]]:
    """(image, label) pairs written by ``medgen generate`` (from its datalist, else by file name)."""
    for datalist in sorted(gen_dir.glob("*.json")):
        try:
            data = json.loads(datalist.read_text())
        except ValueError:
            continue
        entries = data.get("training") if isinstance(data, dict) else data if isinstance(data, list) else None
        if entries and isinstance(entries[0], dict) and "image" in entries[0] and "label" in entries[0]:
            return [(_resolve(gen_dir, e["image"]), _resolve(gen_dir, e["label"])) for e in entries]
    images = sorted(p for p in gen_dir.rglob("*.nii.gz") if "label" not in p.name and "seg" not in p.name)
    pairs = []
    for image in images:
        candidates = [image.with_name(image.name.replace("image", "label")), image.parent / "labels.nii.gz",
                      image.parent / "label.nii.gz"]
        label = next((c for c in candidates if c != image and c.exists()), None)
        if label is not None:
            pairs.append((image, label))
    return pairs


def _resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def generated_figure(path: Path, pairs: list[tuple[Path, Path]], names: dict, *, ct: bool = True) -> Path | None:
    """Generated volumes: image and image + labels, axial and coronal."""
    rows = []
    for image_path, label_path in pairs:
        image, labels = read_volume(image_path), read_volume(label_path, kind="label")
        centre = _centre(_ras(labels).array, _ids(names, ("liver", "spleen", "kidney_left", "kidney_right")))
        labels = display_labels(labels, names)
        window = CT_SOFT_TISSUE if ct else None
        rows.append([_panel(image, "axial", centre, window=window, title=f"{image_path.parent.name}/{image_path.name}"),
                     _panel(image, "axial", centre, window=window, overlay=labels, title="+ its label map"),
                     _panel(image, "coronal", centre, window=window, title="coronal"),
                     _panel(image, "coronal", centre, window=window, overlay=labels, title="+ label map")])
    if not rows:
        return None
    return save_panels_png(path, rows, title="Generated labelled volumes (label map -> image)", panel_size=2.6)


def real_mr_figure(path: Path, case: dict) -> Path:
    """A real MR: MR | synthetic CT | chain mask on the MR, three planes."""
    mr = read_volume(case["mr"])
    mask = _read_mask(case["mask"], {})
    sct = read_volume(case["sct"]) if case.get("sct") and Path(case["sct"]).exists() else None
    ras_mask = _ras(mask).array
    centre = _centre(ras_mask, tuple(int(i) for i in np.unique(ras_mask) if i != 0))
    rows = []
    for plane in ("axial", "coronal", "sagittal"):
        rows.append([_panel(mr, plane, centre, title=f"MR {plane}"),
                     _panel(sct, plane, centre, window=CT_SOFT_TISSUE, title="synthetic CT") if sct is not None
                     else _blank("synthetic CT"),
                     _panel(mr, plane, centre, overlay=mask, title="mask on MR")])
    return save_panels_png(path, rows, title=f"{Path(case['mr']).name}: chain trained on phantoms only", panel_size=2.8)


# ------------------------------------------------------------------------------------------------
# The document
# ------------------------------------------------------------------------------------------------


def build_report(out_dir: Path, config, stages, metrics: dict, *, config_name: str = "",
                 sample_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``figures/*.png``, ``report.md`` and ``report.html`` into ``out_dir``."""
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    report = Report("medgen demo report")
    phantoms = stages.outputs("phantoms")
    p = config.phantoms
    total = metrics.get("total_seconds", 0.0)
    report.paragraph(
        f"Everything below was produced by `medgen demo` (config `{config_name or 'custom'}`) in "
        f"{total / 60:.1f} min on {metrics.get('cpu_count')} CPU core(s), from generated abdomen phantoms "
        f"({p.shape[0]}x{p.shape[1]}x{p.shape[2]} voxels of {p.spacing[0]:g}x{p.spacing[1]:g}x{p.spacing[2]:g} mm, "
        f"{p.mr_weighting.upper()}-weighted MR): {p.n_ct_train} CT training cases with labels, {p.n_mr_train} MR "
        f"training cases of *other* anatomies (the translator never sees an MR/CT pair) and {p.n_test} held-out "
        f"cases with paired MR, CT and labels for scoring.")
    report.paragraph("Phantoms are synthetic and the models are tiny and briefly trained so that the demo runs "
                     "on a laptop CPU; the numbers show the workflow and the relative order of the methods, not "
                     "clinical accuracy.", note=True)
    failed = [f"{n}: {r.status} ({r.note})" for n, r in stages.results.items() if r.status != "ok"]
    if failed:
        report.paragraph("Stages that did not run to completion: " + "; ".join(failed), note=True)

    _segmentation_section(report, fig_dir, metrics, phantoms, stages, config)
    _translation_section(report, metrics)
    _curves_section(report, fig_dir, stages)
    _generator_section(report, fig_dir, stages, config)
    if sample_dir is not None:
        _real_section(report, fig_dir, stages, sample_dir)
    _timings_section(report, metrics)
    _mlflow_section(report, metrics)
    report.heading("Reproduce")
    report.paragraph("Every setting of this run (including `--set` overrides) is the resolved config in "
                     "`metrics.json` (key `config`) and in the MLflow parent run (`config.yaml`); the same seed "
                     "gives the same phantoms and the same training data order.")
    report.preformatted(f"medgen demo -o {out_dir} -c {config_name or 'CONFIG'}")
    return report.write(out_dir)


def _segmentation_section(report: Report, fig_dir: Path, metrics: dict, phantoms: dict, stages, config) -> None:
    report.heading("Segmenting MR scans with a CT segmenter")
    seg = metrics.get("segmentation", {})
    means = seg.get("mean", {})
    methods = [m for m in METHOD_ORDER if m in means]
    if not methods:
        report.paragraph("No segmentation results (see the stage table below).")
        return
    organs = [o for o in seg.get("organs", []) if any(o in means[m] for m in methods)]
    rows = [[o.replace("_", " ")] + [means[m].get(o) for m in methods] for o in organs]
    rows.append(["**mean of these organs**"] + [seg.get("organs_mean", {}).get(m) for m in methods])
    report.paragraph(
        "Per-organ Dice against the phantom ground truth, mean over the held-out cases. The *chain* translates "
        "the MR to a synthetic CT and applies the CT segmenter; the baselines apply the same CT segmenter to the "
        "intensity-normalised MR (*no translation*) or to the MR histogram-matched to CT (*histogram*); the "
        "*upper bound* applies it to the true CT of the same anatomy.")
    report.table(["organ"] + [METHOD_TITLES[m] for m in methods], rows, caption="Dice per organ")
    om = seg.get("organs_mean", {})
    if om.get("upper_bound"):
        short = {"chain": "chain", "histogram": "histogram baseline", "none": "no-translation baseline"}
        shares = [f"{short[m]} {om[m] / om['upper_bound']:.0%}" for m in short if m in om]
        report.paragraph("Share of the upper bound's mean Dice reached: " + ", ".join(shares) + ".")
    path = dice_bar_figure(fig_dir / "dice.png", means, organs)
    if path:
        report.figure(path, "Mean Dice per organ and method.")
    names = {int(k): v for k, v in json.loads(Path(phantoms["label_names"]).read_text()).items()}
    legend = legend_figure(fig_dir / "label_legend.png", names)
    segmented = stages.outputs("segment test MRs")
    try:
        sample = sample_rows_figure(fig_dir / "samples.png", phantoms["sets"]["test"], segmented, names,
                                    n_cases=config.report.sample_cases)
        if sample:
            report.figure(sample, "Held-out phantoms, axial and coronal slices through the liver, spleen and kidneys. "
                                  "Radiological convention: the patient's right on the viewer's left, anterior at the "
                                  "top (axial), superior at the top (coronal); pixel aspect from the voxel spacing; "
                                  "CT in a soft-tissue window (W400/L40), MR in a 1-99 percentile window.")
            report.figure(legend, "Overlay colours (fat, muscle and other soft tissue are scored but not drawn).")
        compare = methods_figure(fig_dir / "methods.png", phantoms["sets"]["test"][0], segmented, names)
        if compare:
            report.figure(compare, "The same slice segmented by every method (upper bound drawn on the true CT).")
    except Exception as exc:  # noqa: BLE001 - a missing picture must not lose the report
        log.warning("could not draw the segmentation figures: %s", exc)


def _translation_section(report: Report, metrics: dict) -> None:
    means = metrics.get("translation", {}).get("mean", {})
    per_case = metrics.get("translation", {}).get("per_case", {})
    if not means:
        return
    report.heading("Synthetic CT quality")
    report.paragraph("The synthetic CT (on the MR's grid, in HU) against the true CT of the same phantom, inside "
                     "the body (all labelled voxels): mean absolute error in HU, PSNR over a 2000 HU range, SSIM. "
                     "The histogram baseline's 'synthetic CT' is the MR histogram-matched to CT intensities.")
    rows = []
    for method in [m for m in METHOD_ORDER if m in means]:
        for cid, values in per_case.get(method, {}).items():
            rows.append([METHOD_TITLES[method], cid, values.get("mae_hu"), values.get("psnr_db"), values.get("ssim")])
        m = means[method]
        rows.append([METHOD_TITLES[method], "**mean**", m.get("mae_hu"), m.get("psnr_db"), m.get("ssim")])
    report.table(["method", "case", "MAE (HU)", "PSNR (dB)", "SSIM"], rows, caption="Synthetic CT vs true CT")


def _curves_section(report: Report, fig_dir: Path, stages) -> None:
    runs = [("segmenter", stages.outputs("train segmenter").get("run_dir")),
            ("translator", stages.outputs("train translator").get("run_dir")),
            ("generator", stages.outputs("generator").get("run_dir"))]
    figures = []
    for name, run_dir in runs:
        if run_dir:
            try:
                path = curves_figure(fig_dir / f"curves_{name}.png", name, run_dir)
                if path:
                    figures.append((name, path))
            except Exception as exc:  # noqa: BLE001
                log.warning("could not draw %s curves: %s", name, exc)
    if not figures:
        return
    report.heading("Training curves")
    for name, path in figures:
        report.figure(path, f"{name}: training losses and validation metrics per step (`runs/{name}/metrics.jsonl`).")


def _generator_section(report: Report, fig_dir: Path, stages, config) -> None:
    out = stages.outputs("generator")
    if not out:
        return
    report.heading("Generated labelled volumes")
    pairs = generated_pairs(Path(out["generated_dir"]))
    report.paragraph(f"{len(pairs)} (image, label) pairs generated by the anatomy generator trained on the "
                     f"{config.phantoms.n_ct_train} training CTs, in `{out['generated_dir']}` with a datalist "
                     "that `medgen train segmenter` accepts.")
    try:
        names_path = Path(out["generated_dir"]) / "label_names.json"
        names = {int(k): v for k, v in json.loads(names_path.read_text()).items()} if names_path.exists() else {}
        path = generated_figure(fig_dir / "generated.png", pairs[:4], names, ct=out.get("modality", "ct") == "ct")
        if path:
            report.figure(path, "Generated samples: new label maps (sampled anatomies) and the images generated "
                                "from them (CT soft-tissue window).")
    except Exception as exc:  # noqa: BLE001
        log.warning("could not draw generated samples: %s", exc)


def _real_section(report: Report, fig_dir: Path, stages, sample_dir: Path) -> None:
    report.heading("Real MR scans")
    result = stages.results.get("real MR")
    if result is None or result.status != "ok":
        report.paragraph(f"The chain was not run on real data from `{sample_dir}`: "
                         f"{result.status + ' (' + result.note + ')' if result else 'no stage'}.")
        return
    report.paragraph("The chain applied to real MR volumes from the sample-data folder. **The translator and the "
                     "segmenter were trained on phantoms only**, so this shows that the workflow runs on real "
                     "files (reading, orientation, writing the mask on the MR's own grid), not that the masks "
                     "are anatomically right; there is no ground truth for these scans.", note=True)
    for cid, case in result.outputs.get("cases", {}).items():
        try:
            mask = read_volume(case["mask"], kind="label")
            names = _mask_names(case["mask"], {})
            ids, counts = np.unique(mask.array, return_counts=True)
            voxel_ml = float(np.prod(mask.spacing)) / 1000.0
            found = ", ".join(f"{names.get(int(i), int(i))} ({c * voxel_ml:.0f} ml)" for i, c in zip(ids, counts)
                              if i != 0) or "nothing"
            mr = read_volume(case["mr"])
            report.paragraph(f"`{case['mr']}` ({'x'.join(map(str, mr.shape))} voxels, "
                             f"{'x'.join(f'{s:g}' for s in mr.spacing)} mm, stored {mr.orientation}): the mask "
                             f"`{Path(case['mask']).name}` is written on this exact grid. Volumes found: {found}.")
            report.figure(real_mr_figure(fig_dir / f"real_{cid}.png", case),
                          f"{cid}: MR, synthetic CT and the chain's mask, three planes (radiological display).")
        except Exception as exc:  # noqa: BLE001
            log.warning("could not draw the real-data figure for %s: %s", cid, exc)


def _timings_section(report: Report, metrics: dict) -> None:
    report.heading("Stages and timings")
    report.paragraph("Wall-clock seconds per stage, and the CPU seconds this process used (all threads); on a "
                     "machine shared with other work the wall time grows while the CPU time stays.")
    stages = metrics.get("stages", {})
    rows = [[name, s["status"], s["seconds"], s.get("cpu_seconds"), s["note"]] for name, s in stages.items()]
    rows.append(["**total**", "", metrics.get("total_seconds"), sum(s.get("cpu_seconds", 0.0) for s in stages.values()),
                 ""])
    report.table(["stage", "status", "wall s", "CPU s", "note"], rows, digits=1)


def _mlflow_section(report: Report, metrics: dict) -> None:
    ml = metrics.get("mlflow", {})
    if not ml.get("tracking_uri"):
        return
    report.heading("MLflow")
    report.paragraph("The demo is one parent run; every pipeline it ran is a nested run with its resolved config "
                     "(params and `config.yaml`), dataset manifest, metrics per step, sample pictures and exported "
                     "bundle (registered as a model version). Browse them with:")
    report.preformatted(ui_command(ml["tracking_uri"]))
    runs = ml.get("runs", [])
    if runs:
        report.table(["run", "run id", "parent", "status"],
                     [[r["name"], r["run_id"], "demo" if r.get("parent") else "-", r["status"]] for r in runs])
    models = ml.get("models", [])
    if models:
        report.table(["registered model", "version URI"], [[m["name"], m["uri"]] for m in models])
