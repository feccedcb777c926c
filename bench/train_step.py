"""A full pretraining step (SimCLR: encoder + projection head + NT-Xent, backward, AdamW), fed
three ways in the same run: volumes per second and achieved TFLOP/s.

* ``model only``: the same step on random input already on the device (the ceiling);
* ``medcl batched``: views made on the device by :class:`medcl.train.batched_pairs.BatchedPairs`
  (cohort held once on the GPU, or in pinned memory when it does not fit; loader workers draw
  the view parameters);
* ``monai per-sample``: the loop's ``ScanPairs`` (MONAI transforms per sample) in a standard
  ``DataLoader`` with ``--monai-workers`` workers, pinned, copied to the device.

Every contender runs ``medcl pretrain``'s own step (:func:`medcl.train.loop.build_trainer` and
:func:`medcl.train.step.train_step`), so on a GPU it has the loop's set-up
(:class:`medcl.train.speed.SpeedSetup`): bf16 autocast, channels_last_3d, cuDNN autotuning,
fused AdamW, and ``torch.compile`` with ``--compile``. A volume is one
view (a pair is two). TFLOP/s = FLOPs of a step (counted once on the meta device) x steps / s.
Each figure is the median of ``--repeat`` runs. On a GPU the script also reports the largest
batch that fits ``--memory-gb`` of GPU memory at this view size. Without a GPU it runs the
same comparison on the CPU at a small size (and says that the GPU figures are not measured).
Run: ``.venv/bin/python bench/train_step.py`` (``--help``).
"""

from __future__ import annotations

import os

# On a shared machine an idle OpenMP thread that spins steals the core the other contender
# needs; passive waiting is fairer to whichever side runs several threads (memory.py too).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from common import ROOT, Timer, cohort_summary, machine, median_of, synthetic_cohort, table, write_json

from medcl.config import Config
from medcl.data.cohort import Cohort
from medcl.models import ProjectionHead, build_encoder
from medcl import dist
from medcl.train import speed
from medcl.train.batched_pairs import BatchedPairs
from medcl.train.loop import Plan, build_trainer
from medcl.train.monai_pairs import ScanPairs
from medcl.train.step import train_step


def random_batches(n: int, batch: int, count: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, batch).tolist() for _ in range(count)]


class Trainer:
    """``medcl pretrain``'s own trainer (:func:`medcl.train.loop.build_trainer`: its speed
    settings, precision, optimiser and schedule); ``step(v1, v2, y)`` is the loop's
    :func:`medcl.train.step.train_step`, fetching nothing from the device."""

    def __init__(self, cfg: Config, device: torch.device, total_steps: int):
        self.device = device
        plan = Plan(cfg.train.batch_size, total_steps, total_steps)
        self.trainer = build_trainer(cfg, plan, dist.DistInfo(0, 1, 0, device))
        self.total, self.threshold = total_steps, cfg.train.collapse_threshold

    @property
    def memory_format(self) -> torch.memory_format:
        return self.trainer.speed.memory_format

    def step(self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor) -> None:
        t = self.trainer
        train_step(t.model, t.state, (v1, v2, y), t.precision, self.total, self.threshold, self.device)
        t.state.step += 1


def run_steps(trainer: Trainer, batches, warmup: int, steps: int) -> float:
    """Volumes per second over ``steps`` steps after ``warmup`` steps."""
    it = iter(batches)
    for _ in range(warmup):
        trainer.step(*next(it))
    with Timer(trainer.device) as t:
        vols = 0
        for _ in range(steps):
            v1, v2, y = next(it)
            trainer.step(v1, v2, y)
            vols += v1.shape[0] + v2.shape[0]
    return vols / t.seconds


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", help="a cohort cache (default: a synthetic one from the MNI template)")
    ap.add_argument("--scans", type=int, default=64)
    ap.add_argument("--spacing", type=float, default=1.0 if cuda else 3.0)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--view-size", type=int, default=96 if cuda else 32)
    ap.add_argument("--pairs", type=int, default=32 if cuda else 4, help="pairs per step")
    ap.add_argument("--steps", type=int, default=20 if cuda else 3)
    ap.add_argument("--warmup", type=int, default=5 if cuda else 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--monai-workers", type=int, default=16 if cuda else 2)
    ap.add_argument("--medcl-workers", type=int, default=4 if cuda else 1)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (all contenders)")
    ap.add_argument("--memory-gb", type=float, default=0.0, help="GPU memory budget for the batch fit (0 = 90%%)")
    ap.add_argument("--json", default=str(ROOT / "out" / "bench" / "train_step.json"))
    args = ap.parse_args()

    device = torch.device("cuda" if cuda else "cpu")
    tmp = Path(os.environ.get("MEDCL_BENCH_DIR", tempfile.gettempdir())) / f"medcl-bench-cohort-{args.scans}-{args.spacing}"
    cohort = Cohort.load(args.cohort) if args.cohort else synthetic_cohort(tmp, args.scans, args.spacing)
    cfg = Config()
    cfg.model.arch, cfg.augment.view_size, cfg.train.batch_size = args.arch, args.view_size, args.pairs
    info = machine()
    s, b = args.view_size, args.pairs
    print(f"machine: {info['cpu']}, {info['cores']} cores, GPU: {info['gpu'] or 'none'}; torch {info['torch']}; "
          f"load average {info['load_average_1min']:.1f}")
    print(f"cohort: {cohort_summary(cohort)}; {args.arch} at {s}^3, {b} pairs ({2 * b} volumes) per step, "
          f"device {device}")

    def build():
        enc = build_encoder(args.arch, cfg.model.conv1_t_stride, cfg.model.widen_factor)
        return torch.nn.Sequential(enc, ProjectionHead(enc.feature_dim, cfg.model.proj_hidden, cfg.model.proj_dim))

    flops = speed.step_flops(build, 2 * b, s)
    print(f"FLOPs per step (forward + backward, {2 * b} volumes): {flops / 1e12:.3f} T")
    cfg.train.compile = args.compile
    trainer = Trainer(cfg, device, total_steps=100_000)
    fmt = trainer.memory_format
    total = args.warmup + args.steps
    rows = []

    def add(name: str, workers: int | None, fn) -> None:
        med, runs = median_of(fn, args.repeat)
        rows.append({"contender": name, "workers": workers, "volumes_per_s": med, "runs": runs,
                     "tflops": med / (2 * b) * flops / 1e12})
        print(f"  {name}: {med:.1f} volumes/s  (runs {', '.join(f'{r:.1f}' for r in runs)})", flush=True)

    def synthetic():
        while True:
            x = torch.randn(2, b, 1, s, s, s, device=device).contiguous(memory_format=torch.contiguous_format)
            yield (x[0].contiguous(memory_format=fmt), x[1].contiguous(memory_format=fmt),
                   torch.zeros(b, dtype=torch.long, device=device))

    fixed = list(next(synthetic()) for _ in range(1))[0]
    add("model only (synthetic input)", None, lambda: run_steps(trainer, iter(lambda: fixed, None), args.warmup,
                                                                args.steps))

    pairs = BatchedPairs.from_cohort(cohort, cfg.augment, seed=0, device=device, num_workers=args.medcl_workers,
                                     memory_format=fmt)
    print(f"  medcl cache placement: {pairs.placement}")
    seed = iter(range(1000))
    add("medcl batched (augmentation on the device)", args.medcl_workers,
        lambda: run_steps(trainer, pairs.batches(random_batches(len(cohort), b, total, next(seed)), 0),
                          args.warmup, args.steps))
    pairs.close()

    dataset = ScanPairs.from_cohort(cohort, cfg.augment, seed=0)

    def monai_batches(sd: int):
        loader = DataLoader(dataset, batch_sampler=random_batches(len(dataset), b, total, sd),
                            num_workers=args.monai_workers, pin_memory=cuda,
                            prefetch_factor=4 if args.monai_workers else None)
        for v1, v2, y in loader:
            yield (v1.to(device, non_blocking=True).contiguous(memory_format=fmt),
                   v2.to(device, non_blocking=True).contiguous(memory_format=fmt), y.to(device))

    add("monai per-sample (DataLoader)", args.monai_workers,
        lambda: run_steps(trainer, monai_batches(next(seed)), args.warmup, args.steps))

    base = rows[0]["volumes_per_s"]
    for r in rows:
        r["fraction_of_model_only"] = r["volumes_per_s"] / base
    medcl, monai = rows[1]["volumes_per_s"], rows[2]["volumes_per_s"]
    print()
    print(table(rows, [("contender", "contender", "s"), ("workers", "workers", "d"),
                       ("volumes_per_s", "volumes/s", ".1f"), ("tflops", "TFLOP/s", ".3f"),
                       ("fraction_of_model_only", "of model only", ".2f")]))
    print(f"medcl batched: {rows[1]['fraction_of_model_only']:.2f} of model-only throughput, "
          f"{medcl / monai:.2f}x the per-sample MONAI pipeline with {args.monai_workers} workers")
    fit = None
    if cuda:
        budget = int((args.memory_gb or 0.9 * info["gpu_memory_gb"]) * 2**30)
        fit = speed.fit_batch(lambda n: trainer.step(*next(iter(lambda: (
            torch.randn(n, 1, s, s, s, device=device).contiguous(memory_format=fmt),
            torch.randn(n, 1, s, s, s, device=device).contiguous(memory_format=fmt),
            torch.zeros(n, dtype=torch.long, device=device)), None))), budget, device)
        print(f"largest batch within {budget / 2**30:.1f} GiB at {s}^3: {fit}")
    else:
        print("GPU figures: not measured: no GPU in this session")
    write_json(args.json, {"benchmark": "train_step", "machine": info, "cohort": cohort_summary(cohort),
                           "args": vars(args), "flops_per_step": flops, "rows": rows,
                           "medcl_over_monai": medcl / monai, "batch_fit": fit,
                           "gpu": "measured" if cuda else "not measured: no GPU in this session"})


if __name__ == "__main__":
    main()
