"""Random view parameters: sampled here, and only here.

``sample_pair`` draws the parameters of two views of one scan; the functions in
:mod:`medcl.augment.views` apply them deterministically. The CPU path, a batched device path,
the report's montage and the tests all consume the same :class:`ViewParams`, so what a test
checks is what training sees (the torchio ``RandomX`` samples / ``X`` applies split).

Anatomy preservation. A diagnosis can live anywhere in the brain (a white-matter lesion) or
in its centre (enlarged ventricles in atrophy), so a view must keep most of the anatomy:
- every crop uses one scale ``s`` in ``augment.crop_scale`` for all three axes of the
  foreground box, so a view keeps the head's proportions; with ``s >= 0.5`` any such crop
  contains the centre of the box, hence the ventricles;
- at least ``augment.min_foreground`` of a crop is tissue, and the two crops of a pair overlap
  by at least ``augment.min_overlap`` (intersection over union), so that the two views show
  the same anatomy and the contrastive task is about that anatomy, not about the background;
- spatial changes are small (a few degrees, a few per cent) and the only flip is left-right.
Intensity changes (gamma, contrast, bias field, noise, blur) are the nuisances of MRI that
a diagnosis must ignore; they never remove a structure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medcl.config import AugmentConfig

N_BIAS = 10  # polynomial terms of degree <= 2 in three variables


@dataclass(frozen=True)
class ViewParams:
    crop_start: tuple[int, int, int]
    crop_size: tuple[int, int, int]
    rotate: tuple[float, float, float]      # radians about x, y, z
    scale: tuple[float, float, float]       # per-axis zoom factors (1 = none)
    flip_lr: bool
    gamma: float
    contrast: float                         # multiplies deviations from the view mean
    bias: tuple[float, ...]                 # N_BIAS coefficients of the log bias field
    noise_std: float
    noise_seed: int
    blur_sigma: float                       # voxels of the output view; 0 = none

    def as_dict(self) -> dict:
        return asdict(self)


def foreground_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) voxel corners of the mask's bounding box (hi exclusive)."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise ValueError("empty foreground mask: nothing to crop")
    return idx.min(0), idx.max(0) + 1


def crop_iou(a: ViewParams, b: ViewParams) -> float:
    """Intersection over union of two crop boxes."""
    a0, a1 = np.array(a.crop_start), np.array(a.crop_start) + a.crop_size
    b0, b1 = np.array(b.crop_start), np.array(b.crop_start) + b.crop_size
    inter = np.prod(np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None))
    union = np.prod(a.crop_size) + np.prod(b.crop_size) - inter
    return float(inter / union)


def foreground_fraction(mask: np.ndarray, p: ViewParams) -> float:
    box = tuple(slice(s, s + n) for s, n in zip(p.crop_start, p.crop_size))
    return float(mask[box].mean())


def _sample_crop(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray,
                 cfg: AugmentConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    s = rng.uniform(*cfg.crop_scale)
    extent = hi - lo
    size = np.maximum(np.round(extent * s).astype(int), 4)
    start = lo + np.array([rng.integers(0, e - n + 1) for e, n in zip(extent, size)])
    return tuple(int(v) for v in start), tuple(int(v) for v in size)


def _sample_rest(rng: np.random.Generator, cfg: AugmentConfig) -> dict:
    rot = np.deg2rad(cfg.rotate_deg)
    return {
        "rotate": tuple(float(v) for v in rng.uniform(-rot, rot, 3)),
        "scale": tuple(float(v) for v in 1.0 + rng.uniform(-cfg.scale, cfg.scale, 3)),
        "flip_lr": bool(cfg.flip_lr and rng.random() < 0.5),
        "gamma": float(np.exp(rng.uniform(np.log(cfg.gamma[0]), np.log(cfg.gamma[1])))),
        "contrast": float(rng.uniform(*cfg.contrast)),
        "bias": tuple(float(v) for v in rng.uniform(-cfg.bias_coeff, cfg.bias_coeff, N_BIAS)),
        "noise_std": float(rng.uniform(*cfg.noise_std)),
        "noise_seed": int(rng.integers(0, 2**31 - 1)),
        "blur_sigma": float(rng.uniform(*cfg.blur_sigma)) if rng.random() < cfg.blur_prob else 0.0,
    }


def sample_pair(rng: np.random.Generator, mask: np.ndarray, cfg: AugmentConfig) -> tuple[ViewParams, ViewParams]:
    """Two views of one scan that satisfy the anatomy constraints (see module docstring).

    Rejection sampling with ``cfg.max_tries`` attempts; if none passes (a tiny or odd mask),
    both views fall back to the whole foreground box, which satisfies the overlap constraint
    trivially and keeps all anatomy.
    """
    lo, hi = foreground_box(mask)
    for _ in range(cfg.max_tries):
        crops = [_sample_crop(rng, lo, hi, cfg) for _ in range(2)]
        views = [ViewParams(start, size, **_sample_rest(rng, cfg)) for start, size in crops]
        if crop_iou(*views) < cfg.min_overlap:
            continue
        if all(foreground_fraction(mask, v) >= cfg.min_foreground for v in views):
            return views[0], views[1]
    full = (tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo))
    return tuple(ViewParams(*full, **_sample_rest(rng, cfg)) for _ in range(2))  # type: ignore[return-value]


def identity_view(mask: np.ndarray) -> ViewParams:
    """The deterministic whole-foreground view that evaluation and prediction embed."""
    lo, hi = foreground_box(mask)
    return ViewParams(tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo), (0.0, 0.0, 0.0),
                      (1.0, 1.0, 1.0), False, 1.0, 1.0, (0.0,) * N_BIAS, 0.0, 0, 0.0)
