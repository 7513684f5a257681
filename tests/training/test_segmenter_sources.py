"""Segmenter training on real + synthetic cases: the sampling rate between sources, and the pipeline wiring."""

import numpy as np
import pytest
import torch

from medgen.config import load_config
from medgen.data.phantoms import make_phantom
from medgen.errors import ConfigError, InputError
from medgen.io.volume import Volume
from medgen.io.writers import write_volume
from medgen.training.segmenter import CaseSampler, SegmenterConfig, body_quantiles

TINY = ["data.patch_size=[16,16,8]", "network.channels=[4,8]", "network.strides=[2]", "data.spacing=null",
        "train.validate_every=100", "train.checkpoint_every=100", "train.log_every=1"]


def _draws(sampler: CaseSampler, n: int, seed: int = 0) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return np.array([sampler.draw(gen) for _ in range(n)])


def test_real_cases_are_drawn_at_the_configured_rate():
    synthetic = [False, False] + [True] * 16
    draws = _draws(CaseSampler(synthetic, real_fraction=0.5), 4000)
    real_share = np.isin(draws, [0, 1]).mean()
    assert abs(real_share - 0.5) < 0.03  # binomial sd ~0.008
    assert set(draws) == set(range(18))  # uniform within each source: every case is used
    assert np.array_equal(draws, _draws(CaseSampler(synthetic, real_fraction=0.5), 4000))  # seeded
    assert set(_draws(CaseSampler(synthetic, real_fraction=1.0), 200)) <= {0, 1}
    assert not set(_draws(CaseSampler(synthetic, real_fraction=0.0), 200)) & {0, 1}


def test_without_a_rate_every_case_is_equally_likely_as_before():
    synthetic = [False, False] + [True] * 16
    draws = _draws(CaseSampler(synthetic, real_fraction=None), 4000)
    assert abs(np.isin(draws, [0, 1]).mean() - 2 / 18) < 0.02
    gen = torch.Generator().manual_seed(0)  # the exact draws of the sampler that predates sources
    assert draws[:50].tolist() == [int(torch.randint(18, (), generator=gen)) for _ in range(50)]
    # a rate with a single source falls back to the same uniform draws
    assert np.array_equal(_draws(CaseSampler([False] * 18, real_fraction=0.3), 50), draws[:50])


def test_real_fraction_is_validated_by_the_config_schema():
    config = load_config(None, SegmenterConfig, default="segmenter/ct_unet", overrides=["data.real_fraction=0.25"])
    assert config.data.real_fraction == 0.25
    assert SegmenterConfig().data.real_fraction is None
    with pytest.raises(ConfigError, match="real_fraction"):
        load_config(None, SegmenterConfig, default="segmenter/ct_unet", overrides=["data.real_fraction=1.5"])


def _write(folder, seeds, ct_offset=0.0):
    folder.mkdir(parents=True)
    imgs, labs = [], []
    for s in seeds:
        p = make_phantom(s, shape=(24, 24, 12), spacing=(8.0, 8.0, 12.0))
        imgs.append(write_volume(Volume(p.ct + ct_offset, p.affine), folder / f"case{s}_ct.nii.gz"))
        labs.append(write_volume(Volume(p.labels, p.affine), folder / f"case{s}_seg.nii.gz"))
    return imgs, labs, p.label_names


@pytest.mark.slow
def test_pipeline_trains_on_synthetic_cases_at_the_configured_rate(tmp_path, monkeypatch):
    from medgen.pipelines.train_segmenter import train_segmenter
    from medgen.training import segmenter as seg_module
    real_img, real_lab, names = _write(tmp_path / "real", [0])
    synth_img, synth_lab, _ = _write(tmp_path / "synth", [1, 2, 3], ct_offset=200.0)
    tasks = []
    monkeypatch.setattr(seg_module.SegmenterTask, "__init__", _recording(seg_module.SegmenterTask.__init__, tasks))
    config = load_config(None, SegmenterConfig, default="segmenter/ct_unet",
                         overrides=TINY + ["data.real_fraction=0.75"])
    run = tmp_path / "run"
    bundle = train_segmenter(config, images=real_img, labels=real_lab, output=run, label_names=names,
                             synthetic_images=synth_img, synthetic_labels=synth_lab,
                             max_steps=2, device="cpu", mlflow=False)
    sampler = tasks[0].sampler
    assert sampler.real_fraction == 0.75 and len(sampler.real) == 1 and len(sampler.synthetic) == 3
    roles = [line.split(",")[-1] for line in (run / "training_cases.csv").read_text().splitlines()[1:]]
    assert roles == ["train", "synthetic", "synthetic", "synthetic"]
    # the CT reference histogram (histogram-matching baseline) describes the real CTs only
    from medgen.io.readers import read_volume
    from medgen.models.segmenters import load_segmenter
    reference = np.array(load_segmenter(bundle).extra["ct_reference_quantiles"])
    assert np.allclose(reference, body_quantiles(read_volume(real_img[0]).array).round(2))
    with pytest.raises(InputError, match="given together"):
        train_segmenter(config, images=real_img, labels=real_lab, output=tmp_path / "r2", label_names=names,
                        synthetic_images=synth_img, max_steps=1, device="cpu", mlflow=False)


def _recording(init, tasks):
    def wrapped(self, *args, **kwargs):
        init(self, *args, **kwargs)
        tasks.append(self)
    return wrapped



def test_cli_passes_synthetic_inputs_to_the_pipeline(tmp_path, capsys):
    from medgen.cli import main
    img, lab, _ = _write(tmp_path / "real", [0])
    code = main(["train", "segmenter", "--images", str(img[0]), "--labels", str(lab[0]), "--synthetic-images",
                 str(img[0]), "-o", str(tmp_path / "run"), "--set", "data.real_fraction=0.5", "--no-mlflow"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--synthetic-labels" in err[0]
