"""One training step: forward under autocast, backward through the gradient scaler, optimiser
and schedule step, the method's own end-of-step update (momentum networks), and the step's
scalars (loss, method logs, learning rate, ``health/*`` when asked) left on the device.

No host synchronisation: a step copies nothing to the host (no ``.item()``, ``float()`` or
``.cpu()`` of a device tensor) and runs no collective but the method's own gathers.
:class:`StepMetrics` keeps the scalars of the steps since the last fetch where they were
computed and fetches them all at once, averaged over the ranks (one all-reduce, one copy),
every ``train.log_every_steps`` steps. tests/test_sync_budget.py holds the loop to this (the
budget is in docs/performance.md)."""

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


Scalar = torch.Tensor | float    # a 0-d tensor on the training device, or a host number (lr)


def train_step(model: nn.Module, state: TrainState, batch: Batch, precision: Precision, total_steps: int,
               collapse_threshold: float, device: torch.device, health: bool = True) -> dict[str, Scalar]:
    """Run one optimiser step of ``state`` on ``batch`` (this rank's shard of a global batch)
    through ``model`` (the method, or its DDP wrapper); this rank's scalars of the step, on the
    device, with the ``health/*`` metrics of the global batch when ``health`` (every rank must
    agree: they gather). Does not advance ``state``'s position: the loop does."""
    method, opt, sched, scaler = state.method, state.optimizer, state.scheduler, state.scaler
    with torch.autocast(device.type, dtype=precision.autocast_dtype, enabled=precision.autocast):
        out = model(*batch)       # (view1, view2, labels[, local views])
    opt.zero_grad(set_to_none=True)
    scaler.scale(out.loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()
    logs = {"loss": out.loss.detach(), **out.logs, **method.on_step_end(state.step, total_steps),
            "lr": sched.get_last_lr()[0]}
    if health and out.z1 is not None:   # every rank gathers: the metrics are those of the global batch
        logs.update(health_metrics(dist.gather_nograd(out.z1), dist.gather_nograd(out.z2), collapse_threshold))
    return logs


class StepMetrics:
    """The scalars of the steps not fetched yet, kept where they were computed.
    :meth:`fetch` returns them as host numbers, each the mean over the ranks (as the loss of a
    step on the global batch), with one all-reduce and one device-to-host copy for all of them;
    host numbers (the learning rate, the EMA momentum: equal on every rank) pass through."""

    def __init__(self):
        self.pending: list[tuple[int, dict[str, Scalar]]] = []

    def add(self, step: int, logs: dict[str, Scalar]) -> None:
        self.pending.append((step, logs))

    def fetch(self) -> list[tuple[int, dict[str, float]]]:
        """``(step, scalars)`` of every pending step, in order; every rank must call it at the
        same steps (it all-reduces)."""
        rows = [dict(logs) for _, logs in self.pending]
        keys = [(i, k) for i, row in enumerate(rows) for k, v in row.items() if torch.is_tensor(v)]
        if keys:
            values = torch.stack([rows[i][k].reshape(()).to(torch.float64) for i, k in keys])
            for (i, k), v in zip(keys, dist.mean_over_ranks(values)):
                rows[i][k] = v
        out = [(step, row) for (step, _), row in zip(self.pending, rows)]
        self.pending = []
        return out
