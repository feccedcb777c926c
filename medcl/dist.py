"""Collectives, on the ground floor: several GPUs (or CPU processes) through torchrun: process
group, gathers that carry gradients, batch norm over every process's samples.

It sits below everything that trains (``medcl.ssl`` methods gather with it, ``medcl.train``'s
loop sets the group up with it) and imports nothing of medcl, so any layer may use it.

Launch: ``torchrun --nproc_per_node N -m medcl.cli pretrain ...``. torchrun sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` joins the process group (nccl on CUDA, gloo
on CPU). Without torchrun every function here is the identity, so one code path serves both.

How the losses see every GPU's samples. Each method gathers the embeddings that its loss
couples across the batch (:func:`gather`) and computes the *whole* batch's loss on every
rank, which is therefore the loss of a one-process run on the same global batch. The
gradient must then reach each rank's own encoder: the backward of :func:`gather` sums the
gradients of the gathered tensor over the ranks (every rank's loss depends on every rank's
embeddings) and hands each rank its slice, and DDP averages the parameter gradients over the
ranks. ``W`` ranks each holding ``W x`` the one-process gradient of their slice, averaged
over ``W``, is exactly the one-process gradient. Two bugs the 2D libraries have had are
avoided by construction: a plain ``all_gather`` (no gradient: other ranks' embeddings become
constants and the gradient is ``1/W`` of the true one), and negatives from the local batch
only (a silent default elsewhere: here every method with negatives gathers). Labels are
gathered the same way, so the positive of sample ``i`` sits at its global index, not at a
local index that is wrong by ``rank x B/W``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    created: bool = False        # this process group was created by setup() (teardown destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    """True on rank 0 (and without torchrun): the process that logs to MLflow and writes files."""
    return env_rank()[0] == 0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def setup(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Join torchrun's process group (if launched by torchrun) and pick this rank's device."""
    rank, world, local = env_rank()
    dev = pick_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    created = False
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if backend == "nccl" and dev.type != "cuda":
            raise RuntimeError("train.ddp_backend=nccl needs CUDA devices; use gloo on CPU")
        dist.init_process_group(backend=backend)
        created = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local, dev, created)


def teardown(info: DistInfo) -> None:
    if info.created and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank; 0 without a process group."""
    return dist.get_rank() if world_size() > 1 else 0


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over the ranks, as a new tensor without gradient; ``x`` itself with one
    process (the sums of SwAV's Sinkhorn-Knopp iterations, :func:`medcl.losses.sinkhorn`)."""
    if world_size() == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


class _Gather(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over the ranks and returns this
    rank's slice (a reduce-scatter, written as all_reduce + slice because gloo has no
    reduce-scatter). Every rank must give a tensor of the same shape."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N, ...) of every rank in rank order, keeping gradients (see the
    module docstring); ``x`` itself with one process."""
    if world_size() == 1:
        return x
    return _Gather.apply(x)


@torch.no_grad()
def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` of every rank in rank order, without gradients (labels, keys)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def mean_over_ranks(values: torch.Tensor) -> list[float]:
    """Each entry of the float64 tensor ``values`` averaged over the ranks, on the host: one
    all-reduce and one device-to-host copy however many numbers (the loop's step scalars)."""
    if world_size() > 1:
        dist.all_reduce(values)
    return [v / world_size() for v in values.tolist()]


def all_reduce_mean(values: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """Mean of each value over the ranks (for logging); unchanged with one process."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    return dict(zip(keys, mean_over_ranks(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                                                       device=device))))


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose batch statistics are those of every rank's samples together, on any
    device (``torch.nn.SyncBatchNorm`` runs on GPUs only; medcl uses it there). Mean and
    variance come from two differentiable all-reduces of per-channel sums, so gradients flow
    to every rank's activations as in one process. Same parameters and buffers as
    ``nn.BatchNorm*d``: state dicts load into plain batch norm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"SyncBatchNorm: expected input of at least 2 dimensions, got {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        stats = dist_nn.all_reduce(torch.cat([x.sum(dims), count]))
        n = stats[-1]
        mean = stats[:-1] / n
        centred = x - mean.view(shape)
        var = dist_nn.all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * n / (n - 1), alpha=factor)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every batch norm in ``module`` made synchronous across ranks: ``torch.nn.SyncBatchNorm``
    on CUDA, :class:`SyncBatchNorm` elsewhere. Parameters and buffers are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats).to(device)
        if module.affine:   # the same Parameter objects: requires_grad (False in momentum copies) is kept
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module
