"""VICReg (Bardes et al., ICLR 2022): invariance, variance and covariance terms on the global
batch."""

from __future__ import annotations

import torch

from medcl.config import Config, TrainConfig
from medcl.losses import vicreg
from medcl.ssl.base import Method, StepOutput
from medcl.dist import gather


class VICReg(Method):
    @classmethod
    def checks(cls, t: TrainConfig) -> list[tuple[bool, str, str]]:
        return [(all(w >= 0 for w in t.vicreg_weights), "train.vicreg_weights", "must all be >= 0")]

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.weights = cfg.train.vicreg_weights

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None) -> StepOutput:
        z1, z2 = self.project(v1, v2)
        sim, var, cov = self.weights
        loss = vicreg(gather(z1), gather(z2), sim, var, cov)
        return StepOutput(loss, {}, z1.detach(), z2.detach())
