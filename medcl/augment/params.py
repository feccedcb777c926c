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

Multi-crop (``augment.local_views``, off by default): small local views besides the two global
ones, drawn after them from the same generator (:func:`sample_views`); each local crop lies inside
the foreground box, holds at least ``min_foreground`` tissue and lies at least ``min_overlap``
inside a global crop (:func:`sample_locals`).

Optional (off by default, and then no random number is drawn for them, so the views of a
config that does not ask for them are unchanged): a shear (``augment.shear``), and the k-space
artefacts of MRI acquisition, Gibbs ringing (``augment.gibbs_prob``) and a spike
(``augment.spike_prob``), with MONAI's ``GibbsNoise`` / ``KSpaceSpikeNoise`` parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from medcl.config import AugmentConfig
from medcl.data.ingest import MIN_FOREGROUND_EDGE

N_BIAS = 10  # polynomial terms of degree <= 2 in three variables
Box = tuple[np.ndarray, np.ndarray]   # (lo, hi) voxel corners of a foreground box, hi exclusive


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
    # optional, added later (defaults = off, so positional construction above still works)
    shear: tuple[float, ...] = (0.0,) * 6   # MONAI create_shear coefficients (xy, xz, yx, yz, zx, zy)
    gibbs_alpha: float = 0.0                # MONAI GibbsNoise alpha in [0, 1); 0 = none
    spike_loc: tuple[int, int, int] = (0, 0, 0)  # voxel of the fftshift-ed k-space of the view
    spike_intensity: float = 0.0            # MONAI KSpaceSpikeNoise k_intensity (log magnitude); 0 = none

    def as_dict(self) -> dict:
        return asdict(self)


def foreground_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) voxel corners of the mask's bounding box (hi exclusive).

    From the mask's projections on the three axes (the same box as ``np.argwhere``'s min and
    max, at a fraction of the cost). The pair sources compute it once per scan, when they take
    the cohort in, and pass it to the samplers (their ``box`` argument); read-only arrays, as
    the box is shared by every view of the scan.
    """
    lo, hi = [], []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=others))
        if hit.size == 0:
            raise ValueError("empty foreground mask: nothing to crop")
        lo.append(hit[0])
        hi.append(hit[-1] + 1)
    box = np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64)
    for corner in box:
        corner.setflags(write=False)
    return box


def _intersection(a: ViewParams, b: ViewParams) -> float:
    """Voxels in both crop boxes."""
    a0, a1 = np.array(a.crop_start), np.array(a.crop_start) + a.crop_size
    b0, b1 = np.array(b.crop_start), np.array(b.crop_start) + b.crop_size
    return float(np.prod(np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)))


def crop_iou(a: ViewParams, b: ViewParams) -> float:
    """Intersection over union of two crop boxes."""
    inter = _intersection(a, b)
    return float(inter / (np.prod(a.crop_size) + np.prod(b.crop_size) - inter))


def crop_cover(inner: ViewParams, outer: ViewParams) -> float:
    """Fraction of ``inner``'s crop box that lies inside ``outer``'s."""
    return float(_intersection(inner, outer) / np.prod(inner.crop_size))


def union_box(views: Sequence[ViewParams]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(start, size) of the smallest box that holds the crops of all ``views`` (the region of a
    scan that the views of one sample are cut from)."""
    start = tuple(min(p.crop_start[a] for p in views) for a in range(3))
    end = tuple(max(p.crop_start[a] + p.crop_size[a] for p in views) for a in range(3))
    return start, tuple(e - s for s, e in zip(start, end))


def foreground_fraction(mask: np.ndarray, p: ViewParams) -> float:
    """Fraction of the crop box that is foreground (tissue)."""
    box = tuple(slice(s, s + n) for s, n in zip(p.crop_start, p.crop_size))
    part = mask[box]
    if part.dtype == bool:  # exact count / size: the same float as part.mean(), faster
        return float(np.count_nonzero(part) / part.size) if part.size else float("nan")
    return float(part.mean())


def _sample_crop(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray,
                 scale: tuple[float, float]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    s = rng.uniform(*scale)
    extent = hi - lo
    # never larger than the box: a box thinner than MIN_FOREGROUND_EDGE (refused at ingest, but
    # possible in a cohort made before that check) gives a thinner crop, not an error
    size = np.minimum(np.maximum(np.round(extent * s).astype(int), MIN_FOREGROUND_EDGE), extent)
    start = lo + np.array([rng.integers(0, e - n + 1) for e, n in zip(extent, size)])
    return tuple(int(v) for v in start), tuple(int(v) for v in size)


def _sample_rest(rng: np.random.Generator, cfg: AugmentConfig, view_size: int | None = None) -> dict:
    """Everything but the crop, for a view of ``view_size`` (default ``cfg.view_size``)."""
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
        **_sample_optional(rng, cfg, view_size or cfg.view_size),
    }


def _sample_optional(rng: np.random.Generator, cfg: AugmentConfig, view_size: int) -> dict:
    """Shear and k-space artefacts; draws nothing from ``rng`` for what the config leaves off."""
    out: dict = {}
    if cfg.shear > 0:
        out["shear"] = tuple(float(v) for v in rng.uniform(-cfg.shear, cfg.shear, 6))
    if cfg.gibbs_prob > 0 and rng.random() < cfg.gibbs_prob:
        out["gibbs_alpha"] = float(rng.uniform(*cfg.gibbs_alpha))
    if cfg.spike_prob > 0 and rng.random() < cfg.spike_prob:
        out.update(sample_spike(rng, view_size, cfg.spike_amplitude))
    return out


def sample_spike(rng: np.random.Generator, view_size: int, amplitude: tuple[float, float]) -> dict:
    """A k-space spike: a location away from the centre and MONAI's log-magnitude ``k_intensity``.

    A spike of magnitude ``M`` at one k-space voxel of an ``S^3`` view adds a plane wave of
    amplitude ``M / S^3`` to the image (inverse DFT, MONAI's ``norm="backward"``), so an image
    amplitude ``a`` (in units of the view's [0, 1] intensity range) is ``log(a * S^3)``.
    The wave's frequency is between 2 and ``S/4`` cycles per view along each axis (herringbone
    stripes, not a change of the mean).
    """
    s = view_size
    hi = max(3, s // 4 + 1)
    offset = rng.integers(2, hi, 3) * np.where(rng.random(3) < 0.5, -1, 1)
    loc = tuple(int(s // 2 + o) for o in offset)  # fftshift puts frequency 0 at index s // 2
    a = float(rng.uniform(*amplitude))
    return {"spike_loc": loc, "spike_intensity": float(np.log(a * s ** 3))}


def sample_pair(rng: np.random.Generator, mask: np.ndarray, cfg: AugmentConfig,
                box: Box | None = None) -> tuple[ViewParams, ViewParams]:
    """Two views of one scan that satisfy the anatomy constraints (see module docstring).
    ``box``: the mask's :func:`foreground_box`, when the caller holds it (else computed here).

    Rejection sampling with ``cfg.max_tries`` attempts; if none passes (a tiny or odd mask),
    both views fall back to the whole foreground box, which satisfies the overlap constraint
    trivially and keeps all anatomy.
    """
    lo, hi = foreground_box(mask) if box is None else box
    for _ in range(cfg.max_tries):
        crops = [_sample_crop(rng, lo, hi, cfg.crop_scale) for _ in range(2)]
        views = [ViewParams(start, size, **_sample_rest(rng, cfg)) for start, size in crops]
        if crop_iou(*views) < cfg.min_overlap:
            continue
        if all(foreground_fraction(mask, v) >= cfg.min_foreground for v in views):
            return views[0], views[1]
    full = (tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo))
    return tuple(ViewParams(*full, **_sample_rest(rng, cfg)) for _ in range(2))  # type: ignore[return-value]


def sample_locals(rng: np.random.Generator, mask: np.ndarray, cfg: AugmentConfig,
                  global_views: Sequence[ViewParams], box: Box | None = None) -> tuple[ViewParams, ...]:
    """``cfg.local_views`` local views (multi-crop), resampled to ``cfg.local_size``.

    A local crop uses one scale in ``cfg.local_scale`` for the three axes of the foreground box
    and lies inside that box; at least ``cfg.min_foreground`` of it is tissue and at least
    ``cfg.min_overlap`` of it lies inside one of the global crops, so a local view shows a part
    of the anatomy that a global view shows. Rejection sampling as :func:`sample_pair`; a view
    that finds no crop in ``cfg.max_tries`` falls back to the crop of the middle scale centred in
    the first global crop (inside it, hence overlapping it fully). ``box`` as in :func:`sample_pair`.
    """
    lo, hi = foreground_box(mask) if box is None else box
    return tuple(_sample_local(rng, mask, lo, hi, cfg, global_views) for _ in range(cfg.local_views))


def _sample_local(rng: np.random.Generator, mask: np.ndarray, lo: np.ndarray, hi: np.ndarray, cfg: AugmentConfig,
                  global_views: Sequence[ViewParams]) -> ViewParams:
    for _ in range(cfg.max_tries):
        start, size = _sample_crop(rng, lo, hi, cfg.local_scale)
        view = ViewParams(start, size, **_sample_rest(rng, cfg, cfg.local_size))
        if (max(crop_cover(view, g) for g in global_views) >= cfg.min_overlap
                and foreground_fraction(mask, view) >= cfg.min_foreground):
            return view
    g = global_views[0]
    size = np.minimum(np.maximum(np.round((hi - lo) * sum(cfg.local_scale) / 2).astype(int), 4), g.crop_size)
    start = np.array(g.crop_start) + (np.array(g.crop_size) - size) // 2
    return ViewParams(tuple(int(v) for v in start), tuple(int(v) for v in size),
                      **_sample_rest(rng, cfg, cfg.local_size))


def sample_views(rng: np.random.Generator, mask: np.ndarray, cfg: AugmentConfig,
                 box: Box | None = None) -> tuple[ViewParams, ...]:
    """Every view of one scan: the two global views of :func:`sample_pair`, then the
    ``cfg.local_views`` local views of :func:`sample_locals`, from the one generator (drawn
    after the pair's, so with ``local_views = 0`` the views are exactly :func:`sample_pair`'s).
    ``box``: the mask's :func:`foreground_box` (computed here when not given)."""
    box = foreground_box(mask) if box is None else box
    pair = sample_pair(rng, mask, cfg, box)
    return pair + sample_locals(rng, mask, cfg, pair, box)


def identity_view(mask: np.ndarray) -> ViewParams:
    """The deterministic whole-foreground view that evaluation and prediction embed."""
    lo, hi = foreground_box(mask)
    return ViewParams(tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo), (0.0, 0.0, 0.0),
                      (1.0, 1.0, 1.0), False, 1.0, 1.0, (0.0,) * N_BIAS, 0.0, 0, 0.0)
