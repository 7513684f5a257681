"""MONAI bundles both ways, checked voxel for voxel.

* medgen's own segmenter bundle runs with MONAI's bundle API (``ConfigParser`` on its
  ``configs/inference.json``) and gives the same mask as ``medgen segment``;
* medgen's translator bundle runs with ``monai.bundle.run`` (what ``python -m monai.bundle run`` calls) (network ``_target_``
  importable from medgen) and gives the same synthetic CT as ``medgen translate``;
* a MONAI Model-Zoo style bundle (UNet ``network_def``, ``models/model.pt``, metadata with
  ``network_data_format``) is accepted by ``--segmenter`` (no ``--trust-bundle`` needed: medgen
  evaluates none of its expressions) and gives the same mask as MONAI's own inference of it,
  on the network's own grid, after MONAI's resampling and after reorientation.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from seg_models import medgen_segmenter_bundle, zoo_bundle

from medgen.cli import main
from medgen.data.phantoms import make_phantom
from medgen.io.geometry import reorient
from medgen.io.readers import read_volume
from medgen.io.volume import Volume
from medgen.io.writers import write_volume

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(tmp_path, name: str, *, seed=3, shape=(40, 36, 20), spacing=(3.0, 3.0, 5.0), orientation="LPS",
           modality="ct") -> Path:
    p = make_phantom(seed, shape=shape, spacing=spacing)
    return write_volume(reorient(Volume(p.ct if modality == "ct" else p.mr, p.affine), orientation),
                        tmp_path / f"{name}.nii.gz")


def _monai_parser_run(bundle: Path, image: Path, out_dir: Path, extra: dict | None = None) -> Path:
    """MONAI's own bundle API: read the config, override the inputs, run ``initialize`` then ``run``."""
    from monai.bundle import ConfigParser
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(bundle), "input_image": str(image), "output_dir": str(out_dir), **(extra or {})})
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    return out_dir / image.name.replace(".nii.gz", "_seg.nii.gz")


def _medgen_segment(image: Path, bundle: Path, out: Path) -> Volume:
    assert main(["segment", "-q", "-i", str(image), "-o", str(out), "-m", str(bundle), "--no-mlflow",
                 "--device", "cpu", "--precision", "fp32"]) == 0
    return read_volume(out, kind="label")


@pytest.mark.parametrize("slices", [20, 4], ids=["whole", "thin_slab"])
def test_medgen_segmenter_bundle_runs_with_monai_config_parser_same_mask(tmp_path, slices):
    bundle = medgen_segmenter_bundle(tmp_path / "bundle")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    module, cls = config["network_def"]["_target_"].rsplit(".", 1)
    assert getattr(importlib.import_module(module), cls)  # an importable _target_
    # thin_slab: 4 slices of 5 mm, shorter than the 16 x 3 mm window: extended by repeating its ends
    image = _image(tmp_path, "ct", shape=(40, 36, slices))
    ours = _medgen_segment(image, bundle, tmp_path / "medgen_mask.nii.gz")
    theirs = read_volume(_monai_parser_run(bundle, image, tmp_path / "monai", {"device": "$torch.device('cpu')"}),
                         kind="label")
    assert theirs.same_grid(ours) and len(np.unique(ours.array)) >= 3
    np.testing.assert_array_equal(theirs.array, ours.array)


def test_medgen_translator_bundle_runs_with_monai_bundle_run_same_sct(tmp_path):
    from medgen.pipelines.train_translator import export_translator
    from medgen.runtime import seed_everything
    from medgen.training.translator import TranslatorConfig, build_networks
    config = TranslatorConfig.model_validate({
        "model": {"spatial_dims": 2, "context": 3, "features": 4, "n_blocks": 1}, "data": {"patch_size": [16, 16]},
        "preprocess": {"ct": {"modality": "ct", "ct": {"window": [-1000, 1500]}}}})
    seed_everything(0)
    bundle = export_translator(tmp_path / "translator", config, build_networks(config.model)["g_mr2ct"], steps=0)
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["network_def"]["_target_"] == "medgen.networks.resnet_generator.ResnetGenerator"
    mr = _image(tmp_path, "mr", modality="mr", shape=(36, 32, 10))
    assert main(["translate", "-q", "-i", str(mr), "-o", str(tmp_path / "sct.nii.gz"), "-m", str(bundle),
                 "--device", "cpu", "--precision", "fp32"]) == 0
    out = tmp_path / "monai"
    # monai.bundle.run is what `python -m monai.bundle run --config_file ... --input_image ...` calls
    # (in-process here: a second interpreter would spend ~15 s importing torch and MONAI again)
    from monai.bundle import run
    run(config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle), input_image=str(mr), output_dir=str(out), device="$torch.device('cpu')")
    ours, theirs = read_volume(tmp_path / "sct.nii.gz"), read_volume(out / "mr_sct.nii.gz")
    assert theirs.same_grid(ours) and ours.array.std() > 0
    np.testing.assert_array_equal(theirs.array, ours.array)


@pytest.mark.parametrize("case", ["network_grid", "resampled", "reoriented"])
def test_model_zoo_bundle_accepted_by_segmenter_same_mask_as_monai(tmp_path, case):
    bundle = zoo_bundle(tmp_path / "zoo", pixdim=(2.5, 2.5, 3.0), roi=(32, 32, 16))
    image = {"network_grid": lambda: _image(tmp_path, "ct", shape=(32, 32, 16), spacing=(2.5, 2.5, 3.0)),
             "resampled": lambda: _image(tmp_path, "ct"),
             "reoriented": lambda: _image(tmp_path, "ct", orientation="PIL")}[case]()
    ours = _medgen_segment(image, bundle, tmp_path / "medgen_mask.nii.gz")
    theirs = read_volume(_monai_parser_run(bundle, image, tmp_path / "monai"), kind="label")
    assert theirs.same_grid(ours) and len(np.unique(ours.array)) >= 3
    np.testing.assert_array_equal(theirs.array, ours.array)
