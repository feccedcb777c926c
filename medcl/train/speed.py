"""Model speed on a GPU: bf16 autocast, channels_last_3d, cuDNN autotuning, optional
torch.compile, a fused optimiser, the FLOPs of a training step, and the batch that fits a
given amount of GPU memory. Used by bench/train_step.py; each piece is independent, so the
loop can take what it wants (docs/performance.md says which ones pay)."""

from __future__ import annotations

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


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = True,
                  compile: bool = False) -> nn.Module:
    """``model`` on ``device``, in channels_last_3d on a GPU (the layout cuDNN's fastest 3-D
    convolutions want), optionally compiled (``torch.compile``: minutes to compile, then faster)."""
    model = model.to(device)
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    if compile:
        model = torch.compile(model)
    return model


def fused_adamw(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the fused CUDA kernel on a GPU (one kernel for all parameters), foreach on a CPU."""
    if device.type == "cuda":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def autocast(device: torch.device):
    """bf16 autocast on a GPU (no gradient scaler needed), nothing on a CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


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
