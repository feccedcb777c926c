"""The pretraining loop: view pairs -> method -> optimiser step, on one process or several
(torchrun, DDP), with atomic checkpoints that resume bit for bit.

Determinism: the views of scan ``i`` in epoch ``e`` depend only on ``(seed, e, i)``, the order
of the scans in epoch ``e`` only on ``(seed, e)`` (:func:`epoch_batches`), and the only global
random state the loop touches is saved in every checkpoint. A run resumed from a checkpoint
therefore continues exactly where the interrupted one was (bit-identical weights on CPU).

Batches: ``train.batch_size`` is the *global* number of pairs per step; under DDP global batch
``b`` of an epoch is split into equal consecutive shards, one per rank, so the gathered batch
is the same batch, in the same order, as on one process.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medcl.augment import make_pair
from medcl.config import AugmentConfig, Config, ConfigError, TrainConfig, config_to_dict
from medcl.data.cohort import Cohort
from medcl.ssl import build_method
from medcl import dist
from medcl.train.checkpoint import (PAUSE_ENV, CheckpointError, config_mismatch, debug_pause, load_checkpoint,
                                    rng_state, save_atomic, set_rng_state)
from medcl.dist import pick_device  # noqa: F401  (re-exported: older imports)
from medcl.train.health import KnnProbe, health_metrics
from medcl.train.optim import build_optimizer, build_scheduler, scaled_lr, warmup_cosine  # noqa: F401


class PairDataset(Dataset):
    """Two augmented views per scan and its label id; the views of (seed, epoch, index) are
    reproducible.

    Labels: the cohort's non-empty labels, sorted, are ids 0, 1, ...; an unlabelled scan is -1
    (the methods that use labels give it a class of its own, see :mod:`medcl.ssl`). The
    cohort's arrays are read once into memory as float16 (workers share them through fork's
    copy-on-write instead of holding copies).
    """

    def __init__(self, cohort: Cohort, cfg: AugmentConfig, seed: int = 0):
        if len(cohort) == 0:
            raise ValueError(f"{cohort.root}: no scans to pretrain on")
        self.images = [cohort.image(i).astype(np.float16) for i in range(len(cohort))]
        self.masks = [cohort.mask(i) for i in range(len(cohort))]
        self.class_names = sorted({r["label"] for r in cohort.rows if r["label"]})
        ids = {name: k for k, name in enumerate(self.class_names)}
        self.labels = [ids[r["label"]] if r["label"] else -1 for r in cohort.rows]
        self.cfg, self.seed, self.epoch = cfg, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        v1, v2, _ = make_pair(self.images[i], self.masks[i], rng, self.cfg)
        return v1, v2, self.labels[i]


def epoch_batches(n: int, global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of ``epoch``: a permutation of ``range(n)`` that depends only on
    (seed, epoch), cut into ``n // global_batch`` batches (the remainder is dropped)."""
    order = np.random.default_rng([seed, 0x5EED, epoch]).permutation(n).tolist()
    return [order[k * global_batch:(k + 1) * global_batch] for k in range(n // global_batch)]


def make_batches(dataset: PairDataset, t: TrainConfig, global_batch: int, epoch: int, start: int,
                 rank: int, world: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The data path of the loop, in one place so it can be swapped: this rank's shard of each
    global batch of ``epoch`` from batch ``start`` on, as ``(view1, view2, labels)`` on ``device``
    (views as ``dtype``)."""
    per_rank = global_batch // world
    shards = [b[rank * per_rank:(rank + 1) * per_rank] for b in epoch_batches(len(dataset), global_batch, t.seed, epoch)]
    dataset.set_epoch(epoch)
    if dataset.cfg.backend == "batched":  # augment.backend: views made on `device` a batch at a time
        from medcl.train.data import batched_batches

        for v1, v2, y in batched_batches(dataset, shards[start:], epoch, t.num_workers, device,
                                           t.worker_kind):
            yield v1.to(dtype), v2.to(dtype), y
        return
    loader = DataLoader(dataset, batch_sampler=shards[start:], num_workers=t.num_workers,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))  # not the global RNG
    for v1, v2, y in loader:
        yield v1.to(device, dtype, non_blocking=True), v2.to(device, dtype, non_blocking=True), y.to(device)


@dataclass
class PretrainResult:
    encoder_path: Path
    checkpoint_path: Path
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def _amp(precision: str, device: torch.device) -> tuple[bool, torch.dtype, bool]:
    """(autocast on, its dtype, gradient scaler on) for ``train.precision``; fp64 (weights and
    views in float64, no autocast) is for numerical checks such as DDP equivalence."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("config key 'train.precision' is fp16, which needs CUDA; use bf16 or fp32 on CPU")
    return precision in ("bf16", "fp16"), torch.float16 if precision == "fp16" else torch.bfloat16, precision == "fp16"


def pretrain(cfg: Config, cohort: Cohort, out_dir: Path, progress: bool = True, resume: bool = False,
             run_id: str | None = None) -> PretrainResult:
    """Pretrain ``cfg.train.method`` on ``cohort``; metrics go to the active MLflow run, if any.

    Under torchrun every rank calls this; rank 0 alone logs and writes files. ``resume``
    continues from ``out_dir/checkpoints/last.pt``; ``run_id`` (the active MLflow run) is stored
    in every checkpoint so that ``medcl pretrain --resume`` can continue the same run.
    """
    info = dist.setup(cfg.train.device, cfg.train.ddp_backend)
    try:
        return _pretrain(cfg, cohort, Path(out_dir), progress, resume, run_id, info)
    finally:
        dist.teardown(info)


def _pretrain(cfg: Config, cohort: Cohort, out_dir: Path, progress: bool, resume: bool, run_id: str | None,
              info: dist.DistInfo) -> PretrainResult:
    from tqdm import tqdm

    from medcl.tracking import log_metrics

    t = cfg.train
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    device = info.device
    torch.manual_seed(t.seed)
    dtype = torch.float64 if t.precision == "fp64" else torch.float32
    method = build_method(cfg).to(device, dtype)
    dataset = PairDataset(cohort, cfg.augment, t.seed)
    if method.needs_labels and max(dataset.labels) < 0 and info.main:
        warnings.warn(f"train.method={t.method}: the cohort has no labels, so every scan is a class of its own "
                      f"(instance discrimination)", stacklevel=2)
    global_batch = min(t.batch_size, len(dataset))
    if global_batch % info.world:
        raise ConfigError(f"config key 'train.batch_size' ({global_batch} pairs per step over all processes) must be "
                         f"divisible by the number of processes ({info.world})")
    steps_per_epoch = len(dataset) // global_batch
    total = steps_per_epoch * t.epochs
    if t.sync_bn and info.world > 1:
        method = dist.convert_sync_batchnorm(method, device)

    ckpt_path = out_dir / "checkpoints" / "last.pt"
    ckpt = None
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        diff = config_mismatch(ckpt["config"], config_to_dict(cfg))
        if diff:
            raise CheckpointError(f"{ckpt_path}: the config differs from the checkpoint's at {diff}; "
                                  f"resume with the config it was written with")
        method.load_state_dict(ckpt["method"])
        run_id = run_id or ckpt["mlflow_run_id"] or None

    model = method
    if info.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None)
    opt = build_optimizer(method, t, scaled_lr(t, global_batch))
    sched = build_scheduler(opt, total, int(round(t.warmup_epochs * steps_per_epoch)))
    amp_on, amp_dtype, scale_on = _amp(t.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=scale_on)
    epoch, in_epoch, step, losses = 0, 0, 0, []
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        pos = ckpt["position"]
        epoch, in_epoch, step, losses = pos["epoch"], pos["step_in_epoch"], pos["step"], list(ckpt["losses"])
        set_rng_state(ckpt["rng"])      # last: everything built above drew from the generators

    pausing = bool(os.environ.get(PAUSE_ENV))
    n_saved = 0

    def save_checkpoint() -> None:
        nonlocal n_saved
        if not info.main:
            return
        n_saved += 1
        e, s = (epoch + 1, 0) if in_epoch == steps_per_epoch else (epoch, in_epoch)
        save_atomic({"format": "medcl-checkpoint/1", "method": method.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                     "position": {"epoch": e, "step_in_epoch": s, "step": step, "steps_per_epoch": steps_per_epoch,
                                  "world_size": info.world},
                     "mlflow_run_id": run_id or "", "config": config_to_dict(cfg), "losses": list(losses)},
                    ckpt_path, pause_count=n_saved if pausing else None)

    knn = KnnProbe(cohort, cfg.augment.view_size, t.knn_k) if t.knn_every_epochs and info.main else None
    result = PretrainResult(out_dir / "encoder.pt", ckpt_path, losses)
    start = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc=f"pretrain {t.method}", unit="step",
               disable=not (progress and info.main))
    warned_epoch = -1
    first_epoch = epoch
    for epoch in range(first_epoch, t.epochs):
        method.train()
        first = in_epoch if epoch == first_epoch else 0
        in_epoch = first
        for v1, v2, y in make_batches(dataset, t, global_batch, epoch, first, info.rank, info.world, device, dtype):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_on):
                out = model(v1, v2, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            logs = {"loss": float(out.loss.detach()), **out.logs, **method.on_step_end(step, total),
                    "lr": sched.get_last_lr()[0]}
            if out.z1 is not None:
                logs.update(health_metrics(dist.gather_nograd(out.z1), dist.gather_nograd(out.z2),
                                           t.collapse_threshold))
            logs = dist.all_reduce_mean(logs, device)
            losses.append(logs["loss"])
            if info.main:
                log_metrics(logs, step)
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", epoch=epoch)
                if logs.get("health/collapsed") and warned_epoch != epoch:
                    warned_epoch = epoch
                    warnings.warn(f"train.method={t.method}: representation collapse suspected at step {step}: "
                                  f"std x sqrt(dim) of the normalised embeddings is {logs['health/std_ratio']:.3f}, "
                                  f"below train.collapse_threshold={t.collapse_threshold}", stacklevel=2)
            step += 1
            in_epoch += 1
            if info.main:
                debug_pause("step", step, out_dir)
            if t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0 and in_epoch < steps_per_epoch:
                save_checkpoint()
        if knn is not None and (epoch + 1) % t.knn_every_epochs == 0:
            acc = knn(method.encoder, device)
            if acc is not None:
                log_metrics({"health/knn_balanced_accuracy": acc}, step - 1)
        if t.checkpoint_every_epoch or epoch == t.epochs - 1:
            save_checkpoint()
    bar.close()
    if info.main:
        save_atomic({k: v.float() if v.is_floating_point() else v for k, v in method.encoder.state_dict().items()},
                    result.encoder_path)
    dist.barrier()
    result.seconds = time.perf_counter() - start
    result.steps = step
    return result
