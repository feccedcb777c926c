"""Pretraining: the loop, optimisers and schedules, checkpoints and resume, DDP, health metrics.

Attributes load lazily.
"""

from __future__ import annotations

import importlib

_LAZY = {"PairDataset": "medcl.train.loop", "PretrainResult": "medcl.train.loop", "pretrain": "medcl.train.loop",
         "warmup_cosine": "medcl.train.optim"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medcl.train' has no attribute '{name}'")
