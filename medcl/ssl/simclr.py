"""SimCLR (Chen et al., 2020): encoder + MLP projection head + NT-Xent over the batch."""

from __future__ import annotations

import torch
from torch import nn

from medcl.config import Config
from medcl.losses import nt_xent
from medcl.models import ProjectionHead, build_encoder
from medcl.ssl import register


class SimCLR(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.encoder = build_encoder(m.arch, m.conv1_t_stride, m.widen_factor)
        self.projector = ProjectionHead(self.encoder.feature_dim, m.proj_hidden, m.proj_dim)
        self.temperature = cfg.train.temperature

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        h = self.encoder(torch.cat([v1, v2]))
        z1, z2 = self.projector(h).chunk(2)
        loss = nt_xent(z1, z2, self.temperature)
        return loss, {"loss": float(loss.detach())}


@register("simclr")
def build(cfg: Config) -> SimCLR:
    return SimCLR(cfg)
