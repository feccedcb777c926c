"""TrainState is the checkpoint: its state_dict, written and read back, restores the method,
optimiser, schedule, position, losses, run id and random generators exactly, and training
continued from it is bit-identical to training that never stopped.

MoCo is the method (momentum encoder, queue, learned temperature: the most state), trained
with ``train_step`` on batches drawn from the global torch generator, so a wrongly restored
generator shows up as different batches. The whole loop's kill-and-resume, with real processes
and SIGKILL, is tests/test_resume.py.
"""

from __future__ import annotations

import pytest
import torch

from medcl.config import config_to_dict, load_config
from medcl.ssl import build_method
from medcl.train.checkpoint import CheckpointError, save_atomic
from medcl.train.optim import build_optimizer, build_scheduler
from medcl.train.state import FORMAT, TrainState, load_checkpoint
from medcl.train.step import Precision, train_step

ARGS = ["train.method=moco", "augment.view_size=16", "model.widen_factor=0.125", "model.proj_hidden=32",
        "model.proj_dim=16", "train.queue_size=4", "train.learn_temperature=true", "train.batch_size=2"]
CPU = torch.device("cpu")
STEPS_PER_EPOCH, TOTAL = 3, 6


def _state(seed: int, args=ARGS) -> TrainState:
    cfg = load_config(None, args)
    torch.manual_seed(seed)
    method = build_method(cfg)
    opt = build_optimizer(method, cfg.train, cfg.train.lr)
    sched = build_scheduler(opt, TOTAL, 2)
    return TrainState(method, opt, sched, torch.amp.GradScaler("cpu", enabled=False), STEPS_PER_EPOCH, 1,
                      config_to_dict(cfg))


def _train(state: TrainState, steps: int, local: int = 0) -> None:
    """``steps`` optimiser steps on random batches from the global generator, as the loop
    keeps the position; with ``local`` local views of size 8 (multi-crop)."""
    for _ in range(steps):
        if state.step_in_epoch == STEPS_PER_EPOCH:
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
        batch = (torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16), torch.tensor([0, -1]))
        batch += (torch.randn(2, local, 1, 8, 8, 8),) if local else ()
        logs = train_step(state.method, state, batch, Precision.of("fp32", CPU), TOTAL, 0.1, CPU)
        state.advance(float(logs["loss"]))


def _equal(a, b) -> bool:
    """Exact equality of nested containers of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_state_dict_round_trip_restores_everything(tmp_path):
    ran = _state(seed=0)
    ran.run_id = "run-1"
    _train(ran, 4)
    path = tmp_path / "last.pt"
    save_atomic(ran.state_dict(), path)
    after_save = torch.rand(3)                      # what the generator gives next, at the save
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == FORMAT and ckpt["losses"] == ran.losses and ckpt["mlflow_run_id"] == "run-1"

    fresh = _state(seed=1)                          # other initial weights
    fresh.load_state_dict(ckpt)
    assert torch.equal(torch.rand(3), after_save)   # generators restored to the moment of the save
    assert _equal(fresh.method.state_dict(), ran.method.state_dict())
    assert any(k.startswith("momentum_encoder.") for k in ckpt["method"]) and "queue" in ckpt["method"]
    assert _equal(fresh.optimizer.state_dict(), ran.optimizer.state_dict())
    assert _equal(fresh.scheduler.state_dict(), ran.scheduler.state_dict())
    assert fresh.scheduler.get_last_lr() == ran.scheduler.get_last_lr()
    assert (fresh.epoch, fresh.step_in_epoch, fresh.step) == (1, 1, 4) and fresh.losses == ran.losses
    assert fresh.run_id == "run-1"
    assert _equal({k: v for k, v in fresh.state_dict().items() if k != "rng"},
                  {k: v for k, v in ckpt.items() if k != "rng"})


def test_training_continued_from_a_checkpoint_is_bit_identical(tmp_path):
    straight = _state(seed=0)
    _train(straight, 3)
    save_atomic(straight.state_dict(), tmp_path / "last.pt")
    _train(straight, 3)

    resumed = _state(seed=5)
    torch.manual_seed(123)                          # whatever the generator did before the restore
    resumed.load_state_dict(load_checkpoint(tmp_path / "last.pt"))
    assert (resumed.epoch, resumed.step_in_epoch) == (1, 0)   # a finished epoch resumes at the next
    _train(resumed, 3)
    assert resumed.losses == straight.losses and resumed.step == straight.step == 6
    assert _equal(resumed.method.state_dict(), straight.method.state_dict())
    assert _equal(resumed.optimizer.state_dict(), straight.optimizer.state_dict())


SWAV = ["train.method=swav", "augment.view_size=16", "model.widen_factor=0.125", "model.proj_hidden=32",
        "model.proj_dim=16", "train.batch_size=2", "augment.local_views=2", "augment.local_size=8",
        "train.swav_prototypes=5", "train.swav_queue_size=4", "train.swav_freeze_prototypes=4"]


def test_swav_with_multicrop_continued_from_a_checkpoint_is_bit_identical(tmp_path):
    """SwAV's own state: the queue (full after 2 steps), the step count that ends the freezing
    of the prototypes (after 4 steps, across the checkpoint at 3), the prototypes."""
    straight = _state(seed=0, args=SWAV)
    _train(straight, 3, local=2)
    save_atomic(straight.state_dict(), tmp_path / "last.pt")
    ckpt = load_checkpoint(tmp_path / "last.pt")["method"]
    assert int(ckpt["queue_filled"]) == 4 and int(ckpt["steps_done"]) == 3
    _train(straight, 3, local=2)

    resumed = _state(seed=5, args=SWAV)
    resumed.load_state_dict(load_checkpoint(tmp_path / "last.pt"))
    _train(resumed, 3, local=2)
    assert resumed.losses == straight.losses and len(set(resumed.losses)) == 6
    assert _equal(resumed.method.state_dict(), straight.method.state_dict())
    assert _equal(resumed.optimizer.state_dict(), straight.optimizer.state_dict())


def test_position_and_resume_under_another_config(tmp_path):
    state = _state(seed=0)
    state.epoch, state.step_in_epoch, state.step = 2, STEPS_PER_EPOCH, 9
    assert state.position() == {"epoch": 3, "step_in_epoch": 0, "step": 9, "steps_per_epoch": 3, "world_size": 1}
    state.step_in_epoch = 1
    assert state.position()["epoch"] == 2 and state.position()["step_in_epoch"] == 1
    save_atomic(state.state_dict(), tmp_path / "last.pt")
    other = _state(seed=0, args=ARGS + ["train.lr=0.5"])
    with pytest.raises(CheckpointError, match="train.lr"):
        other.resume(tmp_path / "last.pt")
    same = _state(seed=1, args=ARGS + ["train.num_workers=3"])      # a change that keeps the trajectory
    same.resume(tmp_path / "last.pt")
    assert same.step == 9


def _fake_gpus(monkeypatch, count: int, restored: list) -> None:
    """This process sees ``count`` GPUs (0: none) whose generators' states are made up: GPU i's
    state is 16 bytes of value i; restoring a GPU's generator is recorded in ``restored``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                        lambda: [torch.full((16,), i, dtype=torch.uint8) for i in range(count)])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((int(device), s.clone())))


@pytest.mark.parametrize("saved_gpus,resumed_gpus", [(8, 1), (8, 0), (2, 4), (0, 2), (4, 4)])
def test_a_checkpoint_resumes_on_any_number_of_gpus_or_on_a_cpu(tmp_path, monkeypatch, saved_gpus, resumed_gpus):
    """Written where ``saved_gpus`` GPUs were visible, resumed where ``resumed_gpus`` are: the
    generators both have are restored by index, the rest of the state as always."""
    ran = _state(seed=0)
    _train(ran, 2)
    restored: list = []
    _fake_gpus(monkeypatch, saved_gpus, restored)
    path = tmp_path / "last.pt"
    save_atomic(ran.state_dict(), path)
    after_save = torch.rand(3)
    _fake_gpus(monkeypatch, resumed_gpus, restored)
    fresh = _state(seed=1)
    fresh.load_state_dict(load_checkpoint(path))
    assert torch.equal(torch.rand(3), after_save)
    assert [d for d, _ in restored] == list(range(min(saved_gpus, resumed_gpus)))
    assert all(torch.equal(s, torch.full((16,), d, dtype=torch.uint8)) for d, s in restored)
    assert _equal(fresh.method.state_dict(), ran.method.state_dict()) and fresh.step == 2
    _train(fresh, 1)
    assert fresh.step == 3
