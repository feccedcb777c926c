"""Optimisers and the learning-rate schedule: AdamW, SGD, LARS; linear warmup + cosine;
the learning rate scaled with the global batch size."""

from __future__ import annotations

import math

import torch
from torch import nn

from medcl.config import TrainConfig


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup to 1, then cosine decay to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def scaled_lr(t: TrainConfig, global_batch: int) -> float:
    """``train.lr`` scaled by the global batch (pairs per step over every process): linear
    (Goyal et al. 2017) or square-root scaling relative to ``train.lr_reference_batch``."""
    ratio = global_batch / t.lr_reference_batch
    return t.lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[t.lr_scaling]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You, Gitman, Ginsburg, 2017), as
    the Barlow Twins and BYOL code runs it: for a parameter ``w`` of a group with ``lars=True``

        g <- g + wd * w;   g <- g * eta * ||w|| / ||g||  (when both norms are > 0);
        v <- momentum * v + g;   w <- w - lr * v

    Groups with ``lars=False`` (biases and normalisation weights, see :func:`param_groups`)
    skip the weight decay and the trust ratio: plain SGD with momentum.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ValueError(f"LARS: bad hyper-parameters lr={lr} weight_decay={weight_decay} momentum={momentum} eta={eta}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if g["lars"]:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(dp)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), g["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    dp = dp.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(g["momentum"]).add_(dp)
                p.add_(buf, alpha=-g["lr"])
        return loss


def is_bias_or_norm(name: str, p: nn.Parameter) -> bool:
    """Biases, normalisation weights and scalars (a learned temperature): at most 1-D."""
    return p.ndim <= 1


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_norm: bool) -> list[dict]:
    """Trainable parameters in two groups: decayed (and LARS-adapted) weights, and the rest.
    A learned temperature is never decayed; biases and norm weights are excluded when
    ``exclude_bias_norm`` (always with LARS)."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = name.endswith("log_t") or (exclude_bias_norm and is_bias_or_norm(name, p))
        (rest if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lars": True}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0, "lars": False})
    return groups


OPTIMIZERS = ("adamw", "sgd", "lars")   # train.optimizer


def build_optimizer(model: nn.Module, t: TrainConfig, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``model``'s trainable parameters at learning rate ``lr``. AdamW
    and SGD decay every weight but a learned temperature (as medcl always has); LARS excludes
    biases and normalisation weights from decay and adaptation. ``fused`` (CUDA, from
    :class:`medcl.train.speed.SpeedSetup`): AdamW and SGD run their fused kernel."""
    if t.optimizer == "lars":
        return LARS(param_groups(model, t.weight_decay, True), lr=lr, weight_decay=t.weight_decay,
                    momentum=t.momentum, eta=t.lars_eta)
    groups = param_groups(model, t.weight_decay, False)
    for g in groups:
        g.pop("lars")
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay, fused=fused or None)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=t.weight_decay, fused=fused or None)
    raise ValueError(f"config key 'train.optimizer' must be adamw, sgd or lars, got {t.optimizer!r}")


def build_scheduler(opt: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
