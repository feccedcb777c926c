"""Augmentation views: inside the foreground, overlapping, seeded, anatomy kept; multi-crop's
local views too (the two backends' equality: tests/test_batched_views.py, tests/test_data_path.py)."""

import dataclasses

import numpy as np
import pytest
import torch

from medcl.augment import (apply_view, crop_cover, crop_iou, foreground_fraction, identity_view, make_pair, make_views,
                           sample_pair, sample_views)
from medcl.augment.params import foreground_box
from medcl.config import AugmentConfig


@pytest.mark.parametrize("seed", range(5))
def test_pairs_respect_foreground_and_overlap(mni_scan, seed):
    cfg = AugmentConfig(min_foreground=0.45, min_overlap=0.4)
    rng = np.random.default_rng(seed)
    lo, hi = foreground_box(mni_scan.mask)
    centre = (lo + hi) // 2
    for _ in range(20):
        a, b = sample_pair(rng, mni_scan.mask, cfg)
        assert crop_iou(a, b) >= 0.4
        for v in (a, b):
            assert foreground_fraction(mni_scan.mask, v) >= 0.45
            start, size = np.array(v.crop_start), np.array(v.crop_size)
            assert np.all(start >= lo) and np.all(start + size <= hi)
            # one scale for all axes keeps the head's proportions ...
            ratio = size / (hi - lo)
            assert ratio.max() - ratio.min() < 0.05
            # ... and with scale >= 0.5 every crop holds the centre (the ventricles)
            assert np.all(start <= centre) and np.all(centre < start + size)


def test_same_seed_same_views_other_seed_other_views(mni_scan):
    cfg = AugmentConfig(view_size=24)
    v1, v2, p = make_pair(mni_scan.image, mni_scan.mask, np.random.default_rng(3), cfg)
    w1, w2, q = make_pair(mni_scan.image, mni_scan.mask, np.random.default_rng(3), cfg)
    o1, _, r = make_pair(mni_scan.image, mni_scan.mask, np.random.default_rng(4), cfg)
    assert p == q and torch.equal(v1, w1) and torch.equal(v2, w2)
    assert p != r and not torch.allclose(v1, o1)


def test_view_shape_and_normalisation(mni_scan):
    cfg = AugmentConfig(view_size=32)
    v1, v2, _ = make_pair(mni_scan.image, mni_scan.mask, np.random.default_rng(0), cfg)
    for v in (v1, v2):
        assert v.shape == (1, 32, 32, 32) and v.dtype == torch.float32
        assert abs(float(v.mean())) < 1e-4 and abs(float(v.std()) - 1) < 1e-3


def test_identity_view_is_the_resized_foreground_box(mni_scan):
    p = identity_view(mni_scan.mask)
    v = apply_view(mni_scan.image, p, 24)
    lo, hi = foreground_box(mni_scan.mask)
    box = torch.as_tensor(mni_scan.image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])[None, None]
    ref = torch.nn.functional.interpolate(box, size=(24, 24, 24), mode="trilinear", align_corners=False)[0]
    lo_, hi_ = ref.min(), ref.max()
    ref = (ref - lo_) / (hi_ - lo_)
    ref = (ref - ref.mean()) / ref.std()
    assert torch.allclose(v, ref, atol=1e-4)


def test_impossible_constraints_fall_back_to_the_whole_box(mni_scan):
    cfg = AugmentConfig(min_foreground=0.99, max_tries=5)
    a, b = sample_pair(np.random.default_rng(0), mni_scan.mask, cfg)
    lo, hi = foreground_box(mni_scan.mask)
    assert a.crop_start == b.crop_start == tuple(lo) and a.crop_size == tuple(hi - lo)


def test_empty_mask_is_a_clear_error():
    with pytest.raises(ValueError, match="empty foreground"):
        sample_pair(np.random.default_rng(0), np.zeros((8, 8, 8), bool), AugmentConfig())


MULTI = AugmentConfig(view_size=24, local_views=4, local_size=12, local_scale=(0.3, 0.5), min_foreground=0.45,
                      min_overlap=0.5, spike_prob=0.5)


@pytest.mark.parametrize("seed", range(3))
def test_local_views_lie_inside_the_foreground_and_overlap_a_global_view(mni_scan, seed):
    rng = np.random.default_rng(seed)
    lo, hi = foreground_box(mni_scan.mask)
    for _ in range(10):
        views = sample_views(rng, mni_scan.mask, MULTI)
        assert len(views) == 2 + 4
        for v in views[2:]:
            start, size = np.array(v.crop_start), np.array(v.crop_size)
            assert np.all(start >= lo) and np.all(start + size <= hi)            # inside the foreground box
            assert foreground_fraction(mni_scan.mask, v) >= 0.45                 # mostly tissue
            assert max(crop_cover(v, g) for g in views[:2]) >= 0.5               # half of it in a global crop
            ratio = size / (hi - lo)
            assert 0.3 - 0.02 <= ratio.min() and ratio.max() <= 0.5 + 0.02 and ratio.max() - ratio.min() < 0.1
            assert all(0 <= c < 12 for c in v.spike_loc)                         # k-space of a 12^3 view


def test_local_views_are_seeded_and_leave_the_pair_unchanged(mni_scan):
    pair = sample_pair(np.random.default_rng(5), mni_scan.mask, MULTI)
    views = sample_views(np.random.default_rng(5), mni_scan.mask, MULTI)
    assert views[:2] == pair                                    # drawn after the pair: the pair is as without them
    assert views == sample_views(np.random.default_rng(5), mni_scan.mask, MULTI)
    assert views[2:] != sample_views(np.random.default_rng(6), mni_scan.mask, MULTI)[2:]
    off = dataclasses.replace(MULTI, local_views=0)
    assert sample_views(np.random.default_rng(5), mni_scan.mask, off) == pair
    v1, v2, local, params = make_views(mni_scan.image, mni_scan.mask, np.random.default_rng(5), MULTI)
    assert params == views and local.shape == (4, 1, 12, 12, 12) and v1.shape == (1, 24, 24, 24)
    assert torch.equal(local[1], apply_view(mni_scan.image, views[3], 12))
    assert make_views(mni_scan.image, mni_scan.mask, np.random.default_rng(5), off)[2] is None


def test_local_views_that_find_no_crop_fall_back_inside_the_first_global_crop(mni_scan):
    cfg = dataclasses.replace(MULTI, min_foreground=0.999, max_tries=3)
    views = sample_views(np.random.default_rng(0), mni_scan.mask, cfg)
    for v in views[2:]:
        assert crop_cover(v, views[0]) == 1.0
