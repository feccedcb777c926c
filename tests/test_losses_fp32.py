"""Losses under bf16 autocast (``train.precision: auto`` on a GPU): every loss of medcl.losses,
and the loss of every SSL method, must equal its fp32 value (logits and loss within 1e-5
relative). Autocast would otherwise run the loss's ``@``/``mm``/``cdist`` in bfloat16. CPU
autocast casts the same ops to bfloat16 as CUDA autocast does, so this runs without a GPU."""

import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

import medcl.losses
from medcl.config import load_config
from medcl.ssl import METHODS, build_method

TINY = ["augment.view_size=16", "model.widen_factor=0.125", "model.proj_hidden=32", "model.proj_dim=16",
        "train.queue_size=6", "model.arch=resnet10"]
# the ops whose outputs are the logits, distances, statistics and losses of the loss functions
WATCHED = {"__matmul__", "matmul", "mm", "cdist", "cosine_similarity", "cross_entropy", "logsumexp", "mse_loss",
           "var", "normalize"}


class Watch(TorchFunctionMode):
    """Records the output of every watched op called (at the top level) inside the block."""

    def __init__(self):
        super().__init__()
        self.outputs: list[tuple[str, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in WATCHED and torch.is_tensor(out):
            self.outputs.append((name, out.detach().clone()))
        return out


def _bf16_exact(*shape, seed: int) -> torch.Tensor:
    """Random fp32 values that bfloat16 represents exactly (what a bf16 network hands the loss)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16().float()


def _scores(z: torch.Tensor) -> torch.Tensor:
    """Cosine-like prototype scores in [-1, 1] that bfloat16 represents exactly."""
    return torch.nn.functional.normalize(z, dim=1)[:, :8].bfloat16().float()


def _cases():
    z1, z2, z = _bf16_exact(12, 16, seed=0), _bf16_exact(12, 16, seed=1), _bf16_exact(12, 16, seed=2)
    queue = _bf16_exact(20, 16, seed=3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 3, 3, 2, 1])
    return {
        "nt_xent": (medcl.losses.nt_xent, (z1, z2, 0.1)),
        "info_nce": (medcl.losses.info_nce, (z1, z2, 0.2, queue)),
        "normalized_regression": (medcl.losses.normalized_regression, (z1, z2)),
        "barlow_twins": (medcl.losses.barlow_twins, (z1, z2)),
        "vicreg": (medcl.losses.vicreg, (z1, z2)),
        "supcon": (medcl.losses.supcon, (z, labels, 0.1)),
        "triplet_margin": (medcl.losses.triplet_margin, (z, labels, 0.2)),
        "contrastive_margin": (medcl.losses.contrastive_margin, (z, labels, 0.1, 0.9)),
        "n_pair": (medcl.losses.n_pair, (z1, z2, labels, 0.002)),
        "swav": (medcl.losses.swav, ([_scores(x) for x in (z1, z2, z)], 0.1)),
        "sinkhorn": (medcl.losses.sinkhorn, (_scores(z1),)),
    }


def _watched(loss, args):
    with Watch() as w:
        value = loss(*args)
    return value, w.outputs + [("loss", value.detach())]


def _assert_close(ours, ref, what):
    assert ours.dtype == ref.dtype == torch.float32, f"{what}: {ours.dtype}, fp32 run {ref.dtype}"
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0.0, msg=lambda m: f"{what}: {m}")


def test_every_loss_is_wrapped_in_fp32():
    missing = [name for name in medcl.losses.__all__ if not getattr(getattr(medcl.losses, name), "fp32_loss", False)]
    assert not missing, f"losses not wrapped in medcl.losses._checks.fp32: {missing}"


@pytest.mark.parametrize("name", sorted(_cases()))
def test_loss_and_logits_under_bf16_autocast_equal_fp32(name):
    loss, args = _cases()[name]
    _, ref = _watched(loss, args)
    half = tuple(_map_tensors(a, lambda t: t.bfloat16() if t.is_floating_point() else t) for a in args)
    for inputs in (args, half):                 # fp32 inputs, and the bf16 a bf16 network would give
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, ours = _watched(loss, inputs)
        assert [n for n, _ in ours] == [n for n, _ in ref]
        for i, ((op, a), (_, b)) in enumerate(zip(ours, ref)):
            _assert_close(a, b, f"{name}: output {i} ({op})")


def test_bf16_autocast_loss_gradient_flows_back_to_bf16_embeddings():
    z1 = _bf16_exact(8, 16, seed=4).bfloat16().requires_grad_()
    z2 = _bf16_exact(8, 16, seed=5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = medcl.losses.nt_xent(z1, z2, 0.2)
    loss.backward()
    assert loss.dtype == torch.float32 and z1.grad.dtype == torch.bfloat16 and z1.grad.abs().sum() > 0


def _record_losses(module, monkeypatch) -> list:
    """Patch every medcl loss the method's module calls to record its arguments and value."""
    calls = []
    for name in medcl.losses.__all__:
        fn = getattr(module, name, None)
        if fn is None:
            continue

        def recorder(*args, _fn=fn, _name=name, **kwargs):
            value = _fn(*args, **kwargs)
            calls.append((_name, _fn, args, kwargs, value))
            return value
        monkeypatch.setattr(module, name, recorder)
    return calls


def _map_tensors(x, fn):
    """``fn`` of a tensor, or of each tensor of a list or tuple (SwAV's per-view scores)."""
    if isinstance(x, (list, tuple)):
        return type(x)(_map_tensors(v, fn) for v in x)
    return fn(x) if torch.is_tensor(x) else x


def _tensors(args) -> list:
    return [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a]) if torch.is_tensor(t)]


def _fp32_copy(x):
    return _map_tensors(x, lambda t: t.detach().float() if t.is_floating_point() else t)


@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_every_method_loss_under_bf16_autocast_equals_fp32(method_name, monkeypatch):
    """The method's forward under bf16 autocast (encoder and heads in bf16): each loss it
    computes equals the fp32 loss of the same embeddings, recomputed without autocast."""
    torch.manual_seed(0)
    method = build_method(load_config(None, TINY + [f"train.method={method_name}"]))
    calls = _record_losses(sys.modules[type(method).__module__], monkeypatch)
    g = torch.Generator().manual_seed(0)
    v1, v2 = torch.randn(4, 1, 16, 16, 16, generator=g), torch.randn(4, 1, 16, 16, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(v1, v2, torch.tensor([0, 1, 0, 1]))
    assert calls, f"{method_name} computed no loss of medcl.losses"
    assert any(v.dtype == torch.bfloat16 for _, _, args, _, _ in calls for v in _tensors(args)), \
        "the embeddings were not bf16: the test would not test autocast"
    assert out.loss.dtype == torch.float32
    for name, fn, args, kwargs, value in calls:
        ref = fn(*map(_fp32_copy, args), **{k: _fp32_copy(v) for k, v in kwargs.items()})
        _assert_close(value.detach(), ref.detach(), f"{method_name}: {name}")
