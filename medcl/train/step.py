"""One training step: forward under autocast, backward through the gradient scaler, optimiser
and schedule step, the method's own end-of-step update (momentum networks), and the step's
scalars (loss, method logs, learning rate, ``health/*``) averaged over the ranks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medcl import dist
from medcl.config import ConfigError
from medcl.train.health import health_metrics
from medcl.train.pairs import Batch
from medcl.train.state import TrainState


@dataclass(frozen=True)
class Precision:
    """``train.precision`` resolved for a device: the dtype of weights and views, autocast (on,
    dtype) and whether the gradient scaler runs."""
    dtype: torch.dtype
    autocast: bool
    autocast_dtype: torch.dtype
    scale: bool

    @classmethod
    def of(cls, precision: str, device: torch.device) -> "Precision":
        """fp64 (weights and views in float64, no autocast) is for numerical checks such as DDP
        equivalence; ``auto`` is bf16 on CUDA and fp32 elsewhere; fp16 needs CUDA."""
        dtype = torch.float64 if precision == "fp64" else torch.float32
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" else "fp32"
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError("config key 'train.precision' is fp16, which needs CUDA; use bf16 or fp32 on CPU")
        return cls(dtype, precision in ("bf16", "fp16"), torch.float16 if precision == "fp16" else torch.bfloat16,
                   precision == "fp16")


def train_step(model: nn.Module, state: TrainState, batch: Batch, precision: Precision, total_steps: int,
               collapse_threshold: float, device: torch.device) -> dict[str, float]:
    """Run one optimiser step of ``state`` on ``batch`` (this rank's shard of a global batch)
    through ``model`` (the method, or its DDP wrapper); the step's scalars, averaged over the
    ranks. Does not advance ``state``'s position: the loop does, once the step is logged."""
    method, opt, sched, scaler = state.method, state.optimizer, state.scheduler, state.scaler
    with torch.autocast(device.type, dtype=precision.autocast_dtype, enabled=precision.autocast):
        out = model(*batch)       # (view1, view2, labels[, local views])
    opt.zero_grad(set_to_none=True)
    scaler.scale(out.loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()
    logs = {"loss": float(out.loss.detach()), **out.logs, **method.on_step_end(state.step, total_steps),
            "lr": sched.get_last_lr()[0]}
    if out.z1 is not None:   # every rank gathers: the metrics are those of the global batch
        logs.update(health_metrics(dist.gather_nograd(out.z1), dist.gather_nograd(out.z2), collapse_threshold))
    return dist.all_reduce_mean(logs, device)
