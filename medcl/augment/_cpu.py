"""CPU kernel of the batched path's affine stage (numba): trilinear samples of resized views
under MONAI ``Affine``'s map with border padding, the coordinates computed on the fly.

PyTorch's CPU ``grid_sample`` in 3-D is a scalar loop over a precomputed grid; this kernel
fuses the grid and the interpolation and runs views x slices in parallel (4-5x faster on the
2-core development machine, bench/augment.py). It computes what ``grid_sample`` computes
(``align_corners=False``, border padding) for the grid of :class:`monai.transforms.Affine`:
output voxel ``o`` samples ``clamp(A (o - h) + h, 0, S - 1)``, ``h = (S - 1) / 2``, per axis.
"""

from __future__ import annotations

import os

import numba
import numpy as np

if "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's OpenMP layer brings a second OpenMP runtime next to torch's; its idle threads spin
    # and slow torch's own operations down on a small machine. The work-queue layer sleeps.
    numba.config.THREADING_LAYER = "workqueue"


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _kernel(src: np.ndarray, mats: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    v_n, s = src.shape[0], src.shape[1]
    h = (s - 1) / 2.0
    top = s - 1.0
    for job in numba.prange(v_n * s):
        v = job // s
        i = job - v * s
        ci = i - h
        a00, a01, a02 = mats[v, 0, 0], mats[v, 0, 1], mats[v, 0, 2]
        a10, a11, a12 = mats[v, 1, 0], mats[v, 1, 1], mats[v, 1, 2]
        a20, a21, a22 = mats[v, 2, 0], mats[v, 2, 1], mats[v, 2, 2]
        for j in range(s):
            cj = j - h
            bd = a00 * ci + a01 * cj + h
            bh = a10 * ci + a11 * cj + h
            bw = a20 * ci + a21 * cj + h
            for k in range(s):
                ck = k - h
                x = min(max(bd + a02 * ck, 0.0), top)
                y = min(max(bh + a12 * ck, 0.0), top)
                z = min(max(bw + a22 * ck, 0.0), top)
                x0, y0, z0 = int(x), int(y), int(z)
                fx, fy, fz = x - x0, y - y0, z - z0
                x1, y1, z1 = min(x0 + 1, s - 1), min(y0 + 1, s - 1), min(z0 + 1, s - 1)
                c00 = src[v, x0, y0, z0] * (1 - fz) + src[v, x0, y0, z1] * fz
                c01 = src[v, x0, y1, z0] * (1 - fz) + src[v, x0, y1, z1] * fz
                c10 = src[v, x1, y0, z0] * (1 - fz) + src[v, x1, y0, z1] * fz
                c11 = src[v, x1, y1, z0] * (1 - fz) + src[v, x1, y1, z1] * fz
                c0 = c00 * (1 - fy) + c01 * fy
                c1 = c10 * (1 - fy) + c11 * fy
                out[v, i, j, k] = c0 * (1 - fx) + c1 * fx


def affine_trilinear(src: np.ndarray, mats: np.ndarray, out: np.ndarray, threads: int = 0) -> None:
    """``out[v] = src[v]`` resampled under ``mats[v]`` (rows and columns d, h, w), all (V, S, S, S)
    float32 C-contiguous; ``threads`` > 0 caps numba's threads (torch's count, by default all)."""
    if not (src.flags.c_contiguous and out.flags.c_contiguous and src.dtype == out.dtype == np.float32):
        raise ValueError("affine_trilinear: src and out must be C-contiguous float32 arrays")
    if threads > 0:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    _kernel(src, np.ascontiguousarray(mats, dtype=np.float64), out)
