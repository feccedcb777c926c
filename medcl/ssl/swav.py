"""SwAV (Caron et al., NeurIPS 2020): online clustering with swapped prediction. Each global
view's embedding is assigned a code over ``train.swav_prototypes`` learnable prototypes by
Sinkhorn-Knopp (``train.swav_epsilon``, ``train.swav_iterations``), and every other view, local
views of multi-crop included (``augment.local_views``), predicts that code through a softmax at
``train.temperature`` (:func:`medcl.losses.swav`).

- Prototypes: a linear map without bias whose rows are L2-normalised at the start and after
  every optimiser step (:meth:`on_step_end`). For the first ``train.swav_freeze_prototypes``
  steps they get a zero gradient (they stay in the graph, so DDP sees every parameter used);
  the optimiser's weight decay on them only shrinks them, which the normalisation undoes.
- Queue (``train.swav_queue_size``, per global view): the normalised embeddings of earlier
  batches, every rank's (gathered, so all ranks hold the same queue and a checkpoint of rank 0
  restores every rank), newest first. Once full, its scores against the current prototypes
  join the batch's in the Sinkhorn-Knopp iterations; rank ``r`` of ``W`` contributes rows
  ``r, r + W, ...``, so that with the all-reduced sums the codes are those of the global batch
  plus the whole queue, as on one process. As with MoCo's, a queue longer than a few batches
  of a small cohort holds stale embeddings of the very scans in the batch.
- Several GPUs: the codes come from the Sinkhorn sums all-reduced over the ranks
  (:func:`medcl.dist.all_reduce_sum`); the loss is each rank's mean over its own samples, and
  DDP's average of the gradients is the one-process gradient (``tests/test_ddp.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcl import dist
from medcl.config import Config, TrainConfig
from medcl.losses import swav
from medcl.ssl.base import Method, StepOutput, Temperature

N_GLOBAL = 2


class SwAV(Method):
    uses_local_views = True

    @classmethod
    def checks(cls, t: TrainConfig) -> list[tuple[bool, str, str]]:
        return [(t.swav_prototypes >= 2, "train.swav_prototypes", "must be >= 2"),
                (t.swav_epsilon > 0, "train.swav_epsilon", "must be > 0"),
                (t.swav_iterations >= 1, "train.swav_iterations", "must be >= 1"),
                (t.swav_queue_size >= 0, "train.swav_queue_size", "must be >= 0 (0 = no queue)"),
                (t.swav_freeze_prototypes >= 0, "train.swav_freeze_prototypes", "must be >= 0")]

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        t, dim = cfg.train, cfg.model.proj_dim
        self.prototypes = nn.Linear(dim, t.swav_prototypes, bias=False)
        self.normalize_prototypes()
        self.temperature = Temperature(t.temperature, t.learn_temperature)
        self.epsilon, self.iterations, self.freeze = t.swav_epsilon, t.swav_iterations, t.swav_freeze_prototypes
        self.register_buffer("queue", torch.zeros(N_GLOBAL, t.swav_queue_size, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self._queue_full = False

    def _load_from_state_dict(self, *args, **kwargs):
        self._queue_full = False            # a restored queue is looked at again
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def _prototypes(self) -> torch.Tensor:
        """The prototypes, with a zero gradient while frozen (no host sync: a tensor condition)."""
        w = self.prototypes.weight
        return torch.where(self.steps_done < self.freeze, w.detach(), w)

    def _queue_scores(self, w: torch.Tensor) -> list[torch.Tensor | None]:
        size = self.queue.shape[1]
        if size == 0:
            return [None] * N_GLOBAL
        if not self._queue_full:            # host sync only until the queue has filled once
            self._queue_full = bool(self.queue_filled >= size)
            if not self._queue_full:
                return [None] * N_GLOBAL
        rows = self.queue[:, dist.rank()::dist.world_size()]
        return [r @ w.detach().t() for r in rows]

    @torch.no_grad()
    def _enqueue(self, z: list[torch.Tensor]) -> None:
        size = self.queue.shape[1]
        if size == 0:
            return
        for g in range(N_GLOBAL):
            new = dist.gather_nograd(z[g].detach()).to(self.queue.dtype)
            self.queue[g] = torch.cat([new, self.queue[g]])[:size]
        self.queue_filled.add_(len(new)).clamp_(max=size)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None,
                local: torch.Tensor | None = None) -> StepOutput:
        z = self.project_views(v1, v2, local)
        zn = [F.normalize(x, dim=1) for x in z]
        w = self._prototypes()
        queue = self._queue_scores(w)
        loss = swav([x @ w.t() for x in zn], self.temperature(), self.epsilon, self.iterations, N_GLOBAL, queue,
                    dist.all_reduce_sum)
        self._enqueue(zn)
        return StepOutput(loss, self.temperature.logs(), z[0].detach(), z[1].detach())

    def on_step_end(self, step: int, total: int) -> dict[str, float]:
        self.steps_done.fill_(step + 1)
        self.normalize_prototypes()
        return {}
