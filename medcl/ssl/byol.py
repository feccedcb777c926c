"""BYOL (Grill et al., NeurIPS 2020): online encoder + projector + predictor regress the
momentum target's projection of the other view; symmetric. No negatives: the loss is a mean
over samples, so DDP needs no gather (only batch norm couples samples: ``train.sync_bn``).

With multi-crop's local views (``augment.local_views``; not in the BYOL paper: the choice of
DINO, Caron et al. 2021, and solo-learn) the target network sees the two global views only, and
every online view (local ones included) regresses the target of each global view other than
itself; the loss is the mean over those pairs (with two views: BYOL's symmetric loss)."""

from __future__ import annotations

import torch

from medcl.config import Config
from medcl.losses import normalized_regression
from medcl.models import ProjectionHead
from medcl.ssl.base import Method, MomentumMixin, StepOutput


class BYOL(MomentumMixin, Method):
    uses_local_views = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.init_momentum(cfg)
        self.predictor = ProjectionHead(cfg.model.proj_dim, cfg.model.proj_hidden, cfg.model.proj_dim)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None,
                local: torch.Tensor | None = None) -> StepOutput:
        z = self.project_views(v1, v2, local)
        p = self.predictor(torch.cat(z)).chunk(len(z))
        t = self.momentum_project(v1, v2)
        pairs = [(v, g) for g in range(2) for v in range(len(z)) if v != g]
        loss = sum(normalized_regression(p[v], t[g]) for v, g in pairs) / len(pairs)
        return StepOutput(loss, {}, z[0].detach(), z[1].detach())
