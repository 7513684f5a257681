"""Tiny segmenters for tests, in every form ``--segmenter`` accepts (built in seconds, no training).

* :func:`threshold_torchscript`: an oracle TorchScript "network" (class 1 where HU > 0) + sidecar,
  so the expected mask is known exactly on any grid;
* :func:`medgen_segmenter_bundle`: a medgen bundle (``medgen.json``) with a seeded, untrained
  3D MONAI UNet: deterministic, several classes, the same layout ``medgen train segmenter`` writes;
* :func:`zoo_bundle`: a MONAI Model-Zoo style bundle (``configs/inference.json`` with a UNet
  ``network_def``, ``models/model.pt``, ``configs/metadata.json`` with ``network_data_format``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

UNET_KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [4, 8], "strides": [2],
               "num_res_units": 0}
NAMES = {0: "background", 1: "liver", 2: "spleen", 3: "kidney_left"}


class Threshold(torch.nn.Module):
    """Class 1 where the scaled input is above 0 (HU > 0 with a [-1000, 1000] window)."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x * 50.0], dim=1)


def threshold_torchscript(folder: Path, *, patch=(16, 16, 16)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "oracle.ts"
    torch.jit.script(Threshold()).save(str(path))
    (folder / "oracle.ts.yaml").write_text(yaml.safe_dump(
        {"spacing": None, "hu_window": [-1000, 1000], "patch_size": list(patch),
         "label_names": {0: "background", 1: "bright"}}))
    return path


def _unet(seed: int):
    from monai.networks.nets import UNet
    torch.manual_seed(seed)
    net = UNet(**UNET_KWARGS).eval()
    with torch.no_grad():  # make every class win somewhere: spread the final biases
        last = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose3d | torch.nn.Conv3d)][-1]
        last.bias.copy_(torch.tensor([0.3, 0.0, 0.0, 0.0]))
    return net


def medgen_segmenter_bundle(folder: Path, *, seed: int = 0, spacing=(3.0, 3.0, 3.0), patch=(32, 32, 16)) -> Path:
    """A medgen segmenter bundle (what ``medgen train segmenter`` exports), untrained but seeded."""
    from medgen.models.bundle import BundleSpec, save_bundle
    from medgen.models.segmenters import InputSpec
    spec = InputSpec(spacing=tuple(spacing) if spacing else None, a_min=-200, a_max=300, b_min=-1, b_max=1,
                     patch_size=tuple(patch))
    bundle = BundleSpec(kind="segmenter", network={"name": "monai.UNet", "kwargs": dict(UNET_KWARGS)},
                        label_names=dict(NAMES), extra={"input": spec.to_dict()},
                        metadata={"task": "CT segmentation", "description": "test segmenter",
                                  "network_data_format": {
                                      "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1,
                                                           "spatial_shape": list(patch), "dtype": "float32"}},
                                      "outputs": {"pred": {"type": "image", "format": "segmentation",
                                                           "num_channels": len(NAMES), "dtype": "float32",
                                                           "channel_def": {str(k): v for k, v in NAMES.items()}}}}})
    save_bundle(folder, bundle, _unet(seed))
    return folder


def zoo_bundle(folder: Path, *, seed: int = 1, pixdim=(2.5, 2.5, 3.0), roi=(32, 32, 16)) -> Path:
    """A MONAI Model-Zoo style segmentation bundle MONAI's own ``ConfigParser`` can run."""
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    config = {
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "UNet", **UNET_KWARGS},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": "no_channel"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": list(pixdim), "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -175, "a_max": 250, "b_min": 0.0,
             "b_max": 1.0, "clip": True}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(roi), "sw_batch_size": 1, "overlap": 0.25},
        # MONAI's own inference, Model-Zoo style (plain expressions instead of an ignite evaluator)
        "input_image": "",
        "output_dir": "$@bundle_root + '/eval'",
        "loader": {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": True, "to_tensor": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False, "print_log": False}]},
        "prepared": "$@preprocessing(@loader({'image': @input_image}))",
        "initialize": ["$import numpy", "$torch.set_grad_enabled(False)",
                       "$@network.load_state_dict(torch.load(@bundle_root + '/models/model.pt', weights_only=True))"],
        "run": ["$@postprocessing({**@prepared, 'pred': @inferer(@prepared['image'][None], @network.eval())[0]})"],
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    meta = {"version": "0.1.0", "monai_version": "1.6.0", "name": "test zoo bundle",
            "network_data_format": {
                "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                     "spatial_shape": list(roi), "dtype": "float32", "value_range": [0, 1],
                                     "is_patch_data": True}},
                "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(NAMES),
                                     "spatial_shape": list(roi), "dtype": "float32", "value_range": [0, 1],
                                     "is_patch_data": True,
                                     "channel_def": {str(k): v for k, v in NAMES.items()}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1))
    torch.save(_unet(seed).state_dict(), folder / "models" / "model.pt")
    return folder
