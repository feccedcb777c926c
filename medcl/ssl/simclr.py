"""SimCLR (Chen et al., 2020): encoder + MLP projection head + NT-Xent over every GPU's batch."""

from __future__ import annotations

import torch

from medcl.config import Config
from medcl.losses import nt_xent
from medcl.ssl.base import Method, StepOutput, Temperature
from medcl.dist import gather


class SimCLR(Method):
    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.temperature = Temperature(cfg.train.temperature, cfg.train.learn_temperature)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None) -> StepOutput:
        z1, z2 = self.project(v1, v2)
        loss = nt_xent(gather(z1), gather(z2), self.temperature())
        return StepOutput(loss, self.temperature.logs(), z1.detach(), z2.detach())
