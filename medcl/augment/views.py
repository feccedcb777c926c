"""Apply :class:`ViewParams` to a volume with MONAI 3D transforms (the CPU path).

Order: crop first, then resample to the view size (cheaper than resampling the whole
volume), then the small affine and the flip, then the MR intensity nuisances on [0, 1]
intensities (gamma, contrast, bias field, the optional k-space spike and Gibbs ringing, noise,
blur), then a z-score over the view. :mod:`medcl.augment.batched` applies the same parameters
to a whole batch with torch operations; ``tests/test_batched_views.py`` holds the two paths
together.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import (AdjustContrast, Affine, Flip, GaussianSmooth, GibbsNoise, KSpaceSpikeNoise, Resize,
                              SpatialCrop)

from medcl.augment.params import N_BIAS, Box, ViewParams, identity_view, sample_pair, sample_views
from medcl.config import AugmentConfig


def bias_field(shape: tuple[int, int, int], coeffs: tuple[float, ...]) -> torch.Tensor:
    """exp of a degree-2 polynomial over [-1, 1]^3: a smooth multiplicative field."""
    if len(coeffs) != N_BIAS:
        raise ValueError(f"bias_field: expected {N_BIAS} coefficients, got {len(coeffs)}")
    x, y, z = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    basis = [torch.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    log_field = sum(c * b for c, b in zip(coeffs, basis))
    return torch.exp(log_field - log_field.mean())


def apply_view(image: np.ndarray | torch.Tensor, p: ViewParams, view_size: int) -> torch.Tensor:
    """One view, shape (1, S, S, S), float32, zero mean and unit variance."""
    return intensity_view(resample_view(image, p, view_size), p)


def resample_view(image: np.ndarray | torch.Tensor, p: ViewParams, view_size: int) -> torch.Tensor:
    """The geometric part of :func:`apply_view`: crop, resize, affine, flip -> (1, S, S, S)."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]
    end = [s + n for s, n in zip(p.crop_start, p.crop_size)]
    x = SpatialCrop(roi_start=p.crop_start, roi_end=end)(x)
    x = Resize((view_size,) * 3, mode="trilinear", align_corners=False)(x)
    shear = p.shear if any(p.shear) else None
    if any(abs(r) > 0 for r in p.rotate) or any(abs(s - 1) > 0 for s in p.scale) or shear:
        x = Affine(rotate_params=p.rotate, shear_params=shear, scale_params=p.scale, padding_mode="border",
                   mode="bilinear", image_only=True)(x)
    if p.flip_lr:
        x = Flip(spatial_axis=0)(x)
    return x


def intensity_view(x: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """The intensity part of :func:`apply_view` on a resampled (1, S, S, S) view."""
    x = torch.as_tensor(x)
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo).clamp_min(1e-6)
    if p.gamma != 1.0:
        x = torch.as_tensor(AdjustContrast(gamma=p.gamma)(x))
    if p.contrast != 1.0:
        x = (x - x.mean()) * p.contrast + x.mean()
    if any(p.bias):
        x = x * bias_field(tuple(x.shape[1:]), p.bias)
    # k-space artefacts: a spike (a corrupt sample), then Gibbs ringing (the truncated acquisition
    # window, which drops a spike outside it); this order also keeps the spike's phase that of
    # a coefficient of the image, not of one that Gibbs has zeroed (then undefined)
    if p.spike_intensity != 0:
        x = torch.as_tensor(KSpaceSpikeNoise(loc=p.spike_loc, k_intensity=p.spike_intensity)(x)).float()
    if p.gibbs_alpha > 0:
        x = torch.as_tensor(GibbsNoise(alpha=p.gibbs_alpha)(x)).float()
    if p.noise_std > 0:
        g = torch.Generator().manual_seed(p.noise_seed)
        x = x + p.noise_std * torch.randn(x.shape, generator=g)
    if p.blur_sigma > 0:
        x = torch.as_tensor(GaussianSmooth(sigma=p.blur_sigma)(x))
    return ((x - x.mean()) / x.std().clamp_min(1e-6)).float()


def make_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
              box: Box | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple[ViewParams, ViewParams]]:
    """Sample two views' parameters and apply them: (view1, view2, params); ``box``: the mask's
    foreground box when the caller holds it (:func:`medcl.augment.params.sample_pair`)."""
    p1, p2 = sample_pair(rng, mask, cfg, box)
    return apply_view(image, p1, cfg.view_size), apply_view(image, p2, cfg.view_size), (p1, p2)


def make_views(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
               box: Box | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[ViewParams, ...]]:
    """Every view of one scan (:func:`medcl.augment.params.sample_views`, ``box`` as there):
    (view1, view2, local views (L, 1, s, s, s) at ``cfg.local_size`` or None without
    multi-crop, params)."""
    params = sample_views(rng, mask, cfg, box)
    v1, v2 = (apply_view(image, p, cfg.view_size) for p in params[:2])
    local = torch.stack([apply_view(image, p, cfg.local_size) for p in params[2:]]) if len(params) > 2 else None
    return v1, v2, local, params


def eval_view(image: np.ndarray, mask: np.ndarray, view_size: int) -> torch.Tensor:
    """The deterministic whole-foreground view used for embedding and prediction."""
    return apply_view(image, identity_view(mask), view_size)
