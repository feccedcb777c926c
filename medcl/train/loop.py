"""The pretraining loop: view pairs -> method -> AdamW with warmup + cosine, checkpoints."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medcl.augment import make_pair
from medcl.config import AugmentConfig, Config, config_to_dict
from medcl.data.cohort import Cohort
from medcl.ssl import build_method
from medcl.tracking import log_metrics


class PairDataset(Dataset):
    """Two augmented views per scan; the views of (seed, epoch, index) are reproducible.

    The cohort's arrays are read once into memory as float16 (workers share them through
    fork's copy-on-write instead of holding copies).
    """

    def __init__(self, cohort: Cohort, cfg: AugmentConfig, seed: int = 0):
        if len(cohort) == 0:
            raise ValueError(f"{cohort.root}: no scans to pretrain on")
        self.images = [cohort.image(i).astype(np.float16) for i in range(len(cohort))]
        self.masks = [cohort.mask(i) for i in range(len(cohort))]
        self.cfg, self.seed, self.epoch = cfg, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        v1, v2, _ = make_pair(self.images[i], self.masks[i], rng, self.cfg)
        return v1, v2


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup to 1, then cosine decay to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, fsync, rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class PretrainResult:
    encoder_path: Path
    checkpoint_path: Path
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def pretrain(cfg: Config, cohort: Cohort, out_dir: Path, progress: bool = True) -> PretrainResult:
    """Pretrain ``cfg.train.method`` on ``cohort``; metrics go to the active MLflow run, if any."""
    from tqdm import tqdm

    t = cfg.train
    out_dir = Path(out_dir)
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    device = pick_device(t.device)
    torch.manual_seed(t.seed)
    method = build_method(cfg).to(device)
    dataset = PairDataset(cohort, cfg.augment, t.seed)
    batch = min(t.batch_size, len(dataset))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                        num_workers=t.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(t.seed))
    steps_per_epoch = len(loader)
    total = steps_per_epoch * t.epochs
    opt = torch.optim.AdamW(method.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    warmup = int(round(t.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
    use_bf16 = device.type == "cuda"
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    result = PretrainResult(out_dir / "encoder.pt", ckpt_path)
    start = time.perf_counter()
    step = 0
    bar = tqdm(total=total, desc=f"pretrain {t.method}", unit="step", disable=not progress)
    for epoch in range(t.epochs):
        dataset.set_epoch(epoch)
        method.train()
        for v1, v2 in loader:
            v1, v2 = v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, logs = method(v1, v2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            logs["lr"] = sched.get_last_lr()[0]
            log_metrics(logs, step)
            result.losses.append(logs["loss"])
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", epoch=epoch)
        if t.checkpoint_every_epoch or epoch == t.epochs - 1:
            save_atomic({"method": method.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "epoch": epoch, "step": step,
                         "config": config_to_dict(cfg)}, ckpt_path)
    bar.close()
    save_atomic(method.encoder.state_dict(), result.encoder_path)
    result.seconds = time.perf_counter() - start
    result.steps = step
    return result
