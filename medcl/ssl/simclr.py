"""SimCLR (Chen et al., 2020): encoder + MLP projection head + NT-Xent over every GPU's batch.

With multi-crop's local views (``augment.local_views``; not in the SimCLR paper, Caron et al.
2020 report SimCLR with multi-crop; medcl's choice, docs/methods.md) every view of a scan is a positive of every other view of it: the
multi-positive NT-Xent, which is :func:`medcl.losses.supcon` with one class per scan (with two
views it is :func:`medcl.losses.nt_xent`)."""

from __future__ import annotations

import torch

from medcl.config import Config
from medcl.losses import nt_xent, supcon
from medcl.ssl.base import Method, StepOutput, Temperature
from medcl.dist import gather


class SimCLR(Method):
    uses_local_views = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.temperature = Temperature(cfg.train.temperature, cfg.train.learn_temperature)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None,
                local: torch.Tensor | None = None) -> StepOutput:
        z = self.project_views(v1, v2, local)
        if local is None:
            loss = nt_xent(gather(z[0]), gather(z[1]), self.temperature())
        else:
            views = [gather(x) for x in z]
            scans = torch.arange(len(views[0]), device=views[0].device)
            loss = supcon(torch.cat(views), scans.repeat(len(views)), self.temperature())
        return StepOutput(loss, self.temperature.logs(), z[0].detach(), z[1].detach())
