"""The pretraining loop: view pairs -> method -> optimiser step, on one process or several
(torchrun, DDP), with atomic checkpoints that resume bit for bit.

The parts: the batches come from a :class:`~medcl.train.pairs.PairSource`
(:func:`~medcl.train.data.make_pair_source`), a step is :func:`~medcl.train.step.train_step`,
everything a step changes is a :class:`~medcl.train.state.TrainState` (which is also the
checkpoint), and logging, warnings, the kNN probe, checkpoints and the crash-test hook are
callbacks (:mod:`medcl.train.callbacks`). Determinism: see :mod:`medcl.train.state`.

Batches: ``train.batch_size`` is the *global* number of pairs per step; under DDP global batch
``b`` of an epoch is split into equal consecutive shards, one per rank, so the gathered batch
is the same batch, in the same order, as on one process.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from medcl import dist
from medcl.config import Config, ConfigError, TrainConfig, config_to_dict
from medcl.data.cohort import Cohort
from medcl.ssl import build_method
from medcl.train.callbacks import (Callback, Callbacks, Checkpointer, CollapseWarning, DebugPause, KnnEvaluation,
                                   ProgressLog, StepTiming)
from medcl.train.checkpoint import save_atomic
from medcl.train.data import make_pair_source
from medcl.train.health import KnnProbe
from medcl.train.optim import build_optimizer, build_scheduler, scaled_lr
from medcl.train.pairs import Batch, PairSource, epoch_batches, rank_shards
from medcl.train.speed import SpeedSetup
from medcl.train.state import TrainState
from medcl.train.step import Precision, StepMetrics, train_step


@dataclass
class PretrainResult:
    encoder_path: Path
    checkpoint_path: Path
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


@dataclass(frozen=True)
class Plan:
    """How many pairs per step (over all ranks), steps per epoch and steps in all."""
    global_batch: int
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, t: TrainConfig, n_scans: int, world: int) -> "Plan":
        global_batch = min(t.batch_size, n_scans)
        if global_batch % world:
            raise ConfigError(f"config key 'train.batch_size' ({global_batch} pairs per step over all processes) "
                              f"must be divisible by the number of processes ({world})")
        steps_per_epoch = n_scans // global_batch
        return cls(global_batch, steps_per_epoch, steps_per_epoch * t.epochs)


def pretrain(cfg: Config, cohort: Cohort, out_dir: Path, progress: bool = True, resume: bool = False,
             run_id: str | None = None, on_timing: Callable[[StepTiming], None] | None = None) -> PretrainResult:
    """Pretrain ``cfg.train.method`` on ``cohort``; metrics go to the active MLflow run, if any.

    Under torchrun every rank calls this; rank 0 alone logs and writes files. ``resume``
    continues from ``out_dir/checkpoints/last.pt``; ``run_id`` (the active MLflow run) is stored
    in every checkpoint so that ``medcl pretrain --resume`` can continue the same run. Rank 0
    prints the measured pace after 20 steps (with ``progress``) and passes it to ``on_timing``.
    """
    info = dist.setup(cfg.train.device, cfg.train.ddp_backend)
    try:
        return _pretrain(cfg, cohort, Path(out_dir), progress, resume, run_id, info, on_timing)
    finally:
        dist.teardown(info)


@dataclass
class Trainer:
    """What a step runs: the module it calls (the method, or its DDP wrapper; compiled when
    ``train.compile``), the state it changes, the precision and the speed settings. The loop and
    bench/train_step.py both build it with :func:`build_trainer` and step it with
    :func:`~medcl.train.step.train_step`."""
    model: nn.Module
    state: TrainState
    precision: Precision
    speed: SpeedSetup


def build_trainer(cfg: Config, plan: Plan, info: dist.DistInfo, run_id: str | None = None) -> Trainer:
    """The method initialised from ``train.seed`` on ``info.device`` with the speed settings of
    :class:`~medcl.train.speed.SpeedSetup` (synchronised batch norm and DDP under torchrun), and
    a fresh state: the optimiser at the batch-scaled learning rate, warmup + cosine."""
    t = cfg.train
    torch.manual_seed(t.seed)
    precision = Precision.of(t.precision, info.device)
    speed = SpeedSetup.of(info.device, t.compile)
    method = speed.prepare(build_method(cfg).to(info.device, precision.dtype))
    if t.sync_bn and info.world > 1:
        method = dist.convert_sync_batchnorm(method, info.device)
    model = _distributed(method, info)
    opt = build_optimizer(method, t, scaled_lr(t, plan.global_batch), fused=speed.fused)
    sched = build_scheduler(opt, plan.total_steps, int(round(t.warmup_epochs * plan.steps_per_epoch)))
    scaler = torch.amp.GradScaler(info.device.type, enabled=precision.scale)
    state = TrainState(method, opt, sched, scaler, plan.steps_per_epoch, info.world, config_to_dict(cfg), run_id)
    return Trainer(speed.wrap(model), state, precision, speed)


def _pretrain(cfg: Config, cohort: Cohort, out_dir: Path, progress: bool, resume: bool, run_id: str | None,
              info: dist.DistInfo, on_timing: Callable[[StepTiming], None] | None = None) -> PretrainResult:
    """Build the trainer and the pair source, restore the state on ``resume``, then the
    callbacks, in the order that keeps a resumed run bit-identical (see :mod:`medcl.train.state`)."""
    t = cfg.train
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    plan = Plan.of(t, len(cohort), info.world)
    trainer = build_trainer(cfg, plan, info, run_id)
    source = make_pair_source(cohort, cfg, info.device, trainer.speed.memory_format)
    try:
        if trainer.state.method.needs_labels and max(cohort.label_ids()) < 0 and info.main:
            warnings.warn(f"train.method={t.method}: the cohort has no labels, so every scan is a class of its "
                          f"own (instance discrimination)", stacklevel=2)
        ckpt_path = out_dir / "checkpoints" / "last.pt"
        if resume:
            trainer.state.resume(ckpt_path)
        callbacks = _callbacks(cfg, cohort, out_dir, ckpt_path, plan, progress, info, on_timing)
        return _train(trainer, source, callbacks, cfg, plan, info, out_dir, len(cohort))
    finally:
        source.close()


def _distributed(method: nn.Module, info: dist.DistInfo) -> nn.Module:
    """The module a step runs: ``method`` itself, or its DDP wrapper under torchrun."""
    if info.world == 1:
        return method
    return nn.parallel.DistributedDataParallel(
        method, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def _callbacks(cfg: Config, cohort: Cohort, out_dir: Path, ckpt_path: Path, plan: Plan, progress: bool,
               info: dist.DistInfo, on_timing: Callable[[StepTiming], None] | None = None) -> Callback:
    """Rank 0's callbacks (the other ranks only train), in the order they run at each hook."""
    t = cfg.train
    if not info.main:
        return Callbacks([])
    pause = DebugPause(out_dir)
    callbacks = [ProgressLog(plan.total_steps, f"pretrain {t.method}", progress, on_timing),
                 CollapseWarning(t.method, t.collapse_threshold), pause]
    if t.knn_every_epochs:
        probe = KnnProbe(cohort, cfg.augment.view_size, t.knn_k)
        callbacks.append(KnnEvaluation(probe, t.knn_every_epochs, info.device))
    callbacks.append(Checkpointer(ckpt_path, t.checkpoint_every_steps, t.checkpoint_every_epoch, t.epochs - 1,
                                  pause.midway))
    return Callbacks(callbacks)


def _rank_batches(source: PairSource, n_scans: int, plan: Plan, seed: int, epoch: int, start: int,
                  info: dist.DistInfo, dtype: torch.dtype,
                  memory_format: torch.memory_format = torch.contiguous_format) -> Iterator[Batch]:
    """This rank's shard of each global batch of ``epoch`` from batch ``start`` on, views as
    ``dtype``, the pair's in ``memory_format`` (a no-op when the source made them so; the local
    views of multi-crop, ``(B, n_local, C, D, H, W)``, stay as they are: the method flattens them)."""
    shards = rank_shards(epoch_batches(n_scans, plan.global_batch, seed, epoch), info.rank, info.world)
    for v1, v2, y, *local in source.batches(shards[start:], epoch):
        yield (v1.to(dtype, memory_format=memory_format), v2.to(dtype, memory_format=memory_format), y,
               *(x.to(dtype) for x in local))


def _fetch_due(state: TrainState, t: TrainConfig) -> bool:
    """Fetch the step scalars now (``state`` has just advanced): every ``train.log_every_steps``
    steps, at the end of an epoch, and before a mid-epoch checkpoint (which stores the losses)."""
    return (state.step % t.log_every_steps == 0 or state.step_in_epoch == state.steps_per_epoch
            or (t.checkpoint_every_steps > 0 and state.step % t.checkpoint_every_steps == 0))


def _epoch(trainer: Trainer, batches: Iterator[Batch], callbacks: Callback, metrics: StepMetrics, t: TrainConfig,
           total_steps: int, device: torch.device) -> None:
    """The steps of one epoch. Nothing here waits for the device but the fetch of the scalars
    (:class:`~medcl.train.step.StepMetrics`) when it is due; the ``health/*`` metrics are
    computed on the steps that end a ``train.log_every_steps`` window."""
    state = trainer.state
    for batch in batches:
        health = (state.step + 1) % t.log_every_steps == 0
        logs = train_step(trainer.model, state, batch, trainer.precision, total_steps, t.collapse_threshold, device,
                          health)
        state.advance()
        metrics.add(state.step - 1, logs)
        if _fetch_due(state, t):
            for step, values in metrics.fetch():
                state.losses.append(values["loss"])
                callbacks.on_log(state, step, values)
        callbacks.on_step_end(state)


def _train(trainer: Trainer, source: PairSource, callbacks: Callback, cfg: Config, plan: Plan,
           info: dist.DistInfo, out_dir: Path, n_scans: int) -> PretrainResult:
    """The epochs from the state's position on; then the encoder, written by rank 0."""
    t, state, precision = cfg.train, trainer.state, trainer.precision
    result = PretrainResult(out_dir / "encoder.pt", out_dir / "checkpoints" / "last.pt", state.losses)
    start = time.perf_counter()
    metrics = StepMetrics()
    callbacks.on_train_start(state)
    try:
        first_epoch = state.epoch
        for epoch in range(first_epoch, t.epochs):
            state.epoch = epoch
            state.method.train()
            if epoch != first_epoch:
                state.step_in_epoch = 0
            batches = _rank_batches(source, n_scans, plan, t.seed, epoch, state.step_in_epoch, info, precision.dtype,
                                    trainer.speed.memory_format)
            _epoch(trainer, batches, callbacks, metrics, t, plan.total_steps, info.device)
            callbacks.on_epoch_end(state)
    finally:
        callbacks.on_train_end(state)
    if info.main:
        encoder = state.method.encoder.state_dict()
        save_atomic({k: v.float() if v.is_floating_point() else v for k, v in encoder.items()}, result.encoder_path)
    dist.barrier()
    result.seconds = time.perf_counter() - start
    result.steps = state.step
    return result
