"""Multi-class N-pair loss (Sohn, NeurIPS 2016): each scan's first view picks its second view out
of the global batch's second views; second views of the same class are not used as negatives
(see the label policy in :mod:`medcl.ssl`). Plain dot products with an L2 penalty
(``train.npair_l2_reg``), as in the paper."""

from __future__ import annotations

import torch

from medcl.config import Config, TrainConfig
from medcl.losses import n_pair
from medcl.ssl.base import Method, StepOutput
from medcl.dist import gather


class NPair(Method):
    @classmethod
    def checks(cls, t: TrainConfig) -> list[tuple[bool, str, str]]:
        return [(t.npair_l2_reg >= 0, "train.npair_l2_reg", "must be >= 0")]

    needs_labels = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.l2_reg = cfg.train.npair_l2_reg

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None) -> StepOutput:
        z1, z2 = self.project(v1, v2)
        y = self.global_labels(labels, len(v1), z1.device)
        loss = n_pair(gather(z1), gather(z2), labels=y, l2_reg=self.l2_reg)
        return StepOutput(loss, {}, z1.detach(), z2.detach())
