"""The batched device path against the MONAI reference path, for the same ViewParams.

What must hold, and how tightly:

- the parameters mean the same thing in both paths (rotation order, scale, shear, flip, crop
  and resize): on a *linear* image, trilinear interpolation is exact, so every resampling method
  of the batched path (``two-stage``: MONAI's resize then affine, batched; ``composed``: one
  resampling for all) must give MONAI's volume to float precision; a difference in the meaning
  of a parameter shows up there as a gross error;
- the intensity steps (min-max, gamma, contrast, bias field, spike, Gibbs, noise, blur,
  z-score) are the same formulas: on the same resampled input the two paths agree to float
  precision, noise included (same generator and seed on the CPU);
- on a real scan, ``two-stage`` (the CPU default) computes what MONAI computes, so the finished
  views agree to float precision; ``composed`` (the GPU default) interpolates once where MONAI
  interpolates twice. A value interpolated once or twice is a convex combination of source
  voxels within ``ceil(n / S) + 1`` voxels of the view voxel's source point (``n`` the crop
  edge, ``S`` the view edge), so per voxel the two can differ by at most the source's range of
  values there; that bound is tested, with the overall agreement it implies (correlation > 0.98).
"""

import dataclasses

import numpy as np
import pytest
import torch
from monai.transforms.utils import create_rotate, create_shear
from scipy.ndimage import maximum_filter, minimum_filter

from medcl.augment import apply_view, crop_iou, foreground_fraction, sample_pair, sample_views
from medcl.augment.batched import (apply_pairs, apply_views, resample_views, rotation_matrices, sampling_grid,
                                   shear_matrices)
from medcl.augment.intensity import draw_noise, intensity_views
from medcl.augment.params import N_BIAS, ViewParams
from medcl.augment.views import intensity_view, resample_view
from medcl.config import AugmentConfig

ALL_ON = AugmentConfig(view_size=24, shear=0.06, gibbs_prob=0.5, spike_prob=0.5, blur_prob=0.5, rotate_deg=15)


def _pairs(mask, cfg, n, seed):
    rng = np.random.default_rng(seed)
    return [sample_pair(rng, mask, cfg) for _ in range(n)]


def _flat(pairs):
    return [p for pair in pairs for p in pair]


def test_matrices_are_monais():
    rng = np.random.default_rng(0)
    angles, shears = rng.uniform(-0.5, 0.5, (8, 3)), rng.uniform(-0.3, 0.3, (8, 6))
    ours_r = rotation_matrices(torch.tensor(angles))
    ours_s = shear_matrices(torch.tensor(shears))
    for a, s, r_, s_ in zip(angles, shears, ours_r, ours_s):
        assert np.allclose(r_.numpy(), create_rotate(3, tuple(a))[:3, :3], atol=1e-12)
        assert np.allclose(s_.numpy(), create_shear(3, tuple(s))[:3, :3], atol=1e-12)


@pytest.mark.parametrize("method", ["two-stage", "two-stage-3d", "composed"])
def test_geometry_is_monais_on_a_linear_image(mni_scan, method):
    """Same parameters, same geometry: flips both ways, rotation, scale, shear, crop, resize.
    View 24 from crops of >= 30 voxels (downsampling; with upsampling, MONAI's resize clamps
    before its affine interpolates, which ``composed`` does not copy within a voxel of the border)."""
    d, h, w = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in mni_scan.image.shape], indexing="ij")
    ramp = torch.from_numpy(0.3 * d + 0.5 * h - 0.7 * w)
    pairs = _pairs(mni_scan.mask, ALL_ON, 6, seed=1)
    pairs[0] = tuple(dataclasses.replace(p, flip_lr=f) for p, f in zip(pairs[0], (True, False)))
    pairs[1] = tuple(dataclasses.replace(p, rotate=(0.0,) * 3, scale=(1.0,) * 3, shear=(0.0,) * 6) for p in pairs[1])
    assert any(any(p.shear) for p in _flat(pairs)) and {p.flip_lr for p in _flat(pairs)} == {True, False}
    ref = torch.stack([resample_view(ramp, p, 24)[0] for p in _flat(pairs)])
    out = resample_views([ramp] * len(pairs), pairs, 24, method=method)
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) < 1e-3      # values span ~60: float32 precision


def test_intensity_steps_are_monais(mni_scan):
    """Every step on (spike, Gibbs, noise, blur on some views, off on others), same input."""
    pairs = _pairs(mni_scan.mask, ALL_ON, 6, seed=2)
    params = _flat(pairs)
    params[0] = dataclasses.replace(params[0], gamma=1.0, contrast=1.0, bias=(0.0,) * N_BIAS, noise_std=0.0)
    for field in ("gibbs_alpha", "spike_intensity", "blur_sigma"):
        assert any(getattr(p, field) for p in params) and not all(getattr(p, field) for p in params), field
    x = torch.stack([resample_view(mni_scan.image, p, 24)[0] for p in params])
    ref = torch.stack([intensity_view(v[None], p)[0] for v, p in zip(x, params)])
    for fused in (True, False):      # the CPU's fused numba passes, and the torch operations of a GPU
        out = intensity_views(x.clone(), params, fused=fused)
        assert float((out - ref).abs().max()) < 1e-4, fused


def test_noise_draws_are_the_monai_paths_in_any_number_of_threads(mni_scan):
    params = [p for p in _flat(_pairs(mni_scan.mask, ALL_ON, 5, seed=4))]
    params[3] = dataclasses.replace(params[3], noise_std=0.0)
    one, rows = draw_noise(params, 24, threads=1)
    two, rows2 = draw_noise(params, 24, threads=2)
    assert rows == rows2 and rows[3] == -1 and len(one) == len(params) - 1 and torch.equal(one, two)
    for p, r in zip(params, rows):
        if r >= 0:
            ref = torch.randn((1, 24, 24, 24), generator=torch.Generator().manual_seed(p.noise_seed))
            assert torch.equal(one[r:r + 1], ref)


def test_two_stage_views_are_monais_on_a_real_scan(mni_scan):
    """The CPU default computes MONAI's steps: the same finished views, every option on."""
    img = torch.from_numpy(mni_scan.image.astype(np.float16))
    pairs = _pairs(mni_scan.mask, ALL_ON, 6, seed=3)
    pairs[0] = tuple(dataclasses.replace(p, rotate=(0.0,) * 3, scale=(1.0,) * 3, shear=(0.0,) * 6, flip_lr=True)
                     for p in pairs[0])                 # MONAI skips the affine here, and so must we
    ref = torch.stack([apply_view(img, p, 24) for p in _flat(pairs)])
    for method in ("two-stage", "two-stage-3d"):
        out = apply_views([img] * len(pairs), pairs, 24, method=method)
        assert float((out - ref).abs().max()) < 1e-3, method     # z-scored values: float32 rounding


def test_composed_views_stay_within_one_interpolation_of_monais(mni_scan):
    img = torch.from_numpy(mni_scan.image.astype(np.float16))
    pairs = _pairs(mni_scan.mask, ALL_ON, 6, seed=3)
    params = _flat(pairs)
    s = ALL_ON.view_size
    ref = torch.stack([resample_view(img, p, s)[0] for p in params])
    out = resample_views([img] * len(pairs), pairs, s, method="composed")
    src = mni_scan.image.astype(np.float16).astype(np.float32)
    for p, a, b in zip(params, ref, out):
        crop = src[tuple(slice(c, c + n) for c, n in zip(p.crop_start, p.crop_size))]
        r = int(np.ceil(max(p.crop_size) / s)) + 1
        hi, lo = maximum_filter(crop, size=2 * r + 1), minimum_filter(crop, size=2 * r + 1)
        g = sampling_grid([p], s, p.crop_size)[0].reshape(-1, 3).flip(-1)         # (d, h, w), normalised
        n = torch.tensor(p.crop_size, dtype=torch.float32)
        at = torch.round(((g + 1) * n - 1) / 2).long().clamp(min=torch.zeros(3, dtype=torch.long), max=n.long() - 1)
        bound = torch.from_numpy(hi - lo)[at[:, 0], at[:, 1], at[:, 2]].view(s, s, s)
        assert bool(((a - b).abs() <= bound + 1e-4).all())
    ref = torch.stack([apply_view(img, p, s)[0] for p in params])
    out = apply_views([img] * len(pairs), pairs, s, method="composed")[:, 0]
    corr = [np.corrcoef(u.ravel(), v.ravel())[0, 1] for u, v in zip(ref, out)]
    assert min(corr) > 0.98 and float((ref - out).abs().mean()) < 0.1


@pytest.mark.parametrize("method", ["two-stage", "composed"])
def test_without_an_affine_the_views_are_monais(mni_scan, method):
    """No rotation, scale or shear: MONAI resamples once (resize), so does every method."""
    img = torch.from_numpy(mni_scan.image.astype(np.float16))
    pairs = [tuple(dataclasses.replace(p, rotate=(0.0,) * 3, scale=(1.0,) * 3, shear=(0.0,) * 6) for p in pair)
             for pair in _pairs(mni_scan.mask, ALL_ON, 4, seed=4)]
    ref = torch.stack([apply_view(img, p, 24) for p in _flat(pairs)])
    out = apply_views([img] * len(pairs), pairs, 24, method=method)
    assert float((out - ref).abs().max()) < 1e-3


def test_views_are_normalised_seeded_and_source_major(mni_scan):
    img = torch.from_numpy(mni_scan.image.astype(np.float16))
    pairs = _pairs(mni_scan.mask, AugmentConfig(view_size=24), 3, seed=5)
    v1, v2 = apply_pairs([img] * 3, pairs, 24)
    assert v1.shape == v2.shape == (3, 1, 24, 24, 24) and v1.dtype == torch.float32
    flat = torch.cat([v1, v2]).view(6, -1)
    assert float(flat.mean(1).abs().max()) < 1e-4 and float((flat.std(1) - 1).abs().max()) < 1e-3
    again = apply_views([img] * 3, pairs, 24)
    assert torch.equal(again[0::2], v1) and torch.equal(again[1::2], v2)      # pair b = rows 2b, 2b + 1
    other = [(dataclasses.replace(a, noise_seed=a.noise_seed + 1), b) for a, b in pairs]
    assert not torch.allclose(apply_pairs([img] * 3, other, 24)[0], v1)


def test_part_of_a_scan_gives_the_same_views(mni_scan):
    """Streaming hands over only the region of the two crops, with its origin: same views."""
    img = torch.from_numpy(mni_scan.image.astype(np.float16))
    pairs = _pairs(mni_scan.mask, AugmentConfig(view_size=24), 3, seed=6)
    whole = apply_pairs([img] * 3, pairs, 24)
    regions, origins = [], []
    for a, b in pairs:
        lo = [min(a.crop_start[k], b.crop_start[k]) for k in range(3)]
        hi = [max(a.crop_start[k] + a.crop_size[k], b.crop_start[k] + b.crop_size[k]) for k in range(3)]
        regions.append(img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].clone())
        origins.append(lo)
    part = apply_pairs(regions, pairs, 24, origins=origins)
    assert all(torch.allclose(u, v, atol=1e-4) for u, v in zip(whole, part))
    with pytest.raises(ValueError, match="outside"):
        apply_pairs([r[1:] for r in regions], pairs, 24, origins=origins)


def test_views_keep_the_anatomy(mni_scan):
    """The anatomy constraints are the sampler's (crop foreground, pair overlap): every pair the
    batched path gets satisfies them exactly, and the views it makes from them keep nearly that
    much tissue: pushed through the same geometry, the mask covers at least
    ``min_foreground - 0.1`` of each view (the small affine, <= 10 degrees and <= 8 %, moves part
    of the view across the crop's border)."""
    # small crops (half to three quarters of the head box), so that unchecked pairs would often
    # overlap less than asked: the constraint must do work here
    cfg = AugmentConfig(view_size=24, crop_scale=(0.5, 0.75), min_foreground=0.55, min_overlap=0.5)
    pairs = _pairs(mni_scan.mask, cfg, 30, seed=7)
    for a, b in pairs:
        assert crop_iou(a, b) >= cfg.min_overlap
        assert min(foreground_fraction(mni_scan.mask, a), foreground_fraction(mni_scan.mask, b)) >= cfg.min_foreground
    mask = torch.from_numpy(mni_scan.mask.astype(np.float32))
    warped = resample_views([mask] * len(pairs), pairs, 24)
    kept = (warped > 0.5).float().mean((1, 2, 3))
    assert float(kept.min()) >= cfg.min_foreground - 0.1


def test_optional_parameters_are_drawn_only_when_asked(mni_scan):
    plain = _pairs(mni_scan.mask, AugmentConfig(), 5, seed=8)
    assert all(p.shear == (0.0,) * 6 and p.gibbs_alpha == 0 and p.spike_intensity == 0 for p in _flat(plain))
    rich = _flat(_pairs(mni_scan.mask, AugmentConfig(shear=0.05, gibbs_prob=1.0, spike_prob=1.0), 5, seed=8))
    assert all(any(p.shear) and 0.3 <= p.gibbs_alpha <= 0.6 and p.spike_intensity > 0 for p in rich)
    s = AugmentConfig().view_size
    assert all(p.spike_loc != (s // 2,) * 3 and all(0 <= c < s for c in p.spike_loc) for p in rich)


def test_old_view_params_still_construct():
    """ViewParams keeps its positional fields; the new ones default to off."""
    p = ViewParams((0, 0, 0), (8, 8, 8), (0.0,) * 3, (1.0,) * 3, False, 1.0, 1.0, (0.0,) * N_BIAS, 0.0, 0, 0.0)
    assert p.shear == (0.0,) * 6 and p.gibbs_alpha == 0.0 and p.spike_intensity == 0.0


def test_a_view_does_not_depend_on_the_rest_of_its_batch(mni_scan):
    """Bit for bit: under DDP a rank makes part of the batch that one process makes whole."""
    img = torch.from_numpy(mni_scan.image.astype(np.float16))
    pairs = _pairs(mni_scan.mask, dataclasses.replace(ALL_ON, blur_prob=1.0), 4, seed=9)
    whole = apply_views([img] * 4, pairs, 24)
    alone = torch.cat([apply_views([img], [pair], 24) for pair in pairs])
    assert torch.equal(whole, alone)


def test_sparse_anatomy_still_fills_every_view():
    """A mask whose box is mostly empty (a slab, and a thin line that stretches the box to three
    times the slab): most crops of it are mostly background, so only the sampler's constraint
    keeps every view's tissue."""
    mask = np.zeros((40, 40, 40), bool)
    mask[:, :, :16] = True
    mask[0, 0, :] = True
    cfg = AugmentConfig(view_size=16, crop_scale=(0.5, 0.6), min_foreground=0.6, min_overlap=0.0, max_tries=200)
    for a, b in _pairs(mask, cfg, 20, seed=10):
        assert min(foreground_fraction(mask, a), foreground_fraction(mask, b)) >= cfg.min_foreground


def test_cpu_resize_is_torchs_interpolate_for_every_storage_layout(mni_scan):
    """The numba resize reads crops in place from one fp16 store (the training cache), from
    one float32 tensor, or copies them from separate tensors: every way gives
    ``F.interpolate(trilinear, align_corners=False)`` to float32 rounding, up- and downsampling."""
    import torch.nn.functional as F

    from medcl.augment.batched import resize_crops

    img = torch.from_numpy(mni_scan.image.astype(np.float16))
    params = _flat(_pairs(mni_scan.mask, AugmentConfig(view_size=24, crop_scale=(0.3, 1.0)), 6, seed=11))
    for s in (24, 40):
        ref = torch.stack([F.interpolate(img[tuple(slice(a, a + n) for a, n in zip(p.crop_start, p.crop_size))]
                                         .float()[None, None], size=(s,) * 3, mode="trilinear",
                                         align_corners=False)[0, 0] for p in params])
        for name, sources in (("fp16 store", [img] * len(params)), ("float32 tensor", [img.float()] * len(params)),
                              ("separate", [img.clone() for _ in params])):
            out = resize_crops(sources, params, s, torch.device("cpu"))
            assert float((out - ref).abs().max()) < 1e-5 * float(ref.abs().max()), (name, s)


def test_views_without_any_noise_go_through_the_fused_cpu_path():
    """augment.noise_std = (0, 0): no view draws noise; the fused numba path (an empty noise
    block) gives the unfused torch path's views instead of failing on the empty block."""
    from medcl.config import AugmentConfig

    cfg = AugmentConfig(view_size=16, noise_std=(0.0, 0.0))
    mask = np.zeros((24, 26, 22), bool)
    mask[3:21, 4:22, 3:19] = True
    params = [p for i in range(3) for p in sample_pair(np.random.default_rng(i), mask, cfg)]
    assert all(p.noise_std == 0 for p in params)
    x = torch.rand(len(params), 16, 16, 16)
    fused = intensity_views(x.clone(), params, fused=True)
    plain = intensity_views(x.clone(), params, fused=False)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


def test_local_views_are_monais(mni_scan):
    """Multi-crop's local views, at their own size, through both paths: two-stage to float
    rounding, composed within one interpolation (correlation)."""
    img = torch.from_numpy(mni_scan.image.astype(np.float16))
    cfg = dataclasses.replace(ALL_ON, local_views=3, local_size=12)
    rng = np.random.default_rng(4)
    groups = [sample_views(rng, mni_scan.mask, cfg)[2:] for _ in range(3)]
    ref = torch.stack([apply_view(img, p, 12) for p in _flat(groups)])
    out = apply_views([img] * 3, groups, 12, method="two-stage")
    assert out.shape == (9, 1, 12, 12, 12) and float((out - ref).abs().max()) < 1e-3
    composed = apply_views([img] * 3, groups, 12, method="composed")
    corr = [np.corrcoef(u.ravel(), v.ravel())[0, 1] for u, v in zip(ref, composed)]
    assert min(corr) > 0.95
