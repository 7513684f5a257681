"""The contrast-agnostic segmenter: trained on renderings of phantom CT anatomy only, it segments
phantom MRs (T1 and T2) it never saw, and its reliability flag is low on a broken input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medgen.data.phantoms import make_phantom
from medgen.io.volume import Volume
from medgen.io.writers import write_volume

pytestmark = pytest.mark.slow

#: the large structures a 160-step tiny model already finds (a CPU-sized test; bench/synth_routes.py
#: measures every organ at a real training length)
STRUCTURES = ("fat", "muscle")
FLOOR = 0.25  # mean Dice over STRUCTURES on an MR contrast never seen (the CT segmenter on the MR: < 0.15)
TINY = ["data.spacing=[4,4,6]", "data.patch_size=[32,32,16]", "network.channels=[8,16,32]", "network.strides=[2,2]",
        "train.validate_every=1000", "train.checkpoint_every=1000", "train.lr=0.005", "train.log_every=50",
        "train.precision=fp32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from medgen.config import load_config
    from medgen.pipelines.train_segmenter import train_segmenter
    from medgen.training.segmenter import SegmenterConfig
    root = tmp_path_factory.mktemp("synth_seg")
    images, labels = [], []
    for seed in (0, 1, 2):
        p = make_phantom(seed, shape=(48, 48, 24), spacing=(4.0, 4.0, 6.0))
        images.append(write_volume(Volume(p.ct, p.affine), root / "ct" / f"c{seed}.nii.gz"))
        labels.append(write_volume(Volume(p.labels, p.affine), root / "lab" / f"c{seed}.nii.gz"))
    config = load_config(None, SegmenterConfig, default="segmenter/synth_unet", overrides=TINY)
    train_segmenter(config, images=images, labels=labels, output=root / "run", label_names=p.label_names,
                    max_steps=160, mlflow=False)
    return root, p.label_names


def _dice(mask: np.ndarray, truth: np.ndarray, names: dict, structures) -> dict[str, float]:
    by_name = {v: k for k, v in names.items()}
    out = {}
    for s in structures:
        a, b = mask == by_name[s], truth == by_name[s]
        out[s] = 2.0 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)
    return out


def test_segments_mr_contrasts_it_never_saw(trained):
    from medgen.inference.chain import segment_mr_volume
    from medgen.models.segmenters import load_segmenter
    root, names = trained
    seg = load_segmenter(root / "run")
    assert seg.contrast_agnostic and seg.spec.intensity == "percentile"
    for weighting in ("t1", "t2"):
        test = make_phantom(77, shape=(48, 48, 24), spacing=(4.0, 4.0, 6.0), mr_weighting=weighting)
        mr = Volume(test.mr, test.affine)
        direct = segment_mr_volume(mr, translator="none", segmenter=seg).mask.array
        scores = _dice(direct, test.labels, names, STRUCTURES)
        print(weighting, scores)
        assert np.mean(list(scores.values())) > FLOOR, (weighting, scores)


def test_agreement_is_low_on_a_broken_input(trained, tmp_path):
    from medgen.cli import main
    root, _ = trained
    test = make_phantom(78, shape=(48, 48, 24), spacing=(4.0, 4.0, 6.0), mr_weighting="t2")
    write_volume(Volume(test.mr, test.affine), tmp_path / "mrs" / "good.nii.gz")
    noise = np.random.default_rng(0).gamma(1.0, 1.0, test.mr.shape).astype(np.float32)
    write_volume(Volume(noise, test.affine), tmp_path / "mrs" / "broken.nii.gz")
    out = tmp_path / "masks"
    assert main(["segment-mr", "-i", str(tmp_path / "mrs"), "-o", str(out), "--translator", "none",
                 "--segmenter", str(root / "run"), "--agreement", "--qc", "auto", "-q"]) == 0
    cases = {c["case_id"]: c["agreement"] for c in json.loads((out / "segment_mr_summary.json").read_text())["cases"]}
    print(cases)
    assert cases["good"]["mean"] > cases["broken"]["mean"] + 0.15
    assert cases["broken"]["flagged"]
    assert json.loads((out / "broken.labels.json").read_text())
    assert (out / "broken_qc.png").stat().st_size > 5000


def test_curriculum_starts_on_the_ct_and_ends_on_renderings():
    """``synth.warmup``: early batches are the (normalised) CT itself, late ones renderings."""
    import torch

    from medgen.training.segmenter import SegmenterConfig, SegmenterTask, input_spec, plan_labels, prepare_case
    p = make_phantom(5, shape=(48, 48, 24), spacing=(4.0, 4.0, 6.0))
    config = SegmenterConfig(
        network={"channels": [4, 8], "strides": [2]},
        data={"spacing": [4.0, 4.0, 6.0], "patch_size": [16, 16, 8], "batch_size": 4, "intensity": "percentile"},
        augment={"prob": 0.0, "label_shift": 0.0}, train={"steps": 100},
        synth={"enabled": True, "real_fraction": 0.0, "warmup": 0.5})
    plan = plan_labels(p.label_names, None)
    case = prepare_case("c", Volume(p.ct, p.affine), Volume(p.labels, p.affine), input_spec(config), plan,
                        synth=config.synth)
    task = SegmenterTask(config, [case], [], plan.names, device=torch.device("cpu"), seed=0)
    ct_values = torch.from_numpy(np.unique(np.append(case.image.astype(np.float32), -1.0)))  # -1: padding

    def share_of_ct_patches(step: int) -> float:
        x, _ = task.batch(step)
        return float(np.mean([bool(torch.isin(patch.flatten(), ct_values).all()) for patch in x]))

    assert share_of_ct_patches(1) == 1.0          # step 1: the real CT only
    assert share_of_ct_patches(100) == 0.0        # after the warm-up: renderings only (real_fraction 0)
    assert task.real_share(25) == pytest.approx(1 - 24 / 49)


def test_structures_left_out_by_include_are_rendered_but_not_trained():
    """``--include`` keeps two phantom organs: the others are rendering classes of their own
    (``synth.other_structures: own_class``), never targets; ``hu_bands`` folds them into the bands."""
    from medgen.training.segmenter import SegmenterConfig, input_spec, plan_labels, prepare_case
    p = make_phantom(5, shape=(48, 48, 24), spacing=(4.0, 4.0, 6.0))
    kept = [p.label_names[1], p.label_names[2]]
    plan = plan_labels(p.label_names, kept)
    n_ids, n_bands = len(plan.names), 8

    def case(**synth):
        config = SegmenterConfig(data={"spacing": [4.0, 4.0, 6.0], "intensity": "percentile"},
                                 synth={"enabled": True, **synth})
        return prepare_case("c", Volume(p.ct, p.affine), Volume(p.labels, p.affine), input_spec(config), plan,
                            synth=config.synth)

    own, folded, classes_target = case(), case(other_structures="hu_bands"), case(target="classes")
    left_out = (p.labels > 2) & (p.ct > -500)  # organs the plan drops (not air-filled)
    assert set(np.unique(own.label)) <= set(range(n_ids))
    assert (own.classes[left_out] >= n_ids + n_bands).all()
    assert len(np.unique(own.classes[left_out])) == len(np.unique(p.labels[left_out]))
    assert (folded.classes < n_ids + n_bands).all()
    assert np.array_equal(own.label, folded.label)
    assert np.array_equal(classes_target.label, folded.classes)  # the classes target holds no left-out ids
