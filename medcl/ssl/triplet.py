"""Triplet margin loss over every triplet of the global batch (views of the same class are
positives; see the label policy in :mod:`medcl.ssl`)."""

from __future__ import annotations

import torch

from medcl.config import Config, TrainConfig
from medcl.losses import triplet_margin
from medcl.ssl.base import Method, StepOutput
from medcl.dist import gather


class Triplet(Method):
    @classmethod
    def checks(cls, t: TrainConfig) -> list[tuple[bool, str, str]]:
        return [(t.margin >= 0, "train.margin", "must be >= 0")]

    needs_labels = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.margin = cfg.train.margin

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None) -> StepOutput:
        z1, z2 = self.project(v1, v2)
        y = self.global_labels(labels, len(v1), z1.device)
        loss = triplet_margin(torch.cat([gather(z1), gather(z2)]), torch.cat([y, y]), self.margin)
        return StepOutput(loss, {}, z1.detach(), z2.detach())
