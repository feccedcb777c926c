"""Self-supervised methods, registered by name (``train.method`` in the config).

A method is an ``nn.Module`` built from the config that owns everything trained besides the
encoder (heads, momentum networks, queues) and whose ``forward(view1, view2)`` returns
``(loss, logs)``. ``method.encoder`` is what pretraining produces.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from medcl.config import Config

METHODS: dict[str, Callable[[Config], nn.Module]] = {}


def register(name: str):
    def deco(builder):
        METHODS[name] = builder
        return builder
    return deco


def build_method(cfg: Config) -> nn.Module:
    name = cfg.train.method
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name](cfg)


from medcl.ssl import simclr  # noqa: E402,F401  (registers itself)
