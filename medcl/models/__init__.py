"""3D ResNet encoder (MONAI) and projection heads.

The representation ``h`` is the globally pooled feature vector of the last ResNet stage;
the projection head maps it to ``z`` for the contrastive loss and is thrown away after
pretraining (Chen et al., SimCLR, 2020, §4.2: ``h`` transfers better than ``z``).
"""

from __future__ import annotations

import torch
from monai.networks import nets
from torch import nn

FEATURE_DIMS = {"resnet10": 512, "resnet18": 512, "resnet34": 512, "resnet50": 2048}  # at widen_factor 1


class Encoder(nn.Module):
    """MONAI 3D ResNet without its classifier: (B, 1, D, H, W) -> (B, feature_dim)."""

    def __init__(self, arch: str = "resnet10", conv1_t_stride: int = 2, widen_factor: float = 1.0,
                 in_channels: int = 1):
        super().__init__()
        if arch not in FEATURE_DIMS:
            raise ValueError(f"unknown encoder arch '{arch}' (known: {', '.join(FEATURE_DIMS)})")
        self.arch = arch
        self.feature_dim = int(FEATURE_DIMS[arch] * widen_factor)
        self.net = getattr(nets, arch)(spatial_dims=3, n_input_channels=in_channels,
                                       conv1_t_stride=conv1_t_stride, widen_factor=widen_factor,
                                       feed_forward=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProjectionHead(nn.Sequential):
    """Linear -> BatchNorm -> ReLU -> Linear: the two-layer MLP of SimCLR."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


def build_encoder(arch: str = "resnet10", conv1_t_stride: int = 2, widen_factor: float = 1.0,
                  seed: int | None = None) -> Encoder:
    """A freshly initialised encoder; ``seed`` makes the initialisation reproducible."""
    if seed is None:
        return Encoder(arch, conv1_t_stride, widen_factor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Encoder(arch, conv1_t_stride, widen_factor)
