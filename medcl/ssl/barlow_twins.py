"""Barlow Twins (Zbontar et al., ICML 2021): cross-correlation of the global batch's two views
towards the identity."""

from __future__ import annotations

import torch

from medcl.config import Config, TrainConfig
from medcl.losses import barlow_twins
from medcl.ssl.base import Method, StepOutput
from medcl.dist import gather


class BarlowTwins(Method):
    @classmethod
    def checks(cls, t: TrainConfig) -> list[tuple[bool, str, str]]:
        return [(t.barlow_lambda >= 0, "train.barlow_lambda", "must be >= 0")]

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.lambd = cfg.train.barlow_lambda

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None) -> StepOutput:
        z1, z2 = self.project(v1, v2)
        loss = barlow_twins(gather(z1), gather(z2), self.lambd)
        return StepOutput(loss, {}, z1.detach(), z2.detach())
