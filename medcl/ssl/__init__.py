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
| swav | swav.py | prototypes, Sinkhorn-Knopp codes over the global batch, queue; swapped prediction | no |
| supcon | supcon.py | temperature; supervised contrastive | used if present |
| triplet | triplet.py | triplet margin over all triplets | used if present |
| margin | margin.py | contrastive loss with margins on pairs | used if present |
| npair | npair.py | multi-class N-pair | used if present |

Label policy (supcon, triplet, margin, npair): the two views of a scan always share its
label; a scan without a label (empty in the manifest, ``-1`` in the batch) is a class of its
own, so its only positive is its other view. With no labels at all these methods are
instance discrimination.

Multi-crop (``augment.local_views > 0``): a method with ``uses_local_views`` gets the local
views as ``forward(..., local=)`` (swav as in its paper; simclr and byol as documented in their
modules); medcl.validate refuses local views for the others.

Each method checks its own settings (:meth:`~medcl.ssl.base.Method.checks`); medcl.validate runs
the checks of the method the config selects.
"""

from __future__ import annotations

from typing import Callable

from medcl.ssl.barlow_twins import BarlowTwins
from medcl.ssl.base import Method
from medcl.ssl.byol import BYOL
from medcl.ssl.margin import Margin
from medcl.ssl.moco import MoCo
from medcl.ssl.npair import NPair
from medcl.ssl.simclr import SimCLR
from medcl.ssl.supcon import SupCon
from medcl.ssl.swav import SwAV
from medcl.ssl.triplet import Triplet
from medcl.ssl.vicreg import VICReg

METHODS: dict[str, Callable[..., Method]] = {
    "simclr": SimCLR,
    "moco": MoCo,
    "byol": BYOL,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "swav": SwAV,
    "supcon": SupCon,
    "triplet": Triplet,
    "margin": Margin,
    "npair": NPair,
}


def register(name: str):
    """Decorator adding a method class (``cfg -> Method``) under ``name`` (for plug-ins)."""
    def deco(builder):
        METHODS[name] = builder
        return builder
    return deco


def method_class(name: str) -> Callable[..., Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def build_method(cfg):
    """The method ``cfg.train.method``, freshly initialised."""
    return method_class(cfg.train.method)(cfg)
