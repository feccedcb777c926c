"""Self-supervised methods, registered by name in one table (``train.method`` in the config).

A method is a :class:`medcl.ssl.base.Method`: an ``nn.Module`` built from the config that owns
everything trained besides the encoder (heads, momentum networks, queue, temperature) and
whose ``forward(view1, view2, labels)`` returns ``(loss, logs)`` (a
:class:`~medcl.ssl.base.StepOutput`). ``method.encoder`` is what pretraining produces. A method
module adds only what differs from :class:`~medcl.ssl.base.Method` (encoder + projection head).

| name | module | adds | labels |
|---|---|---|---|
| simclr | simclr.py | temperature; NT-Xent over every GPU's batch | no |
| moco | moco.py | momentum encoder + head, queue; symmetric InfoNCE | no |
| byol | byol.py | predictor, momentum target; symmetric normalised regression | no |
| barlow_twins | barlow_twins.py | Barlow Twins loss on the global batch | no |
| vicreg | vicreg.py | VICReg loss on the global batch | no |
| supcon | supcon.py | temperature; supervised contrastive | used if present |
| triplet | triplet.py | triplet margin over all triplets | used if present |
| margin | margin.py | contrastive loss with margins on pairs | used if present |
| npair | npair.py | multi-class N-pair | used if present |

Label policy (supcon, triplet, margin, npair): the two views of a scan always share its
label; a scan without a label (empty in the manifest, ``-1`` in the batch) is a class of its
own, so its only positive is its other view. With no labels at all these methods are
instance discrimination.

This module imports nothing heavy: the config validates ``train.method`` against
:data:`METHODS` without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Callable

METHODS: dict[str, str | Callable] = {
    "simclr": "medcl.ssl.simclr:SimCLR",
    "moco": "medcl.ssl.moco:MoCo",
    "byol": "medcl.ssl.byol:BYOL",
    "barlow_twins": "medcl.ssl.barlow_twins:BarlowTwins",
    "vicreg": "medcl.ssl.vicreg:VICReg",
    "supcon": "medcl.ssl.supcon:SupCon",
    "triplet": "medcl.ssl.triplet:Triplet",
    "margin": "medcl.ssl.margin:Margin",
    "npair": "medcl.ssl.npair:NPair",
}


def register(name: str):
    """Decorator adding a method builder (``cfg -> Method``) under ``name`` (for plug-ins)."""
    def deco(builder):
        METHODS[name] = builder
        return builder
    return deco


def method_class(name: str) -> Callable:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    entry = METHODS[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry


def build_method(cfg):
    """The method ``cfg.train.method``, freshly initialised."""
    return method_class(cfg.train.method)(cfg)
