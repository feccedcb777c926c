"""Shared by the loss functions: argument checks (one-line errors that name the loss and the
argument) and :func:`fp32`, which every loss is wrapped in."""

from __future__ import annotations

import functools

import torch


def pair(name: str, a: torch.Tensor, b: torch.Tensor, min_n: int = 1, a_name: str = "z1", b_name: str = "z2") -> None:
    """``a`` and ``b`` must both be (N, D) with N >= ``min_n``."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{name}: {a_name} and {b_name} must both be (N, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < min_n:
        raise ValueError(f"{name}: needs at least {min_n} samples, got {a.shape[0]}")


def embeddings_and_labels(name: str, z: torch.Tensor, labels: torch.Tensor) -> None:
    """``z`` (N, D) and integer ``labels`` (N,)."""
    if z.ndim != 2:
        raise ValueError(f"{name}: embeddings must be (N, D), got {tuple(z.shape)}")
    if labels.ndim != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(f"{name}: labels must be (N,) = ({z.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be integers, got {labels.dtype}")


def positive(name: str, arg: str, value, allow_zero: bool = False) -> None:
    """A number (or a tensor, e.g. a learned temperature, which is not checked) > 0 (or >= 0)."""
    if torch.is_tensor(value):
        return
    if not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{name}: {arg} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def mean_nonzero(losses: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mean of the strictly positive entries (the pairs or triplets that violate their margin);
    a zero that keeps the graph when none does."""
    active = losses[losses > 0]
    return active.mean() if active.numel() else like.sum() * 0.0


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 (autocast) to float32 for the loss arithmetic; float32/64 kept as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _upcast_arg(x):
    """A tensor argument upcast (:func:`upcast`), and each tensor of a list or tuple of them (SwAV's
    per-view scores, its queue)."""
    if isinstance(x, (list, tuple)):
        return type(x)(_upcast_arg(v) for v in x)
    return upcast(x) if torch.is_tensor(x) else x


def _device_type(args) -> str:
    """The device type of the first tensor among ``args`` (looking into lists and tuples); cpu if none."""
    for a in args:
        if torch.is_tensor(a):
            return a.device.type
        if isinstance(a, (list, tuple)):
            found = _device_type([v for v in a if v is not None])
            if found != "none":
                return found
    return "none"


def fp32(loss):
    """Decorator of every loss in :mod:`medcl.losses`: the loss runs in float32 whatever the
    caller's autocast. Under ``torch.autocast`` (``train.precision`` bf16/fp16) the inputs of
    ``@``/``mm``/``cdist`` would be cast back to the low precision, so a similarity logit at
    temperature 0.1 would carry an error of ~0.02; here autocast is off for the loss's device
    and float16/bfloat16 tensor arguments are upcast first, so the loss and its logits are
    those of an fp32 run (float64 inputs stay float64). ``loss.fp32_loss`` marks it (the tests
    check that every loss of the package has it)."""
    @functools.wraps(loss)
    def wrapper(*args, **kwargs):
        device = _device_type(args)
        with torch.autocast("cpu" if device == "none" else device, enabled=False):
            return loss(*map(_upcast_arg, args), **{k: _upcast_arg(v) for k, v in kwargs.items()})
    wrapper.fp32_loss = True
    return wrapper
