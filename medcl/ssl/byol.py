"""BYOL (Grill et al., NeurIPS 2020): online encoder + projector + predictor regress the
momentum target's projection of the other view; symmetric. No negatives: the loss is a mean
over samples, so DDP needs no gather (only batch norm couples samples: ``train.sync_bn``)."""

from __future__ import annotations

import torch

from medcl.config import Config
from medcl.losses import normalized_regression
from medcl.models import ProjectionHead
from medcl.ssl.base import Method, MomentumMixin, StepOutput


class BYOL(MomentumMixin, Method):
    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.init_momentum(cfg)
        self.predictor = ProjectionHead(cfg.model.proj_dim, cfg.model.proj_hidden, cfg.model.proj_dim)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None) -> StepOutput:
        z1, z2 = self.project(v1, v2)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        t1, t2 = self.momentum_project(v1, v2)
        loss = (normalized_regression(p1, t2) + normalized_regression(p2, t1)) / 2
        return StepOutput(loss, {}, z1.detach(), z2.detach())
