"""Apply :class:`ViewParams` to a whole batch with torch operations (the device path).

The parameters are the ones :func:`medcl.augment.params.sample_pair` draws, the same that the
MONAI path (:func:`medcl.augment.views.apply_view`) applies one view at a time; here a list of
them is applied at once, on the device the tensors live on (a GPU in training, or the CPU).

Geometry in one resampling. The MONAI path crops, resizes the crop to ``S^3`` (trilinear,
``align_corners=False``), then resamples it with ``Affine`` (border padding) and flips it. Every
step maps output voxels to input coordinates, so their composition is one map from each voxel
of the view to a point of the scan, and one ``grid_sample`` per batch replaces the three
resamplings. With ``c = o - (S - 1) / 2`` the centred index of output voxel ``o``:

- flip: ``c_0 -> -c_0`` (``Flip(spatial_axis=0)`` after the affine reverses axis 0);
- affine: ``r = A c + (S - 1) / 2`` with MONAI's ``A = R_x R_y R_z Sh diag(scale)``
  (:func:`monai.transforms.utils.create_rotate` with order ``"XYZ"``, ``create_shear``,
  ``create_scale``; ``AffineGrid`` multiplies them in this order); border padding clamps ``r``
  to ``[0, S - 1]``;
- resize: ``x = (r + 0.5) n / S - 0.5`` in the crop of edge ``n`` (``interpolate`` with
  ``align_corners=False``), clamped to ``[0, n - 1]``; the crop starts at ``crop_start``.

The two clamps of a monotone map are one clamp, so the grid is ``clamp(alpha * (A c) + beta)``
per axis: a batched matrix product and a clamp. The result equals MONAI's wherever trilinear
interpolation is exact (a linear image; tested) and is otherwise one interpolation where MONAI
does two (slightly sharper); ``tests/test_batched_views.py`` bounds the difference.

Intensities: :func:`medcl.augment.intensity.intensity_views`, on the resampled views.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medcl.augment import _cpu
from medcl.augment.intensity import intensity_parts, intensity_views
from medcl.augment.params import ViewParams, union_box
from medcl.augment.transfer import to_device


# --------------------------------------------------------------------------- matrices

def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(V, 3) radians about x, y, z -> (V, 3, 3) = R_x R_y R_z, as MONAI's ``create_rotate``
    (order ``"XYZ"``, intrinsic: each rotation post-multiplies)."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(-1, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1).view(-1, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(-1, 3, 3)
    return rx @ ry @ rz


_SHEAR_INDICES = ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))


def shear_matrices(coefs: torch.Tensor) -> torch.Tensor:
    """(V, 6) -> (V, 3, 3), as MONAI's ``create_shear``: elementary shears pre-multiplied in
    coefficient order."""
    out = torch.eye(3, dtype=coefs.dtype, device=coefs.device).repeat(len(coefs), 1, 1)
    for k, (i, j) in enumerate(_SHEAR_INDICES):
        e = torch.eye(3, dtype=coefs.dtype, device=coefs.device).repeat(len(coefs), 1, 1)
        e[:, i, j] = coefs[:, k]
        out = e @ out
    return out


def view_matrices(params: Sequence[ViewParams], dtype=torch.float64) -> torch.Tensor:
    """(V, 3, 3): centred output index -> centred index in the resized crop, flip included."""
    rot = torch.tensor([p.rotate for p in params], dtype=dtype)
    shear = torch.tensor([p.shear for p in params], dtype=dtype)
    scale = torch.tensor([p.scale for p in params], dtype=dtype)
    flip = torch.tensor([[-1.0 if p.flip_lr else 1.0, 1.0, 1.0] for p in params], dtype=dtype)
    return rotation_matrices(rot) @ shear_matrices(shear) @ torch.diag_embed(scale) @ torch.diag_embed(flip)


@lru_cache(maxsize=8)
def _centred_axis(view_size: int, device: str) -> torch.Tensor:
    """Centred output indices ``o - (S - 1) / 2`` of one axis."""
    return (torch.arange(view_size, dtype=torch.float32) - (view_size - 1) / 2).to(device)


@dataclass
class VoxelMaps:
    """Per view and axis (d, h, w), the map from centred output index to region voxel:
    ``X = clamp(A' c + beta, lo, hi)`` with ``A' = diag(n / S) A`` (module docstring)."""
    a: torch.Tensor      # (V, 3, 3) float64
    beta: torch.Tensor   # (V, 3)
    lo: torch.Tensor     # (V, 3)
    hi: torch.Tensor     # (V, 3)


def voxel_maps(params: Sequence[ViewParams], view_size: int,
               offsets: Sequence[Sequence[int]] | None = None) -> VoxelMaps:
    """The composed crop-resize-affine-flip map of every view, in voxels of a region in which
    view v's crop starts at ``offsets[v]`` (default 0): ``r = A c + (S - 1) / 2`` clamped to
    ``[0, S - 1]``, then ``x = (r + 1/2) n / S - 1/2 + offset`` clamped to the crop; the two
    clamps of this increasing map are one, to ``[max(x(0), offset), min(x(S - 1), offset + n - 1)]``."""
    s = view_size
    n = torch.tensor([p.crop_size for p in params], dtype=torch.float64)
    off = torch.zeros(len(params), 3, dtype=torch.float64) if offsets is None else \
        torch.tensor(offsets, dtype=torch.float64)
    beta = n / 2 - 0.5 + off
    half = (s - 1) / 2 * n / s
    lo = torch.maximum(beta - half, off)
    hi = torch.minimum(beta + half, off + n - 1)
    return VoxelMaps(view_matrices(params) * (n / s)[:, :, None], beta, lo, hi)


def grid_coefs(maps: VoxelMaps, region_size: Sequence[int]) -> torch.Tensor:
    """(V, 3, 6) float32 on the host: per component of a ``grid_sample`` grid on regions of
    ``region_size`` (D, H, W) ((x, y, z) = axes (w, h, d); voxel ``X`` is at ``(2 X + 1) / M - 1``),
    the map's row of ``A'``, ``beta``, ``lo`` and ``hi`` in grid units: computed in float64,
    rounded to float32 once. The device builds the grid from them (:func:`_grid`)."""
    rows = []
    for axis in (2, 1, 0):
        m = float(region_size[axis])
        scale, shift = 2 / m, 1 / m - 1
        rows.append(torch.cat([maps.a[:, axis] * scale, (maps.beta[:, axis] * scale + shift)[:, None],
                               (maps.lo[:, axis] * scale + shift)[:, None],
                               (maps.hi[:, axis] * scale + shift)[:, None]], 1))
    return torch.stack(rows, 1).to(torch.float32)


def _plane(coefs: torch.Tensor, c: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(V, S, S, S) into ``out``: one grid component, ``clamp(A' c + beta, lo, hi)`` from its
    (V, 6) :func:`grid_coefs`, as a sum of three outer products (``c`` is a meshgrid) and one clamp."""
    a, beta, lo, hi = coefs[:, :3], coefs[:, 3], coefs[:, 4], coefs[:, 5]
    first = beta[:, None, None, None] + a[:, 0, None, None, None] * c[None, :, None, None]
    rest = a[:, 1, None, None, None] * c[None, None, :, None] + a[:, 2, None, None, None] * c[None, None, None, :]
    return torch.add(first, rest, out=out).clamp_(lo[:, None, None, None], hi[:, None, None, None])


def _grid(coefs: torch.Tensor, view_size: int) -> torch.Tensor:
    """(V, S, S, S, 3) grid on the device of ``coefs`` (:func:`grid_coefs`, already there)."""
    s = view_size
    c = _centred_axis(s, str(coefs.device))
    grid = torch.empty((len(coefs), s, s, s, 3), dtype=torch.float32, device=coefs.device)
    for k in range(3):
        _plane(coefs[:, k], c, out=grid[..., k])
    return grid


def sampling_grid(params: Sequence[ViewParams], view_size: int, region_size: Sequence[int],
                  offsets: Sequence[Sequence[int]] | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(V, S, S, S, 3) grid for ``grid_sample(..., align_corners=False)`` on regions of
    ``region_size`` (D, H, W): voxel ``X`` is at ``(2 X + 1) / M - 1``; (x, y, z) = (w, h, d)."""
    coefs = grid_coefs(voxel_maps(params, view_size, offsets), region_size)
    return _grid(to_device([coefs], device)[0], view_size)


# --------------------------------------------------------------------------- crops

def _check_inside(b: int, src: torch.Tensor, start, n, o) -> list[int]:
    rel = [start[a] - o[a] for a in range(3)]
    if min(rel) < 0 or any(rel[a] + n[a] > src.shape[a] for a in range(3)):
        raise ValueError(f"gather: source {b}: crops {list(start)}+{list(n)} lie outside it "
                         f"(origin {tuple(o)}, shape {tuple(src.shape)})")
    return rel


def _buffer(shape, sources, device):
    """An uninitialised batch buffer: float32 on ``device`` when the sources are there (or on
    another GPU), else fp16 on the sources' host, pinned when it goes to a GPU."""
    src_dev = sources[0].device
    same = src_dev == device or src_dev.type == device.type == "cuda"
    return torch.empty(shape, dtype=torch.float32 if same else sources[0].dtype, device=device if same else src_dev,
                       pin_memory=(not same and src_dev.type == "cpu" and device.type == "cuda"))


def _to_device(buf: torch.Tensor, device: torch.device) -> torch.Tensor:
    out = buf.to(device, non_blocking=True)
    return out if out.dtype == torch.float32 else out.float()


def _region_boxes(groups: Sequence[Sequence[ViewParams]]) -> tuple[list, list[int]]:
    """Each source's region (the union box of its views' crops) and the batch buffer's padded
    edge per axis (the largest region plus the zeroed layer)."""
    boxes = [union_box(g) for g in groups]
    return boxes, [max(b[1][a] for b in boxes) + 1 for a in range(3)]


def gather_regions(sources: Sequence[torch.Tensor], groups: Sequence[Sequence[ViewParams]],
                   device: torch.device | str, origins: Sequence[Sequence[int]] | None = None
                   ) -> tuple[torch.Tensor, list[list[int]]]:
    """The region each source's views are cut from (the union of their crops), in one
    (B, 1, D, H, W) float32 batch on ``device``, and each region's start in its scan.

    ``sources[b]`` holds its views' crops, with its voxel 0 at ``origins[b]`` of the scan
    (default: it is the whole scan). Host sources going to a CUDA device are gathered in one
    pinned fp16 buffer and copied in one transfer; the float32 conversion happens on the device.
    Resampling keeps every view inside its crop, so only the voxel layer just past a region is
    ever touched (with weight 0); that layer is zeroed, the rest of the padding is left as is.
    """
    device = torch.device(device)
    boxes, pad = _region_boxes(groups)
    buf = _buffer((len(groups), 1, *pad), sources, device)
    for b, (src, (start, n)) in enumerate(zip(sources, boxes)):
        rel = _check_inside(b, src, start, n, (0, 0, 0) if origins is None else origins[b])
        dst = buf[b, 0]
        dst[:n[0], :n[1], :n[2]].copy_(src[rel[0]:rel[0] + n[0], rel[1]:rel[1] + n[1], rel[2]:rel[2] + n[2]])
        dst[n[0], :n[1] + 1, :n[2] + 1] = 0
        dst[:n[0] + 1, n[1], :n[2] + 1] = 0
        dst[:n[0] + 1, :n[1] + 1, n[2]] = 0
    return _to_device(buf, device), [b[0] for b in boxes]


def _needs_affine(p: ViewParams) -> bool:
    """MONAI's ``Affine`` runs when a rotation, scale or shear is not the identity."""
    return any(abs(r) > 0 for r in p.rotate) or any(abs(c - 1) > 0 for c in p.scale) or any(p.shear)


def resize_crops(sources: Sequence[torch.Tensor], params: Sequence[ViewParams], view_size: int,
                 device: torch.device, origins: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """MONAI's first two steps per view: crop, ``interpolate`` to S^3 (trilinear,
    ``align_corners=False``, as ``Resize``) -> (V, S, S, S) float32 on ``device``."""
    s = view_size
    out = torch.empty((len(params), s, s, s), dtype=torch.float32, device=device)
    crops = []
    for v, (src, p) in enumerate(zip(sources, params)):
        rel = _check_inside(v, src, p.crop_start, p.crop_size, (0, 0, 0) if origins is None else origins[v])
        crops.append(src[tuple(slice(r, r + n) for r, n in zip(rel, p.crop_size))])
    if device.type == "cpu" and all(c.device.type == "cpu" for c in crops):   # every view's resize at once
        _cpu.set_threads(torch.get_num_threads())
        first = crops[0]
        if first.dtype in (torch.float16, torch.float32) and all(
                c.dtype == first.dtype and c.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
                for c in crops):         # crops of one store (the cohort held once): read in place
            store = torch.empty(0, dtype=crops[0].dtype).set_(crops[0].untyped_storage())
            _cpu.resize_trilinear(store.numpy(), [c.storage_offset() for c in crops], [c.stride() for c in crops],
                                     [c.shape for c in crops], out.numpy())
            return out
        sizes = [c.numel() for c in crops]      # else the crops as float32 in one buffer first
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        buf = torch.empty(sum(sizes), dtype=torch.float32)
        for c, o, n in zip(crops, offsets.tolist(), sizes):
            buf[o:o + n].view(c.shape).copy_(c)
        _cpu.resize_trilinear(buf.numpy(), offsets, [(c.shape[1] * c.shape[2], c.shape[2], 1) for c in crops],
                                 [c.shape for c in crops], out.numpy())
        return out
    for v, crop in enumerate(crops):
        crop = crop.to(device, non_blocking=True).float()
        out[v] = F.interpolate(crop[None, None], size=(s, s, s), mode="trilinear", align_corners=False)[0, 0]
    return out


def _affine_maps(params: Sequence[ViewParams], view_size: int) -> VoxelMaps:
    """The affine (flip included) of each view on its resized S^3 crop, clamped to it."""
    v, s = len(params), view_size
    return VoxelMaps(view_matrices(params), torch.full((v, 3), (s - 1) / 2, dtype=torch.float64),
                     torch.zeros(v, 3, dtype=torch.float64), torch.full((v, 3), float(s - 1), dtype=torch.float64))


def _geometry_coefs(groups: Sequence[Sequence[ViewParams]], view_size: int, method: str,
                    device: torch.device) -> torch.Tensor | None:
    """The host :func:`grid_coefs` that ``method`` needs on ``device``: every view's on its
    source's region (``composed``), the views with an affine on their resized crop (two-stage
    with ``grid_sample``), none (``two-stage`` on a CPU: the numba kernel takes the matrices)."""
    s, params = view_size, [p for g in groups for p in g]
    if method == "composed":
        boxes, pad = _region_boxes(groups)
        offsets = [[p.crop_start[a] - b[0][a] for a in range(3)] for g, b in zip(groups, boxes) for p in g]
        return grid_coefs(voxel_maps(params, s, offsets), pad)
    sub = [p for p in params if _needs_affine(p)]
    if not sub or (method == "two-stage" and device.type == "cpu"):
        return None
    return grid_coefs(_affine_maps(sub, s), (s, s, s))


def _resample_two_stage(sources, groups, view_size, device, origins, sampler: str,
                        coefs: torch.Tensor | None = None) -> torch.Tensor:
    """MONAI's own steps, batched: crop and resize each view, then one batched affine resampling
    (border padding) of the views that have one (the flip folded in), the flip alone for the
    others. The same numbers as the MONAI path up to float rounding. ``sampler``: ``numba``
    (a fused, parallel trilinear kernel on the CPU, :mod:`medcl.augment._cpu`) or ``3d``
    (``grid_sample``)."""
    s = view_size
    params = [p for g in groups for p in g]
    srcs = [src for src, g in zip(sources, groups) for _ in g]
    orgs = None if origins is None else [o for o, g in zip(origins, groups) for _ in g]
    x = resize_crops(srcs, params, s, device, orgs)
    idx = [i for i, p in enumerate(params) if _needs_affine(p)]
    for i, p in enumerate(params):
        if p.flip_lr and i not in idx:
            x[i] = x[i].flip(0)
    if idx:
        sub = [params[i] for i in idx]
        kernel = _cpu.affine_trilinear if sampler == "numba" and x.device.type == "cpu" else None
        part = x if len(idx) == len(params) else x[idx]
        if kernel is not None:
            out = torch.empty_like(part)
            kernel(part.numpy(), view_matrices(sub).numpy(), out.numpy(), torch.get_num_threads())
        else:
            if coefs is None:
                coefs = to_device([grid_coefs(_affine_maps(sub, s), (s, s, s))], x.device)[0]
            out = F.grid_sample(part[:, None], _grid(coefs, s), mode="bilinear", padding_mode="border",
                                align_corners=False)[:, 0]
        if len(idx) == len(params):
            return out
        x[idx] = out
    return x


def _resample_composed(sources, groups, view_size, device, origins, coefs: torch.Tensor | None = None) -> torch.Tensor:
    regions, _ = gather_regions(sources, groups, device, origins)
    k, s = len(groups[0]), view_size
    if coefs is None:
        coefs = to_device([_geometry_coefs(groups, s, "composed", device)], regions.device)[0]
    grid = _grid(coefs, s)
    out = F.grid_sample(regions, grid.view(len(groups), k * s, s, s, 3), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out.view(len(groups) * k, s, s, s)


METHODS = ("auto", "composed", "two-stage", "two-stage-3d")


def _method(method: str, device: torch.device) -> str:
    """``method`` checked, ``auto`` resolved for ``device``."""
    if method not in METHODS:
        raise ValueError(f"resample_views: method must be auto, composed, two-stage or two-stage-3d, got {method!r}")
    if method == "auto":
        return "two-stage" if device.type == "cpu" else "composed"
    return method


def resample_views(sources: Sequence[torch.Tensor], groups: Sequence[Sequence[ViewParams]], view_size: int,
                   device: torch.device | str | None = None, origins: Sequence[Sequence[int]] | None = None,
                   method: str = "auto", coefs: torch.Tensor | None = None) -> torch.Tensor:
    """The geometric part: (B * k, S, S, S) float32, source-major (the k views of source 0 first).

    ``method``:

    - ``composed``: crop, resize, affine and flip as one map and one 3-D ``grid_sample`` per
      batch, from the union of each source's crops (the GPU default: one kernel, no
      intermediate volumes; one interpolation where MONAI does two, see the module docstring);
    - ``two-stage``: MONAI's steps (resize each crop, then the affine) batched, the MONAI path's
      numbers; on a CPU the affine's trilinear samples come from a fused numba kernel (4-5x
      faster than the CPU's 3-D ``grid_sample``, which is not vectorised), elsewhere from
      ``grid_sample`` (the CPU default);
    - ``two-stage-3d``: the same with ``grid_sample`` for the affine everywhere;
    - ``auto``: ``two-stage`` on a CPU, ``composed`` on a GPU.

    ``coefs``: the grid coefficients this method needs (:func:`_geometry_coefs`), already on
    ``device`` (:func:`apply_views` sends them with the intensity parameters); else made here.
    """
    k = len(groups[0])
    if any(len(g) != k for g in groups):
        raise ValueError("resample_views: every source needs the same number of views")
    device = torch.device(device) if device is not None else sources[0].device
    method = _method(method, device)
    if method == "composed":
        return _resample_composed(sources, groups, view_size, device, origins, coefs)
    return _resample_two_stage(sources, groups, view_size, device, origins,
                               "numba" if method == "two-stage" else "3d", coefs)


# --------------------------------------------------------------------------- the batch

def apply_views(sources: Sequence[torch.Tensor], groups: Sequence[Sequence[ViewParams]], view_size: int,
                device: torch.device | str | None = None, origins: Sequence[Sequence[int]] | None = None,
                memory_format: torch.memory_format = torch.contiguous_format, method: str = "auto") -> torch.Tensor:
    """Views of a batch: (B * k, 1, S, S, S) float32, each zero mean and unit variance,
    source-major (``groups[b]`` holds the k views' parameters of ``sources[b]``).

    ``sources[b]`` is a scan (3-D tensor, any float dtype, host or device), or a part of it
    whose voxel 0 is at ``origins[b]`` of the scan; ``device`` defaults to the sources' device;
    ``method`` is the resampling of :func:`resample_views`.

    The batch's view parameters that the device needs (the grid's coefficients, the intensity
    steps' numbers) reach it in one pinned, non-blocking transfer
    (:func:`medcl.augment.transfer.to_device`); on a CPU nothing is copied.
    """
    if len(sources) != len(groups) or not groups:
        raise ValueError(f"apply_views: {len(sources)} sources for {len(groups)} groups of views")
    device = torch.device(device) if device is not None else sources[0].device
    method, params = _method(method, device), [p for g in groups for p in g]
    geometry = _geometry_coefs(groups, view_size, method, device)
    host = [] if geometry is None else [geometry]
    if device.type != "cpu":          # a CPU applies the intensity steps with its own kernels
        host += intensity_parts(params)
    moved = to_device(host, device)
    coefs = moved.pop(0) if geometry is not None else None
    x = resample_views(sources, groups, view_size, device, origins, method, coefs)
    x = intensity_views(x, params, parts=moved or None)
    s = view_size
    return x.view(-1, 1, s, s, s).contiguous(memory_format=memory_format)


def apply_pairs(sources: Sequence[torch.Tensor], pairs: Sequence[tuple[ViewParams, ViewParams]], view_size: int,
                device: torch.device | str | None = None, origins: Sequence[Sequence[int]] | None = None,
                memory_format: torch.memory_format = torch.contiguous_format,
                method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(first views, second views), each (B, 1, S, S, S): two views of each of B scans."""
    views = apply_views(sources, pairs, view_size, device, origins, memory_format, method)
    v = views.view(len(pairs), 2, *views.shape[1:])
    return v[:, 0], v[:, 1]
