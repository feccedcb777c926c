"""Every loss in medcl.losses: against pytorch-metric-learning where it has the loss (to 1e-5,
values and gradients), else against the paper's formula written out with scalar arithmetic on
a small case; plus the argument checks."""

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml
from pytorch_metric_learning.distances import DotProductSimilarity

from medcl.losses import (barlow_twins, contrastive_margin, info_nce, n_pair, normalized_regression, supcon,
                          triplet_margin, vicreg)


def _data(n, d, seed, n_classes=3):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, requires_grad=True)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    return z, labels


def _same_value_and_grad(ours, theirs, *inputs, atol=1e-5):
    a = ours()
    grads_a = torch.autograd.grad(a, inputs)
    b = theirs()
    grads_b = torch.autograd.grad(b, inputs)
    assert torch.allclose(a, b.to(a.dtype), atol=atol), (a.item(), b.item())
    for ga, gb in zip(grads_a, grads_b):
        assert torch.allclose(ga, gb, atol=atol), (ga - gb).abs().max()


# ---- against pytorch-metric-learning -------------------------------------------------------

@pytest.mark.parametrize("n,d,t,seed", [(8, 16, 0.1, 0), (12, 32, 0.5, 1), (20, 8, 0.07, 2)])
def test_supcon_matches_pml(n, d, t, seed):
    z, labels = _data(n, d, seed)
    _same_value_and_grad(lambda: supcon(z, labels, t), lambda: pml.SupConLoss(temperature=t)(z, labels), z)


@pytest.mark.parametrize("n,d,margin,seed", [(8, 16, 0.05, 0), (12, 4, 0.2, 1), (16, 32, 0.5, 2)])
def test_triplet_margin_matches_pml(n, d, margin, seed):
    z, labels = _data(n, d, seed)
    _same_value_and_grad(lambda: triplet_margin(z, labels, margin),
                         lambda: pml.TripletMarginLoss(margin=margin)(z, labels), z)


@pytest.mark.parametrize("n,d,pm,nm,seed", [(8, 16, 0.0, 1.0, 0), (12, 4, 0.1, 0.8, 1), (16, 32, 0.3, 1.2, 2)])
def test_contrastive_margin_matches_pml(n, d, pm, nm, seed):
    z, labels = _data(n, d, seed)
    _same_value_and_grad(lambda: contrastive_margin(z, labels, pm, nm),
                         lambda: pml.ContrastiveLoss(pos_margin=pm, neg_margin=nm)(z, labels), z)


@pytest.mark.parametrize("n,d,seed", [(4, 8, 0), (6, 16, 1), (10, 3, 2)])
def test_n_pair_matches_pml(n, d, seed):
    """One (anchor, positive) pair per class, laid out so that PML picks exactly these pairs
    (it keeps the first positive pair of each label); plain dot products as in Sohn (PML
    normalises unless told not to)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, requires_grad=True)
    p = torch.randn(n, d, generator=g, requires_grad=True)
    labels = torch.arange(n)
    _same_value_and_grad(lambda: n_pair(a, p), lambda: pml.NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))(torch.cat([a, p]), torch.cat([labels, labels])),
                         a, p)


@pytest.mark.parametrize("n,d,seed", [(8, 16, 0), (32, 8, 1)])
def test_vicreg_matches_pml(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    z1 = (0.3 * torch.randn(n, d, generator=g)).requires_grad_()
    z2 = (0.3 * torch.randn(n, d, generator=g)).requires_grad_()
    _same_value_and_grad(lambda: vicreg(z1, z2), lambda: pml.VICRegLoss()(z1, ref_emb=z2), z1, z2)


# ---- against the paper's formula, by hand ----------------------------------------------------

def _unit(v):
    s = math.sqrt(sum(x * x for x in v))
    return [x / s for x in v]


def _dot(u, v):
    return sum(a * b for a, b in zip(u, v))


Q = [[1.0, 0.0], [0.6, 0.8], [0.0, -2.0]]
K = [[0.8, 0.6], [0.0, 1.0], [1.0, -1.0]]
QUEUE = [[-1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize("in_batch", [True, False])
def test_info_nce_by_hand(in_batch):
    """MoCo eq. (1): -log exp(q.k+/t) / (exp(q.k+/t) + sum over negatives)."""
    t = 0.5
    expected = 0.0
    for i, q in enumerate(Q):
        q = _unit(q)
        pos = math.exp(_dot(q, _unit(K[i])) / t)
        negs = [math.exp(_dot(q, _unit(k)) / t) for k in QUEUE]
        if in_batch:
            negs += [math.exp(_dot(q, _unit(k)) / t) for j, k in enumerate(K) if j != i]
        expected += -math.log(pos / (pos + sum(negs)))
    got = info_nce(torch.tensor(Q), torch.tensor(K), t, queue=torch.tensor(QUEUE), in_batch=in_batch)
    assert got.item() == pytest.approx(expected / len(Q), abs=1e-5)


def test_info_nce_in_batch_only_is_nt_xent_one_way():
    """No queue, in-batch negatives: the key side of NT-Xent (sanity link between the two)."""
    t = 0.3
    expected = 0.0
    for i, q in enumerate(Q):
        logits = [_dot(_unit(q), _unit(k)) / t for k in K]
        expected += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    assert info_nce(torch.tensor(Q), torch.tensor(K), t).item() == pytest.approx(expected / 3, abs=1e-5)


def test_normalized_regression_by_hand():
    """BYOL eq. (2): ||p/|p| - z/|z|||^2, batch mean."""
    expected = sum(sum((a - b) ** 2 for a, b in zip(_unit(p), _unit(z))) for p, z in zip(Q, K)) / 3
    assert normalized_regression(torch.tensor(Q), torch.tensor(K)).item() == pytest.approx(expected, abs=1e-6)
    assert normalized_regression(torch.tensor(Q), torch.tensor(Q)).item() == pytest.approx(0.0, abs=1e-6)


def test_barlow_twins_by_hand():
    """Zbontar et al. eq. (1): standardise each dimension over the batch, C = Z1^T Z2 / N,
    sum (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2."""
    z1 = [[1.0, 2.0, 0.5], [2.0, 0.0, 1.0], [0.0, 1.0, -1.0], [3.0, 1.0, 0.0]]
    z2 = [[0.5, 1.0, 1.0], [2.5, -1.0, 0.0], [0.0, 2.0, -1.0], [1.0, 1.0, 2.0]]
    n, d, lam = 4, 3, 0.1

    def standardise(z):
        cols = list(zip(*z))
        means = [sum(c) / n for c in cols]
        stds = [math.sqrt(sum((x - m) ** 2 for x in c) / n + 1e-5) for c, m in zip(cols, means)]
        return [[(row[j] - means[j]) / stds[j] for j in range(d)] for row in z]

    a, b = standardise(z1), standardise(z2)
    c = [[sum(a[k][i] * b[k][j] for k in range(n)) / n for j in range(d)] for i in range(d)]
    expected = sum((1 - c[i][i]) ** 2 for i in range(d)) + lam * sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    assert barlow_twins(torch.tensor(z1), torch.tensor(z2), lambd=lam).item() == pytest.approx(expected, rel=1e-5)
    # perfectly correlated, decorrelated dimensions give (almost) zero loss
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins(z, z).item() == pytest.approx(0.0, abs=1e-4)


def test_vicreg_by_hand():
    """Bardes et al. eq. (1)-(6) with unbiased (co)variances; the variance term averaged over
    the two branches as in the authors' code."""
    z1 = [[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]]
    z2 = [[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]
    n, d, eps = 3, 2, 1e-4

    def var_term(z):
        cols = list(zip(*z))
        out = 0.0
        for c in cols:
            m = sum(c) / n
            out += max(0.0, 1 - math.sqrt(sum((x - m) ** 2 for x in c) / (n - 1) + eps))
        return out / d

    def cov_term(z):
        cols = list(zip(*z))
        means = [sum(c) / n for c in cols]
        cov01 = sum((cols[0][k] - means[0]) * (cols[1][k] - means[1]) for k in range(n)) / (n - 1)
        return 2 * cov01 ** 2 / d

    sim = sum((a - b) ** 2 for r1, r2 in zip(z1, z2) for a, b in zip(r1, r2)) / (n * d)
    expected = 25 * sim + 25 * (var_term(z1) + var_term(z2)) / 2 + (cov_term(z1) + cov_term(z2))
    assert vicreg(torch.tensor(z1), torch.tensor(z2)).item() == pytest.approx(expected, rel=1e-5)


def test_n_pair_masks_same_label_negatives_and_adds_l2():
    """Sohn eq. (3) with the positives of same-label pairs left out of the denominator, and the
    L2 penalty of §3.2.2."""
    a, p, labels, reg = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[0.5, 0.5], [0.0, 2.0], [1.0, 0.0]], [0, 1, 0], 0.01
    expected = 0.0
    for i in range(3):
        terms = [math.exp(_dot(a[i], p[j]) - _dot(a[i], p[i])) for j in range(3) if j != i and labels[j] != labels[i]]
        expected += math.log(1 + sum(terms))
    expected = expected / 3 + reg * (sum(_dot(x, x) for x in a) / 3 + sum(_dot(x, x) for x in p) / 3)
    got = n_pair(torch.tensor(a), torch.tensor(p), labels=torch.tensor(labels), l2_reg=reg)
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_supcon_with_unique_labels_is_nt_xent():
    """Each view pair its own class: SupCon is NT-Xent (Khosla et al. §3.2)."""
    from medcl.losses import nt_xent

    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    labels = torch.arange(6).repeat(2)
    assert torch.allclose(supcon(torch.cat([z1, z2]), labels, 0.2), nt_xent(z1, z2, 0.2), atol=1e-6)


def test_margin_losses_are_zero_when_classes_are_separated():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    for loss in (triplet_margin(z, labels, 0.2), contrastive_margin(z, labels, 0.05, 1.0)):
        assert loss.item() == 0.0
        loss.backward()   # keeps a graph even when no pair or triplet is active


def test_degenerate_batches_give_a_loss_not_an_error():
    """A batch whose scans all share a class (or are all singletons) happens in training; the
    label losses stay defined (PML gives the same values) and never crash the step."""
    z = torch.randn(6, 4, requires_grad=True)
    one_class, singletons = torch.zeros(6, dtype=torch.long), torch.arange(6)
    assert triplet_margin(z, one_class).item() == 0.0 == triplet_margin(z, singletons).item()
    assert torch.allclose(contrastive_margin(z, one_class), pml.ContrastiveLoss()(z, one_class), atol=1e-6)
    assert n_pair(z[:3], z[3:], labels=one_class[:3]).item() == 0.0
    assert torch.isfinite(supcon(z, one_class))


def test_learned_temperature_gets_a_gradient():
    t = torch.tensor(0.2, requires_grad=True)
    z, labels = _data(6, 4, 0)
    for loss in (supcon(z, labels, t), info_nce(z, z.flip(0), t)):
        (g,) = torch.autograd.grad(loss, t)
        assert g.abs() > 0


# ---- argument checks ------------------------------------------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda: info_nce(torch.randn(3, 4), torch.randn(3, 5)), "info_nce: query and key must both be"),
    (lambda: info_nce(torch.randn(1, 4), torch.randn(1, 4)), "info_nce: no negatives"),
    (lambda: info_nce(torch.randn(3, 4), torch.randn(3, 4), queue=torch.randn(5, 3)), "info_nce: queue must be"),
    (lambda: info_nce(torch.randn(3, 4), torch.randn(3, 4), temperature=0), "info_nce: temperature must be > 0"),
    (lambda: normalized_regression(torch.randn(3, 4), torch.randn(4)), "normalized_regression: p and z"),
    (lambda: barlow_twins(torch.randn(1, 4), torch.randn(1, 4)), "barlow_twins: needs at least 2"),
    (lambda: barlow_twins(torch.randn(3, 4), torch.randn(3, 4), lambd=-1), "barlow_twins: lambd"),
    (lambda: vicreg(torch.randn(3, 4), torch.randn(3, 4), eps=0), "vicreg: eps"),
    (lambda: supcon(torch.randn(4, 3), torch.arange(4)), "supcon: no sample has a positive"),
    (lambda: supcon(torch.randn(4, 3), torch.zeros(3, dtype=torch.long)), "supcon: labels must be"),
    (lambda: supcon(torch.randn(4, 3), torch.zeros(4)), "supcon: labels must be integers"),
    (lambda: triplet_margin(torch.randn(2, 3), torch.arange(2)), "triplet_margin: needs at least 3"),
    (lambda: contrastive_margin(torch.randn(1, 3), torch.zeros(1, dtype=torch.long)), "contrastive_margin: needs"),
    (lambda: n_pair(torch.randn(3, 2), torch.randn(3, 2), labels=torch.zeros(2, dtype=torch.long)), "n_pair: labels must be"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
