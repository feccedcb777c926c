"""Each scan's foreground box is computed once, when a pair source takes the cohort in, and the
views drawn with it are the views drawn without it (the box recomputed per pair, as before).

The box is checked against an independent oracle (``np.argwhere``'s min and max), the count of
box computations against the number of scans, and the views of both pair sources (batched:
:class:`ParamDrawer`, from arrays and from memory-mapped mask files; MONAI: :class:`ScanPairs`)
against :func:`sample_views` / :func:`make_views` called without a box, with the same seeds.
"""

import numpy as np
import pytest
import torch

import medcl.augment.params as params
import medcl.train.batched_pairs as batched_pairs
import medcl.train.monai_pairs as monai_pairs
from medcl.augment import make_views, sample_views
from medcl.config import AugmentConfig
from medcl.data.cohort import Cohort
from medcl.train.batched_pairs import ParamDrawer
from medcl.train.monai_pairs import ScanPairs
from medcl.train.pairs import load_scans
from medcl.train.store import cache_files

CFG = AugmentConfig(view_size=16, local_views=2, local_size=8)   # the pair and multi-crop's local views


@pytest.fixture
def counted(monkeypatch):
    """Counts every foreground_box call, wherever it is made from."""
    calls = []
    real = params.foreground_box

    def box(mask):
        calls.append(1)
        return real(mask)

    for module in (params, batched_pairs, monai_pairs):
        monkeypatch.setattr(module, "foreground_box", box)
    return calls


def _oracle(mask):
    idx = np.argwhere(mask)
    return idx.min(0), idx.max(0) + 1


def test_the_batched_source_computes_each_box_once(tiny_cohort, counted):
    cohort = Cohort.load(tiny_cohort)
    _, masks = load_scans(cohort)
    drawers = [ParamDrawer(CFG, 3, masks=masks), ParamDrawer(CFG, 3, mask_files=cache_files(cohort)[1])]
    assert len(counted) == 2 * len(masks)
    for drawer in drawers:
        for box, mask in zip(drawer.boxes, masks, strict=True):
            assert all(np.array_equal(a, b) for a, b in zip(box, _oracle(mask)))
        for epoch in (0, 1):
            counted.clear()
            got = drawer[(epoch, list(range(len(masks))))].pairs
            assert not counted                            # drawing views computes no box
            want = [sample_views(np.random.default_rng([3, epoch, i]), m, CFG) for i, m in enumerate(masks)]
            assert len(counted) == len(masks)             # the old way: one per scan and draw
            assert got == want


def test_the_monai_source_uses_the_same_boxes(tiny_cohort, counted):
    cohort = Cohort.load(tiny_cohort)
    images, masks = load_scans(cohort)
    pairs = ScanPairs(images, masks, cohort.label_ids(), CFG, seed=3)
    assert len(counted) == len(masks)
    assert all(np.array_equal(a, b) for box, m in zip(pairs.boxes, masks) for a, b in zip(box, _oracle(m)))
    pairs.epoch = 1
    for i in range(len(masks)):
        before = len(counted)
        got = pairs[i]
        assert len(counted) == before                     # making the views computes no box
        v1, v2, local, _ = make_views(images[i], masks[i], np.random.default_rng([3, 1, i]), CFG)
        assert torch.equal(got[0], v1) and torch.equal(got[1], v2) and torch.equal(got[3], local)


def test_a_given_box_is_used_and_is_read_only(mni_scan):
    box = params.foreground_box(mni_scan.mask)
    assert not box[0].flags.writeable and not box[1].flags.writeable
    rng = lambda: np.random.default_rng(11)  # noqa: E731
    assert sample_views(rng(), mni_scan.mask, CFG, box) == sample_views(rng(), mni_scan.mask, CFG)
    # a box that is not the mask's moves the crops: the argument is what the sampler uses
    lo, hi = box
    shifted = (lo + 2, hi + 2)
    views = sample_views(rng(), mni_scan.mask, CFG, shifted)
    assert views != sample_views(rng(), mni_scan.mask, CFG)
    assert all(np.all(np.array(v.crop_start) >= shifted[0]) for v in views[:2])
