"""SwAV: the loss against a direct transcription of the paper's equations (scalar arithmetic,
loops, hand-sized inputs), the Sinkhorn-Knopp codes' marginals, the queue, the argument checks;
the method's prototypes (normalised after each step, frozen for the first steps), its queue and
its use of multi-crop's local views. DDP equivalence: tests/test_ddp.py; resume:
tests/test_train_state.py and tests/test_resume.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from medcl.config import load_config
from medcl.losses import sinkhorn, swav
from medcl.ssl import build_method

TINY = ["train.method=swav", "augment.view_size=16", "augment.local_size=8", "model.widen_factor=0.125",
        "model.proj_hidden=32", "model.proj_dim=16", "train.swav_prototypes=6"]


def _paper_codes(scores: list[list[float]], eps: float, iters: int) -> list[list[float]]:
    """Caron et al. 2020, eq. (3) solved as their Algorithm 1 (appendix A.1): Q = exp(C^T Z / eps)
    (K x B) over its total, then ``iters`` times rows to 1/K and columns to 1/B; codes are the
    columns normalised to sum to 1."""
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[i][j] / eps) for i in range(b)] for j in range(k)]
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iters):
        for j in range(k):
            u = sum(q[j])
            q[j] = [x * (1 / k) / u for x in q[j]]
        for i in range(b):
            c = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] *= (1 / b) / c
    return [[q[j][i] / sum(q[m][i] for m in range(k)) for j in range(k)] for i in range(b)]


def _paper_loss(views: list[torch.Tensor], n_global: int, t: float, eps: float, iters: int,
                queue: list | None = None) -> torch.Tensor:
    """eq. (1)-(2) with multi-crop (sec. 3.2): each global view's codes predicted by every other
    view, -sum_k q_k log p_k, p the softmax of scores / t; averaged as in the paper's code."""
    b, k = views[0].shape
    total = torch.zeros((), dtype=torch.float64)
    for g in range(n_global):
        rows = views[g].detach().tolist() + (queue[g].tolist() if queue else [])
        q = _paper_codes(rows, eps, iters)[:b]
        others = [v for v in range(len(views)) if v != g]
        for v in others:
            for i in range(b):
                denom = sum(torch.exp(views[v][i, m] / t) for m in range(k))
                total = total - sum(q[i][j] * torch.log(torch.exp(views[v][i, j] / t) / denom)
                                    for j in range(k)) / b / len(others) / n_global
    return total


def _scores(n_views, b, k, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    return [(F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1) @ protos.t()).requires_grad_()
            for _ in range(n_views)]


@pytest.mark.parametrize("n_views,n_global,b,k,t,eps,iters,seed", [
    (2, 2, 3, 4, 0.1, 0.05, 3, 0), (4, 2, 3, 4, 0.1, 0.05, 3, 1), (3, 1, 4, 3, 0.5, 0.2, 1, 2),
    (5, 2, 2, 5, 0.2, 0.1, 10, 3)])
def test_loss_and_gradient_match_the_papers_equations(n_views, n_global, b, k, t, eps, iters, seed):
    views = _scores(n_views, b, k, seed=seed)
    ours = swav(views, t, eps, iters, n_global)
    ref = _paper_loss(views, n_global, t, eps, iters)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    grads = [torch.autograd.grad(loss, views, allow_unused=True) for loss in (ours, ref)]
    for v, (a, r) in enumerate(zip(*grads)):     # with one global view, its scores get no gradient
        a, r = (torch.zeros_like(views[v]) if x is None else x for x in (a, r))
        assert torch.allclose(a, r, atol=1e-10)
        assert (a.abs().sum() > 0) == (n_global > 1 or v > 0)


def test_queue_rows_join_the_codes_batch():
    views = _scores(4, 3, 4, seed=5)
    queue = [s.detach() for s in _scores(2, 5, 4, seed=6)]
    ours = swav(views, 0.1, 0.05, 3, 2, queue)
    assert ours.item() == pytest.approx(_paper_loss(views, 2, 0.1, 0.05, 3, queue).item(), rel=1e-9)
    assert ours.item() != pytest.approx(swav(views, 0.1, 0.05, 3, 2).item(), rel=1e-3)


def test_codes_converge_to_an_equipartition():
    (s,) = _scores(1, 12, 4, seed=7)
    q = sinkhorn(s, epsilon=0.1, iterations=500)
    assert not q.requires_grad
    assert torch.allclose(q.sum(1), torch.ones(12, dtype=q.dtype), atol=1e-12)   # one code per sample
    assert torch.allclose(q.sum(0), torch.full((4,), 3.0, dtype=q.dtype), atol=1e-6)   # N/K per prototype
    few = sinkhorn(s, epsilon=0.1, iterations=1)
    assert (few.sum(0) - 3).abs().max() > 1e-3          # a fixed, small number of iterations is not there yet


def test_fp32_under_autocast_inputs():
    views = [v.detach().to(torch.bfloat16) for v in _scores(3, 4, 5, seed=8)]
    loss = swav(views, 0.1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("call,match", [
    (lambda: swav([torch.randn(3, 4)]), "swav: needs at least 2 views"),
    (lambda: swav([torch.randn(3, 4), torch.randn(3, 5)]), "swav: scores"),
    (lambda: swav([torch.randn(3, 4)] * 2, n_global=3), "swav: n_global"),
    (lambda: swav([torch.randn(3, 4)] * 2, temperature=0), "swav: temperature must be > 0"),
    (lambda: swav([torch.randn(3, 4)] * 2, epsilon=0), "swav: epsilon must be > 0"),
    (lambda: swav([torch.randn(3, 4)] * 2, iterations=0), "swav: iterations must be >= 1"),
    (lambda: swav([torch.randn(3, 4)] * 2, queue=[torch.randn(2, 3), None]), "swav: queue must hold"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- the method -------------------------------------------------------------------------------

def _views(n=4, local=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(n, 1, 16, 16, 16, generator=g), torch.randn(n, 1, 16, 16, 16, generator=g), None]
    return out[:2] + [torch.randn(n, local, 1, 8, 8, 8, generator=g) if local else None]


def _step(method, opt, step, local=0):
    v1, v2, loc = _views(local=local, seed=step)
    out = method(v1, v2, None, loc)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    method.on_step_end(step, 10)
    return out


def test_prototypes_frozen_for_the_first_steps_and_normalised_after_each():
    cfg = load_config(None, TINY + ["train.swav_freeze_prototypes=2"])
    torch.manual_seed(0)
    method = build_method(cfg)
    opt = torch.optim.SGD(method.parameters(), lr=0.5, weight_decay=0.1)
    w0 = method.prototypes.weight.detach().clone()
    assert torch.allclose(w0.norm(dim=1), torch.ones(6))
    for step in range(2):
        _step(method, opt, step)
        assert torch.equal(method.prototypes.weight.grad, torch.zeros_like(w0))   # in the graph, zero gradient
        assert torch.allclose(method.prototypes.weight, w0, atol=1e-6)            # decay undone by normalising
    enc = next(method.encoder.parameters()).detach().clone()
    _step(method, opt, 2)
    assert method.prototypes.weight.grad.abs().sum() > 0 and not torch.allclose(method.prototypes.weight, w0)
    assert torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(6), atol=1e-6)
    assert not torch.equal(next(method.encoder.parameters()), enc)


def test_queue_fills_newest_first_and_joins_the_codes_once_full():
    cfg = load_config(None, TINY + ["train.swav_queue_size=8"])
    torch.manual_seed(0)
    method = build_method(cfg).eval()      # eval: batch norm independent of the batch, to recompute below
    empty = {k: v.clone() for k, v in method.state_dict().items()}
    a1, a2, _ = _views(seed=1)
    v1, v2, _ = _views(seed=2)
    with torch.no_grad():
        method(a1, a2)
        assert int(method.queue_filled) == 4
        za = [F.normalize(x, dim=1) for x in method.project_views(a1, a2)]
        assert torch.allclose(method.queue[0, :4], za[0]) and torch.allclose(method.queue[1, :4], za[1])
        z = [F.normalize(x, dim=1) for x in method.project_views(v1, v2)]
        w = method.prototypes.weight
        partial = swav([x @ w.t() for x in z], 0.2, 0.05, 3)
        assert method(v1, v2).loss.item() == pytest.approx(partial.item(), rel=1e-5)   # not full yet: no queue
        assert int(method.queue_filled) == 8
        assert torch.allclose(method.queue[0, :4], z[0]) and torch.allclose(method.queue[0, 4:], za[0])
        queue = [method.queue[g] @ w.t() for g in range(2)]
        full = swav([x @ w.t() for x in z], 0.2, 0.05, 3, 2, queue)
        assert method(v1, v2).loss.item() == pytest.approx(full.item(), rel=1e-5)
        assert full.item() != pytest.approx(partial.item(), rel=1e-4)
        assert int(method.queue_filled) == 8
        method.load_state_dict(empty)       # a restored state with an empty queue: no queue again
        assert method(v1, v2).loss.item() == pytest.approx(partial.item(), rel=1e-5)


def test_local_views_predict_the_global_codes():
    cfg = load_config(None, TINY + ["augment.local_views=2"])
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    v1, v2, loc = _views(local=2)
    loc.requires_grad_()
    out = method(v1, v2, None, loc)
    z = [F.normalize(method.projector(method.encoder(x)), dim=1) for x in (v1, v2, loc[:, 0], loc[:, 1])]
    w = method.prototypes.weight
    assert out.loss.item() == pytest.approx(swav([x @ w.t() for x in z], 0.2).item(), rel=1e-5)
    (g,) = torch.autograd.grad(out.loss, loc)
    assert g[:, 0].abs().sum() > 0 and g[:, 1].abs().sum() > 0      # both local views are trained


# ---- bench/swav_codes.py's statistics (the collapse diagnosis in docs/methods.md) ---------------

def _bench_swav_codes():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "bench" / "swav_codes.py"
    spec = importlib.util.spec_from_file_location("swav_codes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_code_stats_tell_the_collapsed_batch_from_the_spread_one():
    stats = _bench_swav_codes().code_stats
    protos = torch.eye(6)[:4]                       # 4 orthonormal prototypes in 6 dimensions
    collapsed = torch.zeros(8, 6)
    collapsed[:, 5] = 2.0                           # every sample the same, orthogonal to every prototype
    c = stats(collapsed, protos, 0.1, 0.05, 3)
    assert c["H_code"] == pytest.approx(math.log(4)) and c["H_pred"] == pytest.approx(math.log(4))
    assert c["z_cos"] == pytest.approx(1.0) and c["in_span"] == pytest.approx(0.0, abs=1e-9)
    spread = torch.eye(6)[[0, 1, 2, 3, 0, 1, 2, 3]] * 3.0    # two samples on each prototype
    s = stats(spread, protos, 0.1, 0.05, 3)
    assert s["used_code"] == 4 and s["used_pred"] == 4
    assert s["H_code"] < 1e-3 and s["H_pred"] < 0.01          # one-hot codes, confident predictions
    assert s["z_cos"] == pytest.approx(1 / 7) and s["in_span"] == pytest.approx(1.0)
