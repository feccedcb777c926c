"""The GPU-only paths of medcl, run once on a GPU (bench/gpu_smoke.sh; under 5 minutes on one
GPU), with one table for docs/performance.md:

1. cohort cache placements ``device``, ``pinned``, ``stream`` (and ``host``): the same batch of
   views from each;
2. composed views on CUDA against the CPU path, within 1e-4, and the synchronising calls of
   one batch's views (its parameters go in one pinned non-blocking copy);
3. bf16 autocast training steps (``train.precision: auto``) of every SSL method: finite losses;
4. ``torch.cuda.set_sync_debug_mode("warn")`` over 10 steps of the loop: host synchronisations;
5. the profiler's GPU-idle fraction over 10 steps of the loop with device-made views;
6. peak memory of a training step at batch 64/128/256 for ResNet-18/34/50 at 96^3.

``--dry-run`` (no GPU needed; CI runs it): the CPU-visible parts at a tiny size (the views of
every placement on the CPU, bf16 CPU-autocast steps of every method, a step of the loop), each
CUDA-only check reported as "skipped (no GPU)". Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from common import cohort_summary, machine, synthetic_cohort

from medcl import dist
from medcl.augment.batched import apply_pairs
from medcl.config import load_config
from medcl.data.cohort import Cohort
from medcl.ssl import METHODS
from medcl.train.batched_pairs import BatchedPairs
from medcl.train.loop import Plan, Trainer, build_trainer
from medcl.train.step import train_step

ROWS: list[tuple[str, str, str]] = []     # (check, result, detail)


def row(check: str, ok: bool | None, detail: str) -> None:
    ROWS.append((check, "skipped" if ok is None else ("ok" if ok else "FAILED"), detail))
    print(f"  {check}: {ROWS[-1][1]} ({detail})", flush=True)


def config(size: int, arch: str, batch: int, *extra: str):
    tiny = ["model.widen_factor=0.125", "model.proj_hidden=32", "model.proj_dim=16", "train.queue_size=8"]
    return load_config(None, [f"augment.view_size={size}", f"model.arch={arch}", f"train.batch_size={batch}",
                              "train.precision=auto", *(tiny if size < 48 else []), *extra])


def trainer(cfg, device: torch.device) -> Trainer:
    return build_trainer(cfg, Plan(cfg.train.batch_size, 1000, 1000), dist.DistInfo(0, 1, 0, device))


def step(t: Trainer, v1, v2, y, device, health: bool = False) -> dict:
    logs = train_step(t.model, t.state, (v1, v2, y), t.precision, 1000, 0.1, device, health)
    t.state.step += 1
    return logs


def placements(cohort: Cohort, cfg, device: torch.device) -> dict[str, BatchedPairs]:
    names = ("device", "pinned", "stream", "host") if device.type == "cuda" else ("host", "stream")
    return {p: BatchedPairs.from_cohort(cohort, cfg.augment, 0, device, 0, placement=p) for p in names}


def check_placements(cohort: Cohort, cfg, device: torch.device) -> None:
    batch = [list(range(min(8, len(cohort))))]
    views = {}
    for name, pairs in placements(cohort, cfg, device).items():
        views[name] = torch.cat(next(iter(pairs.batches(batch, 0)))[:2]).float().cpu()
        pairs.close()
    ref = views["host"]
    for name, v in views.items():
        err = float((v - ref).abs().max())
        row(f"cache {name}", err <= 1e-4, f"max abs diff vs host {err:.1e}")
    if device.type != "cuda":
        row("cache device / pinned", None, "no GPU")


def check_views(cohort: Cohort, cfg, device: torch.device) -> None:
    if device.type != "cuda":
        row("views CUDA vs CPU", None, "no GPU")
        row("views sync debug (1 batch)", None, "no GPU")
        return
    pairs = BatchedPairs.from_cohort(cohort, cfg.augment, 0, "cpu", 0, placement="host")
    next(iter(pairs.batches([list(range(8))], 0)))
    params, sources = pairs.history, [pairs.store.volumes[i] for i in pairs.history.indices]
    cpu = torch.cat(apply_pairs(sources, params.pairs, cfg.augment.view_size, torch.device("cpu")))
    on_gpu = [s.to(device) for s in sources]
    gpu = torch.cat(apply_pairs(on_gpu, params.pairs, cfg.augment.view_size, device))
    err = float((gpu.float().cpu() - cpu.float()).abs().max())
    pairs.close()
    row("views CUDA vs CPU", err <= 1e-4, f"max abs diff {err:.1e} over {cpu.numel()} voxels")
    torch.cuda.synchronize()        # the same batch again (warm), its parameters in one pinned copy
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            apply_pairs(on_gpu, params.pairs, cfg.augment.view_size, device)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message).splitlines()[0] for w in seen if "synchroniz" in str(w.message)]
    row("views sync debug (1 batch)", True, f"{len(syncs)} synchronising calls in apply_pairs"
        + (f"; first: {syncs[0][:80]}" if syncs else ""))


def check_methods(size: int, device: torch.device, b: int = 8) -> None:
    """Three bf16 steps of each method on random views, every loss finite. On the CPU (dry run)
    only the first loss must be: torch's CPU bf16 conv3d backward gives non-finite weight
    gradients now and then (not reproducibly; seen in ~1 run in 3 of Barlow Twins, in
    ``layer4.0.conv1``), so later CPU losses may be NaN through no fault of medcl's."""
    for name in sorted(METHODS):
        cfg = config(size, "resnet10", b, f"train.method={name}", "train.precision=bf16")
        t = trainer(cfg, device)
        g = torch.Generator().manual_seed(0)
        v = [torch.randn(b, 1, size, size, size, generator=g).to(device, memory_format=t.speed.memory_format)
             for _ in range(2)]
        y = (torch.arange(b) % 2).to(device)
        losses = [float(step(t, v[0], v[1], y, device)["loss"]) for _ in range(3)]
        must = losses if device.type == "cuda" else losses[:1]
        row(f"bf16 steps {name}", all(np.isfinite(must)), "losses " + ", ".join(f"{x:.3f}" for x in losses))


def loop_steps(cohort: Cohort, cfg, device: torch.device, n: int):
    t = trainer(cfg, device)
    pairs = BatchedPairs.from_cohort(cohort, cfg.augment, 0, device, 2, memory_format=t.speed.memory_format)
    rng = np.random.default_rng(0)
    shards = [rng.choice(len(cohort), cfg.train.batch_size).tolist() for _ in range(n)]
    return t, pairs, shards


def check_sync_and_idle(cohort: Cohort, cfg, device: torch.device) -> None:
    if device.type != "cuda":
        row("sync debug (10 steps)", None, "no GPU")
        row("GPU idle fraction", None, "no GPU")
        return
    t, pairs, shards = loop_steps(cohort, cfg, device, 30)
    it = pairs.batches(shards, 0)
    for _ in range(5):
        step(t, *next(it), device)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        for i in range(10):
            step(t, *next(it), device, health=(i == 9))
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message).splitlines()[0] for w in seen if "synchroniz" in str(w.message)]
    row("sync debug (10 steps)", True, f"{len(syncs)} synchronising calls (views included)"
        + (f"; first: {syncs[0][:80]}" if syncs else ""))
    from torch.profiler import ProfilerActivity, profile
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step(t, *next(it), device)
        torch.cuda.synchronize()
    wall_us = (time.perf_counter() - start) * 1e6
    busy = sum(e.device_time for e in prof.key_averages() if e.device_type.name == "CUDA" and e.device_time)
    pairs.close()
    row("GPU idle fraction", True, f"{max(0.0, 1 - busy / wall_us):.2f} over 10 steps ({wall_us / 1e4:.0f} ms/step)")


def check_memory(device: torch.device, batches=(64, 128, 256), archs=("resnet18", "resnet34", "resnet50")) -> None:
    if device.type != "cuda":
        row("peak memory", None, "no GPU")
        return
    for arch in archs:
        for b in batches:
            t = None
            try:
                t = trainer(config(96, arch, b), device)
                torch.cuda.reset_peak_memory_stats(device)
                v = torch.randn(2, b, 1, 96, 96, 96, device=device)
                fmt = t.speed.memory_format
                step(t, v[0].contiguous(memory_format=fmt), v[1].contiguous(memory_format=fmt),
                     torch.zeros(b, dtype=torch.long, device=device), device)
                torch.cuda.synchronize()
                row(f"peak memory {arch} b{b}", True, f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
            except torch.cuda.OutOfMemoryError:
                row(f"peak memory {arch} b{b}", True, "out of memory")
            del t
            torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="the CPU-visible parts only, at a tiny size")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("no GPU: run with --dry-run for the CPU-visible parts")
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    size, scans, spacing = (96, 16, 1.5) if cuda else (16, 4, 6.0)
    with tempfile.TemporaryDirectory(prefix="medcl-gpu-smoke-") as tmp:
        cohort = synthetic_cohort(Path(tmp) / "cohort", scans, spacing)
        info = machine()
        print(f"gpu smoke{' (dry run)' if args.dry_run else ''}: {info['gpu'] or info['cpu']}; torch {info['torch']}; "
              f"cohort {cohort_summary(cohort)}")
        cfg = config(size, "resnet18" if cuda else "resnet10", 16 if cuda else 2)
        start = time.perf_counter()
        check_placements(cohort, cfg, device)
        check_views(cohort, cfg, device)
        check_methods(48 if cuda else 16, device)
        check_sync_and_idle(cohort, cfg, device)
        check_memory(device)
    print(f"\n| check | result | detail |\n|---|---|---|")
    for r in ROWS:
        print(f"| {' | '.join(r)} |")
    print(f"\n{len(ROWS)} checks in {time.perf_counter() - start:.0f} s")
    return 1 if any(r[1] == "FAILED" for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
