"""The tissue-painting generator (the network of a segmenter exported as a translator) and the synthesis
pairs' random warp."""

import numpy as np
import pytest
import torch

from medgen.data.synth_pairs import SynthPairSampler
from medgen.networks.tissue_generator import TissueGenerator
from medgen.transforms.random_warp import WarpRanges
from medgen.transforms.render import RenderConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_output_is_the_class_values_mixed_by_the_class_probabilities():
    net = TissueGenerator(spatial_dims=3, in_channels=1, out_channels=1, n_classes=3, channels=[4, 8], strides=[2])
    net.set_class_values(torch.tensor([-0.9, 0.1, 0.7]))
    x = torch.randn(2, 1, 9, 10, 5)  # odd sizes: padded to the stride inside, cropped back
    sct, logits = net(x, return_logits=True)
    assert sct.shape == x.shape and logits.shape == (2, 1, 3, 9, 10, 5)
    expected = (torch.softmax(logits, dim=2) * torch.tensor([-0.9, 0.1, 0.7]).view(1, 1, 3, 1, 1, 1)).sum(2)
    assert torch.allclose(sct, expected, atol=1e-6)
    assert torch.equal(net(x), sct)
    # a confident decision paints exactly the class value (bulk density)

    class Confident(torch.nn.Module):
        def forward(self, padded):
            logits = torch.zeros(padded.shape[0], 3, *padded.shape[2:])
            logits[:, 2] = 50.0
            return logits

    net.unet = Confident()
    out = net(x)
    assert out.shape == x.shape and torch.allclose(out, torch.full_like(out, 0.7), atol=1e-5)
    assert "class_values" in net.state_dict()


def test_2p5d_stack_gives_one_class_map_per_slice():
    net = TissueGenerator(spatial_dims=2, in_channels=3, out_channels=3, n_classes=4, channels=[4, 8], strides=[2])
    sct, logits = net(torch.randn(2, 3, 16, 12), return_logits=True)
    assert sct.shape == (2, 3, 16, 12) and logits.shape == (2, 3, 4, 16, 12)


def test_warp_moves_the_pair_together_and_keeps_class_ids_exact():
    shape = (40, 36, 20)
    classes = np.zeros(shape, np.int16)
    classes[10:30, 8:28, 4:16] = 3
    classes[16:24, 14:22, 7:13] = 5
    value = {0: -1.0, 3: 0.1, 5: 0.6}
    ct = np.vectorize(value.get)(classes).astype(np.float32)
    flat = RenderConfig(std=[0, 0], blur_mm=[0, 0], resolution_prob=0.0, bias_std=[0, 0], gamma_std=0.0,
                        noise_std=[0, 0])
    kwargs = dict(spacing=(2, 2, 3), render=flat, spatial_dims=3, patch_size=(24, 24, 12), context=1,
                  margin=(4, 4, 4), dark_classes=[0], foreground_prob=1.0)
    plain = SynthPairSampler([ct], [classes], seed=3, **kwargs).sample(4)
    warped = SynthPairSampler([ct], [classes], seed=3, warp=WarpRanges(rotate_deg=20, elastic_vox=2.0),
                              **kwargs).sample(4)
    assert warped.classes.shape == plain.classes.shape
    assert set(torch.unique(warped.classes).tolist()) <= {0, 3, 5}
    assert set(torch.unique(warped.mask).tolist()) <= {0.0, 1.0}
    assert not torch.equal(warped.classes, plain.classes)
    # the CT moved with the classes: away from edges (linear vs nearest) each class keeps its CT value
    for k, v in value.items():
        inside = warped.classes == k
        assert inside.any()
        assert float((warped.target[inside] - v).abs().median()) < 1e-4, k
    # the image was rendered from the warped classes: one intensity per class (a flat rendering)
    for image, cls in zip(warped.image, warped.classes):  # each sample has its own contrast
        for k in (3, 5):
            assert float(image[cls == k].std()) < 0.05
