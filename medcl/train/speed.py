"""Model speed on a GPU, in one place for the training loop and bench/train_step.py:
cuDNN autotuning and TF32, channels_last_3d, a fused optimiser, optional ``torch.compile``
(:class:`SpeedSetup`); bf16 autocast is ``train.precision`` (:class:`medcl.train.step.Precision`).
Also the FLOPs of a training step and the batch that fits a given amount of GPU memory.

The loop builds its model and optimiser through :func:`medcl.train.loop.build_trainer`, which
applies :class:`SpeedSetup`; bench/train_step.py times that same trainer with
:func:`medcl.train.step.train_step`, so the bench measures what ``medcl pretrain`` runs. On a
CPU every setting is off (the CPU run is bit-identical to one without them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def configure_backends(device: torch.device) -> None:
    """cuDNN picks the fastest convolution algorithms for the (fixed) input shapes; TF32 for
    the float32 matmuls and convolutions that autocast leaves in float32."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@dataclass(frozen=True)
class SpeedSetup:
    """THE speed settings of a training process. On CUDA: cuDNN autotuning + TF32, weights and
    views in channels_last_3d (the layout cuDNN's fastest 3-D convolutions want), the fused
    AdamW/SGD kernel; ``compile`` (``train.compile``) wraps the step's module in
    ``torch.compile`` (minutes to compile, then faster). On a CPU: nothing but ``compile``."""
    device: torch.device
    channels_last: bool
    fused: bool
    compile: bool = False

    @classmethod
    def of(cls, device: torch.device, compile: bool = False) -> "SpeedSetup":
        cuda = device.type == "cuda"
        return cls(device, channels_last=cuda, fused=cuda, compile=compile)

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of the views (the pair source makes them in it)."""
        return torch.channels_last_3d if self.channels_last else torch.contiguous_format

    def prepare(self, method: nn.Module) -> nn.Module:
        """Backends configured, ``method``'s weights in :attr:`memory_format` (in place)."""
        configure_backends(self.device)
        if self.channels_last:
            method.to(memory_format=self.memory_format)
        return method

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module a step calls: ``model`` (the method or its DDP wrapper), compiled if asked."""
        return torch.compile(model) if self.compile else model


def step_flops(build: Callable[[], nn.Module], batch: int, view_size: int) -> float:
    """FLOPs of one training step (forward and backward of the encoder and projection head)
    for ``batch`` volumes, counted on the meta device (no memory, no compute): ``build()``
    returns a module mapping (B, 1, S, S, S) to embeddings."""
    with torch.device("meta"):
        model = build()
        x = torch.empty(batch, 1, view_size, view_size, view_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).float().sum().backward()
    return float(counter.get_total_flops())


def fit_batch(step: Callable[[int], None], budget_bytes: int, device: torch.device,
              candidates: tuple[int, ...] = (4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)) -> dict:
    """The largest batch (pairs) whose training step peaks under ``budget_bytes`` of GPU memory.

    ``step(b)`` runs one full training step on ``b`` pairs. Peak memory is nearly affine in
    the batch (weights and optimiser state + activations per pair), so two small batches give
    the line; the largest candidate under the budget on that line is then run and measured
    (and the next smaller one tried if it does not fit).
    """
    if device.type != "cuda":
        raise RuntimeError("fit_batch needs a CUDA device")

    def peak(b: int) -> int | None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            step(b)
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            return None
        return torch.cuda.max_memory_allocated(device)

    b0, b1 = candidates[0], candidates[1]
    m0, m1 = peak(b0), peak(b1)
    if m0 is None or m1 is None or m0 > budget_bytes:
        return {"batch": None, "reason": f"{b0} pairs already need more than the budget"}
    per_pair = max(1.0, (m1 - m0) / (b1 - b0))
    fixed = m0 - per_pair * b0
    fits = [b for b in candidates if fixed + per_pair * b <= budget_bytes]
    for b in reversed(fits):
        m = peak(b)
        if m is not None and m <= budget_bytes:
            return {"batch": b, "peak_bytes": m, "bytes_per_pair": per_pair, "fixed_bytes": fixed}
    return {"batch": b0, "peak_bytes": m0, "bytes_per_pair": per_pair, "fixed_bytes": fixed}
