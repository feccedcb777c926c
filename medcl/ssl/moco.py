"""MoCo (He et al., CVPR 2020; v2: Chen et al., 2020): a momentum key encoder + head and a queue
of earlier keys as negatives; the loss is symmetrised over the two views (as MoCo v3) and uses
the keys of every GPU as in-batch negatives too. ``train.queue_size=0`` keeps in-batch
negatives only.

The queue holds L2-normalised keys of the second view, every GPU's (gathered, so all ranks
hold the same queue); it starts as random unit vectors. On a cohort smaller than the queue the
queue holds stale keys of the very scans in the batch: keep ``queue_size`` below the cohort.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medcl.config import Config, TrainConfig
from medcl.losses import info_nce
from medcl.ssl.base import Method, MomentumMixin, StepOutput, Temperature
from medcl.dist import gather, gather_nograd


class MoCo(MomentumMixin, Method):
    @classmethod
    def checks(cls, t: TrainConfig) -> list[tuple[bool, str, str]]:
        return super().checks(t) + [(t.queue_size >= 0, "train.queue_size", "must be >= 0")]

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.init_momentum(cfg)
        self.temperature = Temperature(cfg.train.temperature, cfg.train.learn_temperature)
        dim = cfg.model.proj_dim
        self.register_buffer("queue", F.normalize(torch.randn(cfg.train.queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        size = self.queue.shape[0]
        if size == 0:
            return
        keys = keys[-size:]
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[idx] = F.normalize(keys.float(), dim=1).to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None) -> StepOutput:
        q1, q2 = self.project(v1, v2)
        k1, k2 = (gather_nograd(k) for k in self.momentum_project(v1, v2))
        q1g, q2g = gather(q1), gather(q2)
        queue = self.queue.clone() if self.queue.shape[0] else None
        t = self.temperature()
        loss = (info_nce(q1g, k2, t, queue) + info_nce(q2g, k1, t, queue)) / 2
        self._enqueue(k2)
        return StepOutput(loss, self.temperature.logs(), q1.detach(), q2.detach())
