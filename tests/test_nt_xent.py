"""NT-Xent against pytorch-metric-learning's NTXentLoss (an independent implementation)."""

import pytest
import torch
from pytorch_metric_learning.losses import NTXentLoss

from medcl.losses import nt_xent


def pml_nt_xent(z1, z2, t):
    n = z1.shape[0]
    labels = torch.cat([torch.arange(n), torch.arange(n)])
    return NTXentLoss(temperature=t)(torch.cat([z1, z2]), labels)


@pytest.mark.parametrize("n,d,t", [(2, 8, 0.5), (8, 128, 0.2), (16, 32, 0.07), (5, 3, 1.0)])
def test_matches_pytorch_metric_learning(n, d, t):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert torch.allclose(nt_xent(z1, z2, t), pml_nt_xent(z1, z2, t), atol=1e-5)


def test_gradients_match_pytorch_metric_learning():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(6, 16, generator=g, requires_grad=True)
    b = torch.randn(6, 16, generator=g, requires_grad=True)
    nt_xent(a, b, 0.3).backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    pml_nt_xent(a, b, 0.3).backward()
    assert torch.allclose(ga, a.grad, atol=1e-6) and torch.allclose(gb, b.grad, atol=1e-6)


def test_perfect_pairs_beat_random_pairs():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 64, generator=g)
    assert nt_xent(z, z, 0.1) < nt_xent(z, torch.randn(8, 64, generator=g), 0.1)


@pytest.mark.parametrize("args,match", [
    ((torch.randn(1, 4), torch.randn(1, 4), 0.5), "at least 2 pairs"),
    ((torch.randn(3, 4), torch.randn(2, 4), 0.5), "must both be"),
    ((torch.randn(3, 4), torch.randn(3, 4), 0.0), "temperature"),
])
def test_bad_arguments_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        nt_xent(*args)
