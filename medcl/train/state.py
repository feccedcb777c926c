"""The training state, and the checkpoint it saves and restores itself from.

:class:`TrainState` holds everything a run changes as it trains: the method (encoder, heads,
momentum networks, queue, temperature), the optimiser, the schedule, the gradient scaler, the
position (epoch, batches of that epoch done, steps done), the loss of every step, and the MLflow
run it logs to. :meth:`TrainState.state_dict` is the checkpoint and
:meth:`TrainState.load_state_dict` restores one; both are here and nowhere else, so what is
saved is what is restored. A checkpoint is a dict of plain containers and tensors only
(:mod:`medcl.train.checkpoint` writes and reads the file):

| key | what |
|---|---|
| ``format`` | ``medcl-checkpoint/1`` |
| ``method`` | the method's state dict: encoder, heads, momentum encoder, MoCo's queue, learned temperature |
| ``optimizer``, ``scheduler``, ``scaler`` | their state dicts (the gradient scaler's is empty unless fp16) |
| ``rng`` | torch CPU (and every visible GPU's) generators, numpy's global and Python's ``random`` states |
| ``position`` | ``epoch``, ``step_in_epoch`` (batches of that epoch already done), ``step``, ``steps_per_epoch``, ``world_size`` |
| ``mlflow_run_id`` | the MLflow run to continue on ``--resume`` ("" when none) |
| ``config`` | the run's config (``config_to_dict``) |
| ``losses`` | the loss of every step so far |

Bit for bit: the views depend only on (seed, epoch, scan) and the order of an epoch only on
(seed, epoch) (:mod:`medcl.train.pairs`), and the only global random state the loop touches is
``rng``, captured when the checkpoint is written and restored last, after everything the run
builds before its first step. A resumed run therefore continues exactly where the interrupted
one was. A checkpoint resumes on any number of GPUs, or on a CPU (tensors are read onto the
CPU, and :func:`set_cuda_rng_state` restores the GPU generators both machines have).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medcl.ssl.base import Method
from medcl.train.checkpoint import CheckpointError, config_mismatch, read_weights_only, save_atomic

FORMAT = "medcl-checkpoint/1"
REQUIRED = ("format", "method", "optimizer", "scheduler", "scaler", "rng", "position", "mlflow_run_id", "config",
            "losses")


def rng_state() -> dict:
    """Every random generator a run touches, as tensors and plain numbers."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_cuda_rng_state(states: list) -> None:
    """The CUDA generators of the GPUs that both the saving machine and this one have, by
    index: a checkpoint written on 8 GPUs resumes on 1 (or on a CPU, which has none to
    restore), and one written on 1 GPU or on a CPU resumes on 8 (the GPUs it lacks keep the
    generators the run seeded). ``torch.cuda.set_rng_state_all`` would raise IndexError."""
    if not states or not torch.cuda.is_available():
        return
    for index, s in enumerate(states[:torch.cuda.device_count()]):
        torch.cuda.set_rng_state(s, index)


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    set_cuda_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``; refuses pickled objects, half-written files, and files that
    are not medcl checkpoints, with one-line errors naming the file."""
    ckpt = read_weights_only(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a medcl checkpoint (expected format '{FORMAT}')")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def read_run_id(path: Path) -> str:
    """The MLflow run id stored in the checkpoint at ``path`` ("" when it has none)."""
    return str(load_checkpoint(path)["mlflow_run_id"])


@dataclass
class TrainState:
    """What a run changes as it trains (see the module docstring). ``step_in_epoch`` counts the
    batches of ``epoch`` done; ``step`` the optimiser steps of the whole run."""

    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    world_size: int
    config: dict                       # config_to_dict of the run's config
    run_id: str | None = None          # the MLflow run
    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)

    def advance(self, loss: float | None = None) -> None:
        """One optimiser step done; its (all-rank mean) loss appended when given (the loop
        appends the losses when it fetches them from the device, before any checkpoint)."""
        if loss is not None:
            self.losses.append(loss)
        self.step += 1
        self.step_in_epoch += 1

    def position(self) -> dict:
        """Where a run resumed from this state starts: a finished epoch is the next one's start."""
        e, s = self.epoch, self.step_in_epoch
        if s == self.steps_per_epoch:
            e, s = e + 1, 0
        return {"epoch": e, "step_in_epoch": s, "step": self.step, "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.world_size}

    def state_dict(self) -> dict:
        """The checkpoint: this state, and the random generators' as they are now."""
        return {"format": FORMAT, "method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
                "position": self.position(), "mlflow_run_id": self.run_id or "", "config": self.config,
                "losses": list(self.losses)}

    def load_state_dict(self, ckpt: dict) -> None:
        """Restore a checkpoint: weights, optimiser, schedule, scaler, position, losses, the run
        id (unless this run already has one), and last the random generators, so that nothing
        built before the first step can draw from them after."""
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        pos = ckpt["position"]
        self.epoch, self.step_in_epoch, self.step = pos["epoch"], pos["step_in_epoch"], pos["step"]
        self.losses[:] = ckpt["losses"]          # in place: a result may already hold the list
        self.run_id = self.run_id or ckpt["mlflow_run_id"] or None
        set_rng_state(ckpt["rng"])

    def save(self, path: Path, midway=None) -> None:
        """Write the checkpoint atomically (:func:`medcl.train.checkpoint.save_atomic`)."""
        save_atomic(self.state_dict(), path, midway=midway)

    def resume(self, path: Path) -> None:
        """Continue from the checkpoint at ``path``, which must have been written under a config
        that trains the same way (:func:`medcl.train.checkpoint.config_mismatch`)."""
        ckpt = load_checkpoint(path)
        diff = config_mismatch(ckpt["config"], self.config)
        if diff:
            raise CheckpointError(f"{path}: the config differs from the checkpoint's at {diff}; "
                                  f"resume with the config it was written with")
        self.load_state_dict(ckpt)
