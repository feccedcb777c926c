"""What every method shares: encoder + projection head, the step output, a temperature that
may be learned, momentum networks with their EMA schedule, and the label policy."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from medcl.config import Config, TrainConfig
from medcl.models import ProjectionHead, build_encoder
from medcl.dist import gather_nograd


@dataclass
class StepOutput:
    """What ``Method.forward`` returns: the loss, scalars to log, and the (detached, local)
    embeddings of the two views for the health metrics. Unpacks as ``loss, logs``."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    z1: torch.Tensor | None = None
    z2: torch.Tensor | None = None

    def __iter__(self):
        return iter((self.loss, self.logs))


class Temperature(nn.Module):
    """A softmax temperature: a constant, or (``learn=True``) a trained parameter stored as its
    log and kept >= ``minimum`` (as CLIP bounds its logit scale)."""

    def __init__(self, value: float, learn: bool = False, minimum: float = 0.01):
        super().__init__()
        if value <= 0:
            raise ValueError(f"Temperature: value must be > 0, got {value}")
        self.value, self.learn, self.minimum = float(value), learn, minimum
        if learn:
            self.log_t = nn.Parameter(torch.tensor(math.log(value)))

    def forward(self) -> float | torch.Tensor:
        return self.log_t.exp().clamp_min(self.minimum) if self.learn else self.value

    def logs(self) -> dict[str, torch.Tensor]:
        """The learned temperature, left on the device (the loop fetches it with the step's scalars)."""
        return {"temperature": self().detach()} if self.learn else {}


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` (updated only by :func:`ema_update`)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """target <- m * target + (1 - m) * online, parameter by parameter (buffers such as
    batch-norm statistics follow their own running averages)."""
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.mul_(m).add_(po.detach(), alpha=1 - m)


def cosine_momentum(step: int, total: int, base: float, end: float = 1.0) -> float:
    """BYOL's schedule (Grill et al. 2020, §3.2): ``end - (end - base)(cos(pi k / K) + 1) / 2``."""
    return end - (end - base) * (math.cos(math.pi * min(step, total) / max(1, total)) + 1) / 2


def own_class_labels(labels: torch.Tensor) -> torch.Tensor:
    """Unlabelled samples (label < 0) each get a class of their own, above every real label."""
    labels = labels.long()
    top = labels.max().clamp_min(-1) + 1 if labels.numel() else 0     # a tensor: no host synchronisation
    idx = torch.arange(len(labels), device=labels.device)
    return torch.where(labels < 0, top + idx, labels)


class Method(nn.Module):
    """Encoder + projection head. Subclasses add what differs and implement :meth:`forward`."""

    needs_labels = False          # the method uses labels when the cohort has them
    uses_local_views = False      # the method uses multi-crop's local views (augment.local_views > 0)

    @classmethod
    def checks(cls, t: TrainConfig) -> list[tuple[bool, str, str]]:
        """This method's own settings as ``(holds, key, why)`` checks (medcl.validate runs them
        for the method the config selects)."""
        return []

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.encoder = build_encoder(m.arch, m.conv1_t_stride, m.widen_factor)
        self.projector = ProjectionHead(self.encoder.feature_dim, m.proj_hidden, m.proj_dim)

    def project(self, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections of the two views, through one encoder pass (batch norm sees both)."""
        return self.projector(self.encoder(torch.cat([v1, v2]))).chunk(2)

    def project_views(self, v1: torch.Tensor, v2: torch.Tensor,
                      local: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Projections of the two global views, then of each local view (``local``: (N, L, 1, s,
        s, s), multi-crop): one encoder pass per view size, one projector pass for all views
        (its batch norm sees every view, as in SwAV's code). Without local views: :meth:`project`."""
        if local is None:
            return list(self.project(v1, v2))
        h = torch.cat([self.encoder(torch.cat([v1, v2])), self.encoder(local.transpose(0, 1).flatten(0, 1))])
        return list(self.projector(h).chunk(2 + local.shape[1]))

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None,
                local: torch.Tensor | None = None) -> StepOutput:
        """The step's loss; every registered method defines it (medcl/ssl/<method>.py).
        ``local``: the local views (multi-crop), given only to methods with ``uses_local_views``."""
        raise NotImplementedError(f"{type(self).__name__} defines no forward(): not a registered method")

    def on_step_end(self, step: int, total: int) -> dict[str, float]:
        """Called after each optimiser step (momentum updates); returns scalars to log."""
        return {}

    @staticmethod
    def global_labels(labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        """Every rank's labels in rank order, unlabelled ones made classes of their own."""
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.long)
        return own_class_labels(gather_nograd(labels.to(device).long()))


class MomentumMixin:
    """A momentum (EMA) copy of encoder + projector, updated after each step with
    :func:`cosine_momentum` from ``train.ema_momentum`` to ``train.ema_momentum_end``."""

    @classmethod
    def checks(cls, t: TrainConfig) -> list[tuple[bool, str, str]]:
        return super().checks(t) + [
            (0 <= t.ema_momentum <= t.ema_momentum_end <= 1, "train.ema_momentum",
             "must satisfy 0 <= ema_momentum <= ema_momentum_end <= 1")]

    def init_momentum(self, cfg: Config) -> None:
        self.momentum_encoder = momentum_copy(self.encoder)
        self.momentum_projector = momentum_copy(self.projector)
        self.ema_base, self.ema_end = cfg.train.ema_momentum, cfg.train.ema_momentum_end

    @torch.no_grad()
    def momentum_project(self, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.momentum_projector(self.momentum_encoder(torch.cat([v1, v2]))).chunk(2)

    def on_step_end(self, step: int, total: int) -> dict[str, float]:
        m = cosine_momentum(step, total, self.ema_base, self.ema_end)
        ema_update(self.momentum_encoder, self.encoder, m)
        ema_update(self.momentum_projector, self.projector, m)
        return {"ema_momentum": m}
