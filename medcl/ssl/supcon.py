"""Supervised contrastive learning (Khosla et al., NeurIPS 2020) for cohorts with some labels:
every view of the same class is a positive; an unlabelled scan's only positive is its other
view (see the label policy in :mod:`medcl.ssl`)."""

from __future__ import annotations

import torch

from medcl.config import Config
from medcl.losses import supcon
from medcl.ssl.base import Method, StepOutput, Temperature
from medcl.dist import gather


class SupCon(Method):
    needs_labels = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.temperature = Temperature(cfg.train.temperature, cfg.train.learn_temperature)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None) -> StepOutput:
        z1, z2 = self.project(v1, v2)
        y = self.global_labels(labels, len(v1), z1.device)
        loss = supcon(torch.cat([gather(z1), gather(z2)]), torch.cat([y, y]), self.temperature())
        return StepOutput(loss, self.temperature.logs(), z1.detach(), z2.detach())
