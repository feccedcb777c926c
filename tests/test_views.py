"""Augmentation views: inside the foreground, overlapping, seeded, anatomy kept."""

import numpy as np
import pytest
import torch

from medcl.augment import apply_view, crop_iou, foreground_fraction, identity_view, make_pair, sample_pair
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
