"""The random-contrast renderer and the on-the-fly warp of the synthesis route."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen.data.phantoms import make_phantom
from medgen.transforms.random_warp import WarpRanges, identity_grid, random_grid, warp_nearest
from medgen.transforms.render import (RandContrastRender, RandContrastRenderd, RenderConfig, add_structures,
                                      cortical_bands, render_classes, tissue_classes)


@pytest.fixture(scope="module")
def phantom_classes():
    p = make_phantom(3, shape=(48, 48, 24), spacing=(4.0, 4.0, 6.0))
    n_ids = int(p.labels.max()) + 1
    return torch.from_numpy(render_classes(p.labels, p.ct, n_label_ids=n_ids).astype(np.int64)), p, n_ids


def _class_means(img: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    ids = torch.unique(classes)
    return np.array([float(img[classes == c].mean()) for c in ids])


def test_tissue_bands_fill_the_unlabelled_voxels_and_keep_labels(phantom_classes):
    classes, p, n_ids = phantom_classes
    labelled = p.labels > 0
    assert torch.equal(classes[torch.from_numpy(labelled)], torch.from_numpy(p.labels[labelled].astype(np.int64)))
    # air outside the body is the darkest band, a separate class from every label
    assert int(classes[0, 0, 0]) == n_ids + 0
    assert tissue_classes(np.array([-1000.0, -100.0, 10.0, 60.0, 800.0])).tolist() == [0, 2, 3, 4, 7]
    t = tissue_classes(torch.tensor([-1000.0, 800.0]))
    assert t.tolist() == [0, 7]


def test_rendering_is_deterministic_for_a_seed_and_in_range(phantom_classes):
    classes, _, _ = phantom_classes
    r = RandContrastRender((4.0, 4.0, 6.0))
    r.set_random_state(seed=7)
    a = r(classes)
    r.set_random_state(seed=7)
    b = r(classes)
    r.set_random_state(seed=8)
    c = r(classes)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == classes.shape and a.dtype == torch.float32
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    # the parameters drawn by randomize() replay exactly with randomize=False
    assert torch.equal(r(classes, randomize=False), r(classes, randomize=False))


def test_class_order_of_intensities_varies_across_seeds(phantom_classes):
    classes, _, _ = phantom_classes
    cfg = RenderConfig(std=[0.0, 0.0], noise_std=[0.0, 0.0], bias_std=[0.0, 0.0], resolution_prob=0.0,
                       blur_mm=[0.0, 0.0])
    orders = set()
    for seed in range(12):
        r = RandContrastRender((4.0, 4.0, 6.0), cfg)
        r.set_random_state(seed=seed)
        orders.add(tuple(np.argsort(_class_means(r(classes), classes))))
    assert len(orders) >= 10  # (almost) every seed ranks the tissues differently: no fixed contrast


def test_intensity_steps_leave_the_classes_alone_and_each_class_is_one_mixture_component(phantom_classes):
    classes, _, _ = phantom_classes
    before = classes.clone()
    cfg = RenderConfig(std=[0.0, 0.0], noise_std=[0.0, 0.0], bias_std=[0.0, 0.0], resolution_prob=0.0,
                       blur_mm=[0.0, 0.0])
    r = RandContrastRender((4.0, 4.0, 6.0), cfg)
    r.set_random_state(seed=1)
    img = r(classes)
    assert torch.equal(classes, before)
    for c in torch.unique(classes):  # no blur, no noise, no bias: one value per class
        assert float(img[classes == c].std()) < 1e-5


def test_cortical_bone_renders_dark_as_often_as_bone_dark_prob_says():
    """Cortical bone has no signal in conventional MR: with ``bone_dark_prob`` 1 its class is dark in every
    rendering, with 0 it is as random as any tissue; an empty list changes nothing."""
    n_ids = 3
    bone = n_ids + cortical_bands()[0]
    assert cortical_bands() == [7] and cortical_bands([-500, 100, 400, 900]) == [3, 4]
    classes = torch.full((12, 12, 6), n_ids + 4, dtype=torch.long)  # soft tissue ...
    classes[4:8, 4:8, :] = bone                                      # ... around a cortical bone block
    classes[:2] = n_ids                                              # and air
    flat = {"std": [0.0, 0.0], "noise_std": [0.0, 0.0], "bias_std": [0.0, 0.0], "resolution_prob": 0.0,
            "blur_mm": [0.0, 0.0], "gamma_std": 0.0}
    means = {}
    for prob in (1.0, 0.0):
        r = RandContrastRender((2.0, 2.0, 3.0), RenderConfig(**flat, bone_dark_prob=prob), dark_classes=[n_ids],
                               void_classes=[bone])
        drawn = []
        for seed in range(20):
            r.set_random_state(seed=seed)
            r(classes)
            drawn.append(r.params["means"])
        means[prob] = np.array(drawn)
    dark_max = RenderConfig().dark_max
    assert (means[1.0][:, bone] <= dark_max).all()
    assert (means[0.0][:, bone] > dark_max).mean() > 0.5
    # without void classes the renderer draws exactly what it drew before they existed
    plain, with_none = RandContrastRender((2.0, 2.0, 3.0)), RandContrastRender((2.0, 2.0, 3.0), void_classes=[])
    for r in (plain, with_none):
        r.set_random_state(seed=4)
    assert torch.equal(plain(classes), with_none(classes))


def test_resolution_simulation_keeps_the_grid_and_smooths_along_the_slice_axis(phantom_classes):
    classes, _, _ = phantom_classes
    base = dict(std=[0.0, 0.0], noise_std=[0.0, 0.0], bias_std=[0.0, 0.0], blur_mm=[0.0, 0.0])
    sharp = RandContrastRender((4.0, 4.0, 6.0), RenderConfig(**base, resolution_prob=0.0))
    thick = RandContrastRender((4.0, 4.0, 6.0), RenderConfig(**base, resolution_prob=1.0, slice_mm=[18.0, 18.0],
                                                             inplane_mm=[0.5, 0.5], slice_axis_probs=[0, 0, 1]))
    sharp.set_random_state(seed=2)
    thick.set_random_state(seed=2)
    a, b = sharp(classes), thick(classes)
    assert b.shape == a.shape == classes.shape
    dz = lambda x: float((x[:, :, 1:] - x[:, :, :-1]).abs().mean())  # noqa: E731
    dx = lambda x: float((x[1:] - x[:-1]).abs().mean())  # noqa: E731
    assert dz(b) < 0.6 * dz(a)  # thick slices: less detail along z ...
    assert dx(b) > 0.7 * dx(a)  # ... while the in-plane detail stays


def test_warp_moves_labels_exactly_with_the_anatomy(phantom_classes):
    classes, p, _ = phantom_classes
    label = torch.from_numpy(p.labels.astype(np.int64))
    stacked = torch.stack([classes, label])[None]
    assert torch.equal(warp_nearest(stacked, identity_grid(tuple(classes.shape))), stacked)
    grid = random_grid(tuple(classes.shape), torch.Generator().manual_seed(0), WarpRanges(rotate_deg=20))
    warped = warp_nearest(stacked, grid)[0]
    assert not torch.equal(warped[1], label)
    assert set(warped[1].unique().tolist()) <= set(label.unique().tolist())
    lab = warped[1] > 0  # where the warped label is an organ, the warped class map is that same organ
    assert torch.equal(warped[0][lab], warped[1][lab])


def test_dict_wrapper_replays_the_array_transform(phantom_classes):
    classes, _, _ = phantom_classes
    d = RandContrastRenderd("classes", spacing=(4.0, 4.0, 6.0)).set_random_state(seed=5)
    r = RandContrastRender((4.0, 4.0, 6.0)).set_random_state(seed=5)
    out = d({"classes": classes, "label": "kept"})
    assert torch.equal(out["image"], r(classes)) and out["label"] == "kept"


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="slice_mm"):
        RenderConfig(slice_mm=[8.0, 1.0])
    with pytest.raises(ValueError, match="spacing"):
        RandContrastRender((1.0, 0.0, 1.0))


def test_the_class_median_keeps_ct_noise_from_speckling_a_tissue_into_two_bands():
    """A 3-voxel median before banding: a noisy tissue near a band edge is one class, labels stay."""
    rng = np.random.default_rng(0)
    hu = np.full((12, 12, 12), 60.0, np.float32)  # soft tissue (20..100 HU band)
    hu[:, :, :6] = -100.0  # and a fat block beside it
    speckled = rng.random(hu.shape) < 0.1
    hu[speckled & (hu > 0)] = 10.0  # noise voxels that fall into the fluid band (-30..20)
    labels = np.zeros(hu.shape, np.int16)
    labels[0, 0, 0] = 1  # a labelled voxel keeps its label whatever the CT says
    raw = render_classes(labels, hu, n_label_ids=2)
    smooth = render_classes(labels, hu, n_label_ids=2, median=3)
    fluid, soft, fat = 2 + 3, 2 + 4, 2 + 2
    assert (raw == fluid).sum() > 50  # without the filter the tissue is speckled
    interior = np.s_[1:-1, 1:-1, 7:-1]
    assert (smooth[interior] == soft).all()
    assert (smooth[1:-1, 1:-1, 1:5] == fat).all()
    assert smooth[0, 0, 0] == 1 and raw[0, 0, 0] == 1
    assert (render_classes(labels, hu, n_label_ids=2, median=1) == raw).all()


def test_structures_left_out_of_the_target_render_as_classes_of_their_own_unless_air_filled():
    """SynthSeg's generation labels: a left-out soft-tissue structure gets its own class (after the
    bands), an air-filled one keeps its air band, trained labels and other voxels are unchanged."""
    hu = np.full((10, 10, 10), 40.0, np.float32)  # soft tissue everywhere
    hu[:, :, :3] = -900.0  # an air-filled slab
    labels = np.zeros(hu.shape, np.int16)
    labels[5:8, 5:8, 5:8] = 1
    structures = np.zeros(hu.shape, np.int16)
    structures[:, :, :3] = 2  # "lung": air-filled
    structures[0:4, 0:4, 4:9] = 1  # "colon": soft tissue
    structures[6, 6, 6] = 1  # overlaps a trained label: the label wins
    n_ids, bands = 2, [-500.0, 100.0]
    plain = render_classes(labels, hu, n_label_ids=n_ids, bands=bands)
    with_others = add_structures(plain, structures, n_label_ids=n_ids, bands=bands, hu=hu)
    first = n_ids + len(bands)
    assert (with_others[0:4, 0:4, 4:9] == first + 1).all()
    assert (with_others[:, :, :3] == plain[:, :, :3]).all() and (plain[:, :, :3] == n_ids + 0).all()
    rest = np.ones(hu.shape, bool)
    rest[0:4, 0:4, 4:9] = False
    assert (with_others[rest] == plain[rest]).all()
    assert (with_others[labels > 0] == 1).all()
    # without a CT the structures fill the unlabelled voxels (nothing is known to be air)
    no_ct = add_structures(render_classes(labels, None, n_label_ids=n_ids, bands=bands), structures,
                           n_label_ids=n_ids, bands=bands)
    assert (no_ct[:, :, :3] == first + 2).all() and (no_ct[labels > 0] == 1).all()
