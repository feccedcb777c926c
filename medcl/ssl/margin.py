"""Contrastive loss with margins on every pair of the global batch (Hadsell et al., 2006; views
of the same class are positives; see the label policy in :mod:`medcl.ssl`)."""

from __future__ import annotations

import torch

from medcl.config import Config, TrainConfig
from medcl.losses import contrastive_margin
from medcl.ssl.base import Method, StepOutput
from medcl.dist import gather


class Margin(Method):
    @classmethod
    def checks(cls, t: TrainConfig) -> list[tuple[bool, str, str]]:
        return [(0 <= t.pos_margin < t.neg_margin, "train.pos_margin", "must satisfy 0 <= pos_margin < neg_margin")]

    needs_labels = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.pos_margin, self.neg_margin = cfg.train.pos_margin, cfg.train.neg_margin

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None) -> StepOutput:
        z1, z2 = self.project(v1, v2)
        y = self.global_labels(labels, len(v1), z1.device)
        loss = contrastive_margin(torch.cat([gather(z1), gather(z2)]), torch.cat([y, y]),
                                  self.pos_margin, self.neg_margin)
        return StepOutput(loss, {}, z1.detach(), z2.detach())
