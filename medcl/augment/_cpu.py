"""CPU kernels of the batched path (numba).

The resize stage: each crop resized to S^3 as ``F.interpolate(mode="trilinear",
align_corners=False)`` does it, all views in parallel (torch runs one small call per view).

The affine stage: trilinear samples of resized views under MONAI ``Affine``'s map with border
padding, the coordinates computed on the fly.

PyTorch's CPU ``grid_sample`` in 3-D is a scalar loop over a precomputed grid; this kernel
fuses the grid and the interpolation and runs views x slices in parallel (4-5x faster on the
2-core development machine, bench/augment.py). It computes what ``grid_sample`` computes
(``align_corners=False``, border padding; coordinates in float32, as MONAI's grid) for the grid of
:class:`monai.transforms.Affine`:
output voxel ``o`` samples ``clamp(A (o - h) + h, 0, S - 1)``, ``h = (S - 1) / 2``, per axis.

The intensity stage: the MONAI path's chain (:func:`medcl.augment.views.intensity_view`) in a
few passes per view instead of one memory pass per operation, views in parallel: ``minmax``;
(gamma: torch's vectorised ``pow``, faster than numba's scalar one); ``contrast_bias`` (the
field as a product of three S x S tables: no exponential per voxel); after the optional
k-space artefacts, ``intensity_tail`` (noise added, separable Gaussian blur with zero padding,
z-score). The noise itself comes from torch's generator (the MONAI path's very numbers), drawn
by the caller.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba.extending import overload

if "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's OpenMP layer brings a second OpenMP runtime next to torch's; its idle threads spin
    # and slow torch's own operations down on a small machine. The work-queue layer sleeps.
    numba.config.THREADING_LAYER = "workqueue"


@numba.njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def _kernel(src: np.ndarray, mats: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    v_n, s = src.shape[0], src.shape[1]
    h = np.float32((s - 1) / 2.0)
    top = np.float32(s - 1.0)
    zero = np.float32(0.0)
    for job in numba.prange(v_n * s):
        v = job // s
        i = job - v * s
        ci = np.float32(i) - h
        a00, a01, a02 = mats[v, 0, 0], mats[v, 0, 1], mats[v, 0, 2]
        a10, a11, a12 = mats[v, 1, 0], mats[v, 1, 1], mats[v, 1, 2]
        a20, a21, a22 = mats[v, 2, 0], mats[v, 2, 1], mats[v, 2, 2]
        for j in range(s):
            cj = np.float32(j) - h
            bd = a00 * ci + a01 * cj + h
            bh = a10 * ci + a11 * cj + h
            bw = a20 * ci + a21 * cj + h
            for k in range(s):
                ck = np.float32(k) - h
                x = min(max(bd + a02 * ck, zero), top)
                y = min(max(bh + a12 * ck, zero), top)
                z = min(max(bw + a22 * ck, zero), top)
                x0, y0, z0 = int(x), int(y), int(z)
                fx, fy, fz = x - np.float32(x0), y - np.float32(y0), z - np.float32(z0)
                x1, y1, z1 = min(x0 + 1, s - 1), min(y0 + 1, s - 1), min(z0 + 1, s - 1)
                c00 = src[v, x0, y0, z0] * (1 - fz) + src[v, x0, y0, z1] * fz
                c01 = src[v, x0, y1, z0] * (1 - fz) + src[v, x0, y1, z1] * fz
                c10 = src[v, x1, y0, z0] * (1 - fz) + src[v, x1, y0, z1] * fz
                c11 = src[v, x1, y1, z0] * (1 - fz) + src[v, x1, y1, z1] * fz
                c0 = c00 * (1 - fy) + c01 * fy
                c1 = c10 * (1 - fy) + c11 * fy
                out[v, i, j, k] = c0 * (1 - fx) + c1 * fx


@numba.njit(cache=True, inline="always")
def _source_index(n, s, o):  # pragma: no cover - compiled
    """torch's source index of output ``o`` (align_corners=False), float32 as torch computes it:
    ``max(n / s * (o + 0.5) - 0.5, 0)`` -> (lower index, upper index, weight of the upper)."""
    half = np.float32(0.5)
    x = max(np.float32(n) / np.float32(s) * (np.float32(o) + half) - half, np.float32(0.0))
    i0 = int(x)
    return i0, (i0 + 1 if i0 < n - 1 else i0), x - np.float32(i0)


def _read(store, lut, i):
    """Element ``i`` of ``store`` as float32: fp16 bit patterns (an integer store) through the
    table ``lut``. In compiled code the overload below specialises it on the store's type."""
    return lut[store[i]] if store.dtype.kind in "iu" else store[i]


@overload(_read, inline="always")
def _read_impl(store, lut, i):
    if isinstance(store.dtype, numba.types.Integer):      # fp16 bit patterns: through the table
        return lambda store, lut, i: lut[store[i]]
    return lambda store, lut, i: store[i]


@numba.njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def _resize(store, lut, offsets, strides, shapes, out):  # pragma: no cover - compiled
    """``out[v]``: the crop of ``shapes[v]`` at ``offsets[v]`` with ``strides[v]`` in ``store``,
    resized. ``store`` holds float32 values, or fp16 bit patterns (uint16) that ``lut`` turns
    into float32 (numba has no fp16 arithmetic on the CPU)."""
    v_n, s = out.shape[0], out.shape[1]
    for job in numba.prange(v_n * s):
        v = job // s
        i = job - v * s
        st0, st1, st2 = strides[v, 0], strides[v, 1], strides[v, 2]
        x0, x1, fx = _source_index(shapes[v, 0], s, i)
        za, zb, wz = np.empty(s, np.int64), np.empty(s, np.int64), np.empty(s, np.float32)
        for k in range(s):
            z0, z1, fz = _source_index(shapes[v, 2], s, k)
            za[k], zb[k], wz[k] = z0 * st2, z1 * st2, fz
        for j in range(s):
            y0, y1, fy = _source_index(shapes[v, 1], s, j)
            r00 = offsets[v] + x0 * st0 + y0 * st1
            r01 = offsets[v] + x0 * st0 + y1 * st1
            r10 = offsets[v] + x1 * st0 + y0 * st1
            r11 = offsets[v] + x1 * st0 + y1 * st1
            for k in range(s):
                a, b, fz = za[k], zb[k], wz[k]
                c00 = _read(store, lut, r00 + a) * (1 - fz) + _read(store, lut, r00 + b) * fz
                c01 = _read(store, lut, r01 + a) * (1 - fz) + _read(store, lut, r01 + b) * fz
                c10 = _read(store, lut, r10 + a) * (1 - fz) + _read(store, lut, r10 + b) * fz
                c11 = _read(store, lut, r11 + a) * (1 - fz) + _read(store, lut, r11 + b) * fz
                out[v, i, j, k] = (c00 * (1 - fy) + c01 * fy) * (1 - fx) + (c10 * (1 - fy) + c11 * fy) * fx


FP16_TO_FP32 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def resize_trilinear(store: np.ndarray, offsets, strides, shapes, out: np.ndarray) -> None:
    """``out[v]`` (V, S, S, S) float32 = the crop of shape ``shapes[v]`` that starts at element
    ``offsets[v]`` of the 1-D ``store`` with element ``strides[v]``, resized to S^3 as
    ``F.interpolate(mode="trilinear", align_corners=False)`` computes it (same source indices
    and weights, float32). ``store``: float32, or float16 (read through a lookup table)."""
    if store.dtype == np.float16:
        store, lut = store.view(np.uint16), FP16_TO_FP32
    elif store.dtype == np.float32:
        lut = FP16_TO_FP32          # not read
    else:
        raise ValueError(f"resize_trilinear: store must be float16 or float32, not {store.dtype}")
    _resize(store, lut, np.asarray(offsets, np.int64), np.asarray(strides, np.int64), np.asarray(shapes, np.int64), out)


def set_threads(threads: int) -> None:
    """Cap numba's threads (``threads`` > 0; by default all)."""
    if threads > 0:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def affine_trilinear(src: np.ndarray, mats: np.ndarray, out: np.ndarray, threads: int = 0) -> None:
    """``out[v] = src[v]`` resampled under ``mats[v]`` (rows and columns d, h, w), all (V, S, S, S)
    float32 C-contiguous; ``threads`` > 0 caps numba's threads (torch's count, by default all)."""
    if not (src.flags.c_contiguous and out.flags.c_contiguous and src.dtype == out.dtype == np.float32):
        raise ValueError("affine_trilinear: src and out must be C-contiguous float32 arrays")
    set_threads(threads)
    _kernel(src, np.ascontiguousarray(mats, dtype=np.float32), out)


@numba.njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def _minmax(x, rho, gamma, eps):  # pragma: no cover - compiled
    v_n, n = x.shape
    for v in numba.prange(v_n):
        row = x[v]
        lo, hi = row[0], row[0]
        for i in range(n):
            lo = min(lo, row[i])
            hi = max(hi, row[i])
        d = max(hi - lo, np.float32(1e-6))
        rho[v] = (hi - lo) / d
        if gamma[v]:        # AdjustContrast's division by (range + eps) too
            r = rho[v] + eps
            for i in range(n):
                row[i] = (row[i] - lo) / d / r
        else:
            for i in range(n):
                row[i] = (row[i] - lo) / d


def minmax(x: np.ndarray, gamma=None, eps: float = 0.0) -> np.ndarray:
    """In place on (V, N) float32 views: ``(x - min) / max(max - min, 1e-6)``, for the views
    flagged in ``gamma`` also divided by ``rho + eps`` (the start of ``AdjustContrast``);
    returns each view's range after the min-max, ``rho`` (1 unless the view is flat)."""
    rho = np.empty(len(x), np.float32)
    _minmax(x, rho, np.zeros(len(x), np.bool_) if gamma is None else np.asarray(gamma, np.bool_), np.float32(eps))
    return rho


@numba.njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def _contrast_bias(x, scale, contrast, bias, t, t2mean):  # pragma: no cover - compiled
    v_n, n = x.shape
    s = t.shape[0]
    for v in numba.prange(v_n):
        row = x[v]
        f = np.float32(scale[v])
        if f != 1.0:
            for i in range(n):
                row[i] *= f
        c = contrast[v]
        if c != 1.0:
            total = 0.0
            for i in range(n):
                total += row[i]
            m = np.float32(total / n)
            cf = np.float32(c)
            for i in range(n):
                row[i] = (row[i] - m) * cf + m
        b = bias[v]
        if b[1] != 0 or b[2] != 0 or b[3] != 0 or b[4] != 0 or b[5] != 0 or b[6] != 0 or b[7] != 0 \
                or b[8] != 0 or b[9] != 0:
            # exp(c . (basis - mean basis)): over a symmetric grid the means of x, y, z, xy, xz, yz
            # are 0 and those of x^2, y^2, z^2 are t2mean, and the constant term cancels; the
            # exponential of the sum is a product of three S x S tables (d-h, d-w, h-w terms)
            dh = np.empty((s, s), np.float32)
            dw = np.empty((s, s), np.float32)
            hw = np.empty((s, s), np.float32)
            for i in range(s):
                for j in range(s):
                    dh[i, j] = np.exp(b[1] * t[i] + b[4] * (t[i] * t[i] - t2mean)
                                      + b[2] * t[j] + b[5] * (t[j] * t[j] - t2mean) + b[7] * t[i] * t[j])
                    dw[i, j] = np.exp(b[3] * t[j] + b[6] * (t[j] * t[j] - t2mean) + b[8] * t[i] * t[j])
                    hw[i, j] = np.exp(b[9] * t[i] * t[j])
            vol = row.reshape((s, s, s))
            for i in range(s):
                for j in range(s):
                    a = dh[i, j]
                    for k in range(s):
                        vol[i, j, k] *= a * dw[i, k] * hw[j, k]


def contrast_bias(x: np.ndarray, contrast, bias, scale=None) -> None:
    """In place on (V, S^3) float32 views: times ``scale`` (the end of ``AdjustContrast``;
    1: skipped), ``(x - mean) * contrast + mean`` (contrast 1: skipped), then times the bias
    field ``exp(c . (basis - mean basis))`` of :func:`medcl.augment.views.bias_field` (all
    coefficients 0: skipped)."""
    s = round(x.shape[1] ** (1 / 3))
    t = np.linspace(-1, 1, s)
    scale = np.ones(len(x), np.float32) if scale is None else np.asarray(scale, np.float32)
    _contrast_bias(x, scale, np.asarray(contrast, np.float64), np.asarray(bias, np.float64), t,
                   float(np.mean(t ** 2)))


@numba.njit(cache=True, boundscheck=False, nogil=True)
def _blur(vol, tmp, w):  # pragma: no cover - compiled
    """Separable zero-padded correlation of an (S, S, S) volume with ``w`` along axes 0, 1, 2,
    in place (``tmp``: scratch of the same shape)."""
    s = vol.shape[0]
    p = (w.shape[0] - 1) // 2
    tmp[:] = 0
    for i in range(s):                       # axis 0 -> tmp
        for j in range(w.shape[0]):
            q = i + j - p
            if 0 <= q < s:
                wj = w[j]
                for a in range(s):
                    for b in range(s):
                        tmp[i, a, b] += wj * vol[q, a, b]
    vol[:] = 0
    for i in range(s):                       # axis 1 -> vol
        for a in range(s):
            for j in range(w.shape[0]):
                q = a + j - p
                if 0 <= q < s:
                    wj = w[j]
                    for b in range(s):
                        vol[i, a, b] += wj * tmp[i, q, b]
    for i in range(s):                       # axis 2 -> tmp -> vol
        for a in range(s):
            for b in range(s):
                acc = np.float32(0.0)
                for j in range(w.shape[0]):
                    q = b + j - p
                    if 0 <= q < s:
                        acc += w[j] * vol[i, a, q]
                tmp[i, a, b] = acc
    vol[:] = tmp


@numba.njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def _tail(x, noise, noise_row, noise_std, blur, blur_len, s):  # pragma: no cover - compiled
    v_n, n = x.shape
    for v in numba.prange(v_n):
        row = x[v]
        if noise_row[v] >= 0:
            nz = noise[noise_row[v]]
            a = np.float32(noise_std[v])
            for i in range(n):
                row[i] += a * nz[i]
        k = blur_len[v]
        if k > 0:
            _blur(row.reshape((s, s, s)), np.empty((s, s, s), np.float32), blur[v, :k])
        total = 0.0
        for i in range(n):
            total += row[i]
        mean = total / n
        ss = 0.0
        for i in range(n):
            dv = row[i] - mean
            ss += dv * dv
        sd = max(np.sqrt(ss / (n - 1)), 1e-6)
        m32, sd32 = np.float32(mean), np.float32(sd)
        for i in range(n):
            row[i] = (row[i] - m32) / sd32


def intensity_tail(x: np.ndarray, noise: np.ndarray, noise_row, noise_std, blur: np.ndarray, blur_len) -> None:
    """In place on (V, S^3) float32 views: ``+ noise_std[v] * noise[noise_row[v]]`` (row -1: no
    noise), the separable blur ``blur[v, :blur_len[v]]`` along each axis (0: none), z-score
    (standard deviation with n - 1, at least 1e-6)."""
    s = round(x.shape[1] ** (1 / 3))
    _tail(x, noise, np.asarray(noise_row, np.int64), np.asarray(noise_std, np.float64),
          np.asarray(blur, np.float32), np.asarray(blur_len, np.int64), s)
