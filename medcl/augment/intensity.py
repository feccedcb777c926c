"""The intensity part of the batched device path: the MONAI path's intensity steps
(:func:`medcl.augment.views.intensity_view`) on a whole batch of resampled views.

The same formulas as the MONAI path, per view, on ``(V, S^3)`` tensors; a view's numbers never
depend on the rest of its batch (DDP shards a batch). On a CPU the steps run as a few fused
numba passes per view (:mod:`medcl.augment._cpu`). Noise is
drawn from a generator seeded with ``noise_seed``: on the CPU the very numbers of the MONAI path
(``torch.Generator``, same shape); on CUDA a CUDA generator with the same seed (reproducible and
identically distributed, but other numbers: CUDA and CPU generators differ).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers.convutils import gaussian_1d

from medcl.augment import _cpu
from medcl.augment.params import N_BIAS, ViewParams
from medcl.augment.transfer import to_device

GAMMA_EPS = 1e-7      # monai.transforms.AdjustContrast
BLUR_TRUNCATED = 4.0  # monai.networks.layers.GaussianFilter defaults (GaussianSmooth)
BLUR_APPROX = "erf"


@lru_cache(maxsize=8)
def _bias_basis(view_size: int, device: str) -> torch.Tensor:
    """(N_BIAS, S^3): the polynomial basis of ``views.bias_field``, each row minus its mean
    (``exp(L - mean L)`` with ``L = c . basis`` is ``exp(c . (basis - mean basis))``)."""
    x, y, z = torch.meshgrid(*[torch.linspace(-1, 1, view_size)] * 3, indexing="ij")
    basis = torch.stack([torch.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]).reshape(N_BIAS, -1)
    return (basis - basis.mean(1, keepdim=True)).to(device)


@lru_cache(maxsize=64)
def _gauss(sigma: float) -> torch.Tensor:
    return gaussian_1d(torch.tensor(sigma, dtype=torch.float32), truncated=BLUR_TRUNCATED, approx=BLUR_APPROX)


def _shift_sum(x: torch.Tensor, w: torch.Tensor, axis: int) -> torch.Tensor:
    """Zero-padded correlation of (V, S, S, S) with one 1-D kernel per view (``w``: (V, K)) along
    ``axis`` (1, 2 or 3), as K multiply-adds of shifted copies: elementwise, so every view's
    numbers are the same whatever else is in the batch."""
    v, k = w.shape
    p = (k - 1) // 2
    pad = [0, 0] * 3
    pad[2 * (3 - axis)] = pad[2 * (3 - axis) + 1] = p
    xp = F.pad(x, pad)
    n = x.shape[axis]
    shape = (v, 1, 1, 1)
    y = xp.narrow(axis, 0, n) * w[:, 0].view(shape)
    for j in range(1, k):
        y.addcmul_(xp.narrow(axis, j, n), w[:, j].view(shape))
    return y


def blur_weights(sigmas: Sequence[float]) -> torch.Tensor:
    """(V, K) float32 on the host: MONAI's ``GaussianSmooth`` kernel of each sigma (erf kernels
    truncated at 4 sigma), the shorter ones zero-padded to the longest."""
    kernels = [_gauss(float(s)) for s in sigmas]
    k = max([len(t) for t in kernels] + [1])
    w = torch.zeros(len(kernels), k, dtype=torch.float32)
    for i, t in enumerate(kernels):
        pad = (k - len(t)) // 2
        w[i, pad:pad + len(t)] = t
    return w


def gaussian_blur(x: torch.Tensor, sigmas: Sequence[float], weights: torch.Tensor | None = None) -> torch.Tensor:
    """(V, S, S, S) -> blurred, one isotropic sigma per view: MONAI's ``GaussianSmooth``
    (zero padding, axes 0, 1, 2 in turn); ``weights``: :func:`blur_weights` of ``sigmas``
    already on ``x``'s device."""
    w = blur_weights(sigmas).to(x.device, x.dtype) if weights is None else weights
    for axis in (1, 2, 3):
        x = _shift_sum(x, w, axis)
    return x


@lru_cache(maxsize=4)
def _kspace_radius(view_size: int, device: str) -> torch.Tensor:
    """Distance of every (ifftshift-ed) k-space voxel from MONAI GibbsNoise's centre."""
    c = (view_size - 1) / 2
    r = torch.arange(view_size, dtype=torch.float64) - c
    d = torch.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2)
    return torch.fft.ifftshift(d).to(device)


def gibbs(x: torch.Tensor, alphas: Sequence[float]) -> torch.Tensor:
    """(V, S, S, S): MONAI ``GibbsNoise(alpha)`` per view: keep the k-space ball of radius
    ``(1 - alpha) * S * sqrt(2) / 2`` about the centre of the shifted spectrum, take the real part.
    The ball is moved to the unshifted spectrum instead of shifting the data (same result)."""
    s = x.shape[-1]
    radius = torch.tensor([(1 - a) * s * math.sqrt(2) / 2 for a in alphas], dtype=torch.float64, device=x.device)
    keep = _kspace_radius(s, str(x.device))[None] <= radius[:, None, None, None]
    k = torch.fft.fftn(x, dim=(-3, -2, -1)) * keep
    return torch.fft.ifftn(k, dim=(-3, -2, -1)).real.to(x.dtype)


def kspace_spike(x: torch.Tensor, locs: Sequence[Sequence[int]], log_intensity: Sequence[float]) -> torch.Tensor:
    """(V, S, S, S): MONAI ``KSpaceSpikeNoise(loc, k_intensity)`` per view, in closed form.

    MONAI sets the log-magnitude of one voxel of the shifted spectrum to ``k_intensity`` and
    keeps its phase. Only that coefficient ``K`` changes, to ``K' = exp(k_intensity) K / |K|``,
    so the image gains ``Re((K' - K) e^{2 pi i u.n / S}) / S^3`` (inverse DFT of a delta), where
    ``u`` is the unshifted index. ``K`` itself is one separable sum: no FFT needed.
    """
    s = x.shape[-1]
    n = torch.arange(s, dtype=torch.float64, device=x.device)
    u = (torch.tensor(locs, dtype=torch.float64, device=x.device) - s // 2) % s          # (V, 3)
    phase = 2 * math.pi * u[:, :, None] * n[None, None, :] / s                             # (V, 3, S)
    e = torch.polar(torch.ones_like(phase), -phase).to(torch.complex64)                   # e^{-2 pi i u n / S}
    k = torch.einsum("vdhw,vd,vh,vw->v", x.to(torch.complex64), e[:, 0], e[:, 1], e[:, 2])
    mag = torch.tensor(log_intensity, dtype=torch.float64, device=x.device).exp()
    unit = torch.where(k.abs() > 0, k / k.abs().clamp_min(1e-30), torch.ones_like(k))
    delta = (mag.to(torch.complex64) * unit - k) / s ** 3                                 # (V,)
    wave = torch.einsum("vd,vh,vw->vdhw", e[:, 0].conj() * delta[:, None], e[:, 1].conj(), e[:, 2].conj())
    return x + wave.real.to(x.dtype)


def _where(flags: Sequence[bool]) -> list[int]:
    return [i for i, f in enumerate(flags) if f]


def _kspace_artefacts(x: torch.Tensor, params: Sequence[ViewParams]) -> None:
    """In place: the spike, then Gibbs ringing, of the views that have them. One view at a time:
    batched FFTs and contractions may round differently with the batch's size, and a view must
    not depend on the rest of its batch (DDP)."""
    for i in _where([p.spike_intensity != 0 for p in params]):
        x[i:i + 1] = kspace_spike(x[i:i + 1], [params[i].spike_loc], [params[i].spike_intensity])
    for i in _where([p.gibbs_alpha > 0 for p in params]):
        x[i:i + 1] = gibbs(x[i:i + 1], [params[i].gibbs_alpha])


def draw_noise(params: Sequence[ViewParams], view_size: int, threads: int = 1) -> tuple[torch.Tensor, list[int]]:
    """(rows, S, S, S) standard normal noise of the views with ``noise_std > 0`` and, per view, its
    row (-1: none): each from a CPU generator seeded with the view's ``noise_seed``, the numbers
    of the MONAI path. A generator is sequential, so views are drawn in ``threads`` threads."""
    idx = _where([p.noise_std > 0 for p in params])
    noise = torch.empty((len(idx), view_size, view_size, view_size), dtype=torch.float32)

    def draw(j: int) -> None:
        gen = torch.Generator().manual_seed(params[idx[j]].noise_seed)
        torch.randn((1, view_size, view_size, view_size), generator=gen, out=noise[j:j + 1])

    if threads > 1 and len(idx) > 1:
        with ThreadPoolExecutor(min(threads, len(idx))) as pool:
            list(pool.map(draw, range(len(idx))))
    else:
        for j in range(len(idx)):
            draw(j)
    rows = [-1] * len(params)
    for j, i in enumerate(idx):
        rows[i] = j
    return noise, rows


def _intensity_numba(x: torch.Tensor, params: Sequence[ViewParams], kernels) -> torch.Tensor:
    """:func:`intensity_views` on a CPU with the fused kernels of :mod:`medcl.augment._cpu`."""
    v, s = x.shape[0], x.shape[-1]
    flat = x.view(v, -1).numpy()
    threads = torch.get_num_threads()
    kernels.set_threads(threads)
    gamma = [p.gamma != 1.0 for p in params]
    rho = kernels.minmax(flat, gamma, GAMMA_EPS)  # AdjustContrast: / (rho + eps) here, then ** gamma,
    for i in _where(gamma):                       # with torch's vectorised pow, then * rho below
        x[i].pow_(params[i].gamma)
    kernels.contrast_bias(flat, [p.contrast for p in params], [p.bias for p in params],
                          np.where(gamma, rho, np.float32(1.0)))
    _kspace_artefacts(x, params)
    noise, rows = draw_noise(params, s, threads)
    blurs = [_gauss(float(p.blur_sigma)).numpy() if p.blur_sigma > 0 else np.zeros(0, np.float32) for p in params]
    weights = np.zeros((v, max([len(b) for b in blurs] + [1])), np.float32)
    for i, b in enumerate(blurs):
        weights[i, :len(b)] = b
    kernels.intensity_tail(flat, noise.reshape(len(noise), s ** 3).numpy(), rows, [p.noise_std for p in params],
                           weights, [len(b) for b in blurs])
    return x


def intensity_parts(params: Sequence[ViewParams]) -> list[torch.Tensor]:
    """The torch path's per-view numbers on the host, for one :func:`~medcl.augment.transfer.to_device`:
    the rows with a gamma and their gammas (G, 1), the contrast of every view (V, 1; 1 = none),
    the bias coefficients (V, N_BIAS), the rows with a blur and their kernels (B, K)."""
    gi, bi = _where([p.gamma != 1.0 for p in params]), _where([p.blur_sigma > 0 for p in params])
    f32 = torch.float32
    return [torch.tensor(gi, dtype=f32), torch.tensor([params[i].gamma for i in gi], dtype=f32)[:, None],
            torch.tensor([p.contrast for p in params], dtype=f32)[:, None],
            torch.tensor([p.bias for p in params], dtype=f32).view(len(params), N_BIAS),
            torch.tensor(bi, dtype=f32), blur_weights([params[i].blur_sigma for i in bi])]


def intensity_views(x: torch.Tensor, params: Sequence[ViewParams], fused: bool = True,
                    parts: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """(V, S, S, S) resampled views -> the MONAI path's intensity steps in its order, in place:
    [0, 1] min-max, gamma, contrast, bias field, spike, Gibbs, noise, blur, z-score.
    A step that MONAI skips for a view (gamma 1, no bias ...) is skipped for that view.
    On a CPU (``fused``, with numba) the steps run as a few fused passes per view
    (:mod:`medcl.augment._cpu`); elsewhere as torch operations on the whole batch, with the
    numbers of :func:`intensity_parts` (``parts``: already on ``x``'s device, else copied here
    in one transfer)."""
    if fused and x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous():
        return _intensity_numba(x, params, _cpu)
    v, s = x.shape[0], x.shape[-1]
    dev = x.device
    gamma_rows, gammas, contrast, coefs, blur_rows, blur_w = (
        to_device(intensity_parts(params), dev) if parts is None else parts)
    flat = x.view(v, -1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    d = (hi - lo).clamp_min(1e-6)
    flat.sub_(lo).div_(d)
    # AdjustContrast(gamma): ((x - min) / (range + eps)) ** gamma * range + min, where the min is
    # now 0 and the range rho = (hi - lo) / d is 1 unless the view is flat
    rho = (hi - lo) / d
    idx = _where([p.gamma != 1.0 for p in params])
    if idx and dev.type == "cpu":   # one view at a time: a scalar exponent is the fast pow on the CPU
        for i, r in zip(idx, rho[idx].view(-1).tolist()):
            flat[i].div_(r + GAMMA_EPS).pow_(params[i].gamma).mul_(r)
    elif idx:                       # on a GPU: one kernel each, and no device-to-host sync
        ix = gamma_rows.long()
        r = rho[ix]
        flat[ix] = flat[ix].div_(r + GAMMA_EPS).pow_(gammas).mul_(r)
    if any(p.contrast != 1.0 for p in params):  # a view without has contrast 1: unchanged
        m = flat.mean(1, keepdim=True)
        flat.mul_(contrast).add_(m * (1 - contrast))          # (x - m) c + m
    if any(any(p.bias) for p in params):        # coefficients 0 give the field 1
        # term by term (as views.bias_field sums them), not as one matrix product: a BLAS
        # product's rounding depends on the batch's size, and a view must not
        basis = _bias_basis(s, str(dev))
        log_field = basis[0] * coefs[:, :1]
        for k in range(1, N_BIAS):
            log_field.addcmul_(basis[k], coefs[:, k:k + 1])
        flat.mul_(log_field.exp_())
    _kspace_artefacts(x, params)
    if any(p.noise_std > 0 for p in params):
        gen = torch.Generator(device=dev)
        for i, p in enumerate(params):
            if p.noise_std > 0:
                gen.manual_seed(p.noise_seed)
                flat[i].add_(torch.randn((1, s, s, s), generator=gen, device=dev).view(-1), alpha=p.noise_std)
    idx = _where([p.blur_sigma > 0 for p in params])
    if idx:
        ix = blur_rows.long()
        x[ix] = gaussian_blur(x[ix], [params[i].blur_sigma for i in idx], blur_w)
    n = flat.shape[1]
    mean = flat.mean(1, keepdim=True)
    var = (torch.linalg.vector_norm(flat, dim=1, keepdim=True) ** 2 - n * mean ** 2) / (n - 1)
    flat.sub_(mean).div_(var.clamp_min(0).sqrt().clamp_min(1e-6))
    return x
