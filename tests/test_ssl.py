"""The method registry and the methods' own parts: every method builds from its config file and
trains a step, momentum networks and their EMA schedule, MoCo's queue, the label policy, the
learned temperature; optimisers and schedules; health metrics; batch norm synced across ranks."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.config import ConfigError, load_config
from medcl.validate import load_checked
from medcl.ssl import METHODS, build_method
from medcl.ssl.base import Temperature, cosine_momentum, own_class_labels
from medcl.train.health import alignment, health_metrics, knn_balanced_accuracy, uniformity
from medcl.train.optim import LARS, build_optimizer, scaled_lr, warmup_cosine

CONFIGS = Path(__file__).parents[1] / "configs" / "pretrain"
TINY = ["augment.view_size=16", "model.widen_factor=0.125", "model.proj_hidden=32", "model.proj_dim=16",
        "train.queue_size=6", "model.arch=resnet10", "augment.local_size=8", "train.swav_freeze_prototypes=0"]


def _tiny(name: str, *extra: str):
    return load_config(CONFIGS / f"{name}.yaml", TINY + list(extra))


def _views(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, 16, generator=g), torch.randn(n, 1, 16, 16, 16, generator=g)


def test_one_config_file_per_method():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(METHODS)
    for name in METHODS:
        assert load_config(CONFIGS / f"{name}.yaml").train.method == name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_a_step_and_every_trainable_parameter_learns(name):
    cfg = _tiny(name, "train.learn_temperature=true")
    torch.manual_seed(0)
    method = build_method(cfg)
    v1, v2 = _views()
    out = method(v1, v2, torch.tensor([0, 1, -1, 0]))
    loss, logs = out                                     # unpacks as (loss, logs), as the loop always has
    assert loss.ndim == 0 and torch.isfinite(loss) and out.z1.shape == (4, 16) and not out.z1.requires_grad
    loss.backward()
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert {n for n, p in method.named_parameters() if p.requires_grad and p.grad is not None} == trainable
    assert all(not p.requires_grad for n, p in method.named_parameters() if n.startswith("momentum_"))
    assert method.encoder.feature_dim == 64      # method.encoder is what pretraining produces


def test_unknown_method_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="config key 'train.method' must be one of .*simclr.*got 'simsiam'"):
        load_checked(None, ["train.method=simsiam"])


def test_momentum_schedule_and_update():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    method = build_method(_tiny("byol", "train.ema_momentum=0.9"))
    w = dict(method.encoder.named_parameters())["net.conv1.weight"]
    with torch.no_grad():
        w.add_(1.0)
    target = dict(method.momentum_encoder.named_parameters())["net.conv1.weight"]
    before = target.detach().clone()
    logs = method.on_step_end(0, 10)
    assert logs == {"ema_momentum": pytest.approx(0.9)}
    assert torch.allclose(target, 0.9 * before + 0.1 * w.detach())


def test_moco_queue_takes_every_key_and_wraps():
    method = build_method(_tiny("moco"))       # queue of 6
    keys = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    method._enqueue(keys)
    assert int(method.queue_ptr) == 4 and torch.allclose(method.queue[:4], keys)
    method._enqueue(keys.flip(0))
    assert int(method.queue_ptr) == 2
    assert torch.allclose(method.queue[4:], keys.flip(0)[:2]) and torch.allclose(method.queue[:2], keys.flip(0)[2:])
    # forward enqueues the second view's momentum keys
    ptr = int(method.queue_ptr)
    method(*_views())
    assert int(method.queue_ptr) == (ptr + 4) % 6


def test_unlabelled_scans_are_classes_of_their_own():
    assert own_class_labels(torch.tensor([2, -1, 0, -1])).tolist() == [2, 4, 0, 6]
    assert own_class_labels(torch.tensor([-1, -1])).tolist() == [0, 1]


def test_learned_temperature():
    t = Temperature(0.2, learn=True)
    assert float(t().detach()) == pytest.approx(0.2) and float(t.logs()["temperature"]) == pytest.approx(0.2)
    with torch.no_grad():
        t.log_t.fill_(math.log(1e-4))
    assert float(t().detach()) == pytest.approx(0.01)                  # bounded below
    assert Temperature(0.2)() == 0.2 and not list(Temperature(0.2).parameters())
    method = build_method(_tiny("simclr", "train.learn_temperature=true"))
    opt = build_optimizer(method, method_cfg := _tiny("simclr", "train.learn_temperature=true").train, 0.1)
    groups = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert groups[id(method.temperature.log_t)] == 0.0 and method_cfg.weight_decay > 0   # never decayed


def test_warmup_cosine_and_lr_scaling():
    assert [round(warmup_cosine(s, 10, 2), 4) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    t = load_config(None, ["train.lr=0.3", "train.lr_scaling=linear", "train.lr_reference_batch=256"]).train
    assert scaled_lr(t, 512) == pytest.approx(0.6)
    t.lr_scaling = "sqrt"
    assert scaled_lr(t, 1024) == pytest.approx(0.6)
    t.lr_scaling = "none"
    assert scaled_lr(t, 1024) == pytest.approx(0.3)


def test_lars_step_by_hand_and_excluded_parameters():
    """One LARS step: g' = g + wd w; trust = eta ||w|| / ||g'||; w <- w - lr trust g' (zero momentum
    buffer). Biases and norm weights get plain SGD (no decay, no trust ratio)."""
    cfg = load_config(None, ["train.optimizer=lars", "train.weight_decay=0.1", "train.lars_eta=0.02",
                             "train.momentum=0.9"]).train
    lin, norm = torch.nn.Linear(3, 2), torch.nn.LayerNorm(2)
    model = torch.nn.Sequential(lin, norm)
    opt = build_optimizer(model, cfg, lr=0.5)
    assert isinstance(opt, LARS)
    w0, b0, n0 = lin.weight.detach().clone(), lin.bias.detach().clone(), norm.weight.detach().clone()
    model(torch.randn(5, 3)).pow(2).sum().backward()
    gw, gb, gn = lin.weight.grad.clone(), lin.bias.grad.clone(), norm.weight.grad.clone()
    opt.step()
    g = gw + 0.1 * w0
    trust = 0.02 * w0.norm() / g.norm()
    assert torch.allclose(lin.weight, w0 - 0.5 * trust * g, atol=1e-6)
    assert torch.allclose(lin.bias, b0 - 0.5 * gb, atol=1e-6)
    assert torch.allclose(norm.weight, n0 - 0.5 * gn, atol=1e-6)


def test_adamw_and_sgd_decay_every_weight():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    for name in ("adamw", "sgd"):
        opt = build_optimizer(model, load_config(None, [f"train.optimizer={name}"]).train, 0.1)
        assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 1e-4


def test_alignment_and_uniformity_by_hand():
    """Wang & Isola eq. (4)-(5) on unit vectors: alignment = mean ||a - b||^2; uniformity =
    log mean over pairs of exp(-2 ||x - y||^2)."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert float(alignment(a, b)) == pytest.approx((0 + 2) / 2)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    d2 = [2.0, 4.0, 2.0]                                      # pairs (0,1), (0,2), (1,2)
    assert float(uniformity(z)) == pytest.approx(math.log(sum(math.exp(-2 * d) for d in d2) / 3), abs=1e-6)


def test_collapse_is_flagged():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(32, 64, generator=g)
    healthy = health_metrics(spread, spread + 0.1 * torch.randn(32, 64, generator=g), threshold=0.1)
    assert 0.5 < healthy["health/std_ratio"] < 1.5 and healthy["health/collapsed"] == 0.0
    point = torch.ones(32, 64) + 1e-4 * torch.randn(32, 64, generator=g)
    collapsed = health_metrics(point, point, threshold=0.1)
    assert collapsed["health/std_ratio"] < 0.01 and collapsed["health/collapsed"] == 1.0
    assert float(collapsed["health/alignment"]) == pytest.approx(0.0, abs=1e-6)


def test_knn_probe_on_separable_classes_and_subject_exclusion():
    feats = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 0.05], [0.05, 1]], dtype=np.float32)
    labels = np.array(["a", "a", "b", "b", "a", "b"])
    subjects = np.array(["s1", "s2", "s3", "s4", "s5", "s6"])
    assert knn_balanced_accuracy(feats, labels, subjects, k=2) == 1.0
    # the only same-class neighbour shares the subject: it may not vote, the other class wins
    feats2 = np.array([[1, 0], [1, 0.01], [0.6, 0.8], [0.6, 0.79]], dtype=np.float32)
    assert knn_balanced_accuracy(feats2, np.array(["a", "a", "b", "b"]), np.array(["s1", "s1", "s2", "s3"]), k=1) == 0.5


def test_sync_batchnorm_without_a_process_group_is_batchnorm():
    from medcl.dist import SyncBatchNorm, convert_sync_batchnorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.BatchNorm3d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 8, 3), torch.nn.BatchNorm1d(3))
    frozen = net[4].weight
    frozen.requires_grad_(False)
    x = torch.randn(5, 1, 4, 4, 4)
    ref = net(x)
    synced = convert_sync_batchnorm(net, torch.device("cpu"))
    assert isinstance(synced[1], SyncBatchNorm) and isinstance(synced[4], SyncBatchNorm)
    assert synced[4].weight is frozen and not synced[4].weight.requires_grad     # same Parameter kept
    assert torch.allclose(synced(x), ref, atol=1e-6)
    plain = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.BatchNorm3d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8, 3), torch.nn.BatchNorm1d(3))
    plain.load_state_dict(synced.state_dict())                                    # same state-dict keys
