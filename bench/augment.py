"""View pairs per second: medcl's batched path against per-sample MONAI pipelines in a standard
DataLoader, in the same run, on the CPU and (when there is one) on the GPU.

Contenders (all make two views of a scan at ``--view-size``^3 from the same cohort cache):

* ``medcl batched``: :class:`medcl.train.batched_pairs.BatchedPairs`, the training data path of
  ``augment.backend: batched``: the cohort held once (host memory on the CPU, GPU memory on a
  GPU), loader workers (``--medcl-workers``) draw the view parameters, the main process applies
  them to the whole batch (:mod:`medcl.augment.batched`) with all its torch threads;
* ``monai per-sample (medcl params)``: the loop's ``ScanPairs`` (``augment.backend: monai``):
  the same parameters applied per sample with MONAI transforms (:func:`medcl.augment.apply_view`)
  in ``DataLoader`` workers, collated into batches;
* ``monai Compose (Rand*)``: the usual MONAI pipeline: a ``Compose`` of ``RandScaleCrop``,
  ``Resize``, ``RandAffine``, ``RandFlip``, ``ScaleIntensity``, ``RandAdjustContrast``,
  ``RandScaleIntensityFixedMean``, ``RandBiasField``, ``RandGaussianNoise``,
  ``RandGaussianSmooth``, ``NormalizeIntensity`` with the same ranges, applied twice per scan
  (cropped to its foreground box) in ``DataLoader`` workers.

A rate is pairs delivered per second after the first batch (worker start-up excluded), on the
device the training would use (views moved to the GPU for the GPU rows). Each rate is the
median of ``--repeat`` runs, taken in rounds (every contender once per round) so that a change
in the machine's speed during the benchmark reaches all contenders alike. Run: ``.venv/bin/python bench/augment.py`` (``--help``).
"""

from __future__ import annotations

import os

# On a shared machine an idle OpenMP thread that spins steals the core the other contender
# needs; passive waiting is fairer to whichever side runs several threads (memory.py too).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common import ROOT, Timer, cohort_summary, interleaved_medians, machine, synthetic_cohort, table, write_json

from medcl.augment.params import foreground_box
from medcl.config import AugmentConfig
from medcl.data.cohort import Cohort
from medcl.train.batched_pairs import BatchedPairs
from medcl.train.monai_pairs import ScanPairs


class ComposeDataset(Dataset):
    """Two views per scan with the usual MONAI Rand* Compose (same kinds and ranges)."""

    def __init__(self, cohort: Cohort, cfg: AugmentConfig):
        from monai.transforms import (Compose, NormalizeIntensity, RandAdjustContrast, RandAffine, RandBiasField,
                                      RandFlip, RandGaussianNoise, RandGaussianSmooth, RandScaleCrop,
                                      RandScaleIntensityFixedMean, Resize, ScaleIntensity)

        self.images = [cohort.image(i).astype(np.float16) for i in range(len(cohort))]
        self.boxes = [foreground_box(cohort.mask(i)) for i in range(len(cohort))]
        rot, s = float(np.deg2rad(cfg.rotate_deg)), cfg.view_size
        self.t = Compose([
            RandScaleCrop(roi_scale=cfg.crop_scale[0], max_roi_scale=cfg.crop_scale[1], random_size=True),
            Resize((s, s, s), mode="trilinear"),
            RandAffine(prob=1.0, rotate_range=(rot,) * 3, scale_range=(cfg.scale,) * 3, padding_mode="border"),
            RandFlip(prob=0.5, spatial_axis=0),
            ScaleIntensity(),
            RandAdjustContrast(prob=1.0, gamma=cfg.gamma),
            RandScaleIntensityFixedMean(prob=1.0, factors=(cfg.contrast[0] - 1, cfg.contrast[1] - 1)),
            RandBiasField(degree=2, coeff_range=(-cfg.bias_coeff, cfg.bias_coeff), prob=1.0),
            RandGaussianNoise(prob=1.0, std=cfg.noise_std[1]),
            RandGaussianSmooth(sigma_x=cfg.blur_sigma, sigma_y=cfg.blur_sigma, sigma_z=cfg.blur_sigma,
                               prob=cfg.blur_prob),
            NormalizeIntensity(),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        lo, hi = self.boxes[i]
        x = torch.from_numpy(self.images[i][lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32))[None]
        return torch.as_tensor(self.t(x)), torch.as_tensor(self.t(x))


def random_batches(n_scans: int, batch: int, count: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_scans, batch).tolist() for _ in range(count)]


def rate_dataloader(dataset: Dataset, batch: int, batches: int, workers: int, device: torch.device,
                    seed: int) -> float:
    """Pairs per second from a standard DataLoader (first batch excluded)."""
    loader = DataLoader(dataset, batch_sampler=random_batches(len(dataset), batch, batches + 1, seed),
                        num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    it = iter(loader)
    first = next(it)
    first[0].to(device)
    with Timer(device) as t:
        n = 0
        for item in it:
            v1, v2 = item[0].to(device, non_blocking=True), item[1].to(device, non_blocking=True)
            n += v1.shape[0]
    del it
    return n / t.seconds


def rate_batched(pairs: BatchedPairs, batch: int, batches: int, seed: int) -> float:
    shards = random_batches(len(pairs.labels), batch, batches + 1, seed)
    it = pairs.batches(shards, epoch=seed)
    next(it)
    with Timer(pairs.device) as t:
        n = sum(v1.shape[0] for v1, _, _ in it)
    return n / t.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", help="a cohort cache (default: a synthetic one from the MNI template)")
    ap.add_argument("--scans", type=int, default=64)
    ap.add_argument("--spacing", type=float, default=2.0, help="mm, synthetic cohort (2 = the demo's)")
    ap.add_argument("--view-size", type=int, default=48)
    ap.add_argument("--pairs", type=int, default=16, help="pairs per batch on the CPU")
    ap.add_argument("--gpu-pairs", type=int, default=32, help="pairs per batch on the GPU")
    ap.add_argument("--gpu-view-size", type=int, default=96)
    ap.add_argument("--medcl-pairs", type=int, default=128, help="pairs timed per medcl run (CPU)")
    ap.add_argument("--monai-pairs", type=int, default=64, help="pairs timed per MONAI run (CPU)")
    ap.add_argument("--workers", default="0,1,2", help="DataLoader workers of the MONAI rows on the CPU")
    ap.add_argument("--medcl-workers", default="0,1", help="parameter-sampling workers of medcl on the CPU")
    ap.add_argument("--gpu-workers", type=int, default=16, help="DataLoader workers of the MONAI rows on the GPU")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-compose", action="store_true", help="skip the MONAI Compose rows")
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "out" / "bench" / "augment.json"))
    args = ap.parse_args()

    tmp = Path(os.environ.get("MEDCL_BENCH_DIR", tempfile.gettempdir())) / f"medcl-bench-cohort-{args.scans}-{args.spacing}"
    cohort = Cohort.load(args.cohort) if args.cohort else synthetic_cohort(tmp, args.scans, args.spacing)
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, GPU: {info['gpu'] or 'none'}; "
          f"torch {info['torch']}, MONAI {info['monai']}; load average {info['load_average_1min']:.1f}")
    print(f"cohort: {cohort_summary(cohort)}")
    rows = []
    pending: list[tuple[dict, object]] = []

    def add(device: str, name: str, workers: int, rate_fn, view_size: int, batch: int) -> None:
        pending.append(({"device": device, "contender": name, "workers": workers, "view": view_size, "batch": batch},
                        rate_fn))

    def run_pending() -> None:
        """The contenders of one device in interleaved rounds (common.interleaved_medians)."""
        for (row, _), (med, runs) in zip(pending, interleaved_medians([fn for _, fn in pending], args.repeat)):
            rows.append({**row, "pairs_per_s": med, "runs": runs})
            print(f"  {row['device']} {row['contender']} workers={row['workers']}: {med:.1f} pairs/s  "
                  f"(runs {', '.join(f'{r:.1f}' for r in runs)})", flush=True)
        pending.clear()

    # ------------------------------------------------------------------ CPU
    cpu = torch.device("cpu")
    cfg = AugmentConfig(view_size=args.view_size)
    b = args.pairs
    print(f"CPU: view {args.view_size}^3, {b} pairs per batch, {torch.get_num_threads()} torch threads")
    opened = []
    for w in [int(v) for v in args.medcl_workers.split(",") if v != ""]:
        pairs = BatchedPairs.from_cohort(cohort, cfg, seed=0, device=cpu, num_workers=w, placement="host")
        opened.append(pairs)
        n = max(1, args.medcl_pairs // b)
        add("cpu", "medcl batched", w, lambda pairs=pairs, n=n: rate_batched(pairs, b, n, seed=int(time.time()) % 1000),
            args.view_size, b)
    monai_ds = ScanPairs.from_cohort(cohort, cfg, seed=0)
    compose_ds = None if args.no_compose else ComposeDataset(cohort, cfg)
    n = max(1, args.monai_pairs // b)
    for w in [int(v) for v in args.workers.split(",") if v != ""]:
        add("cpu", "monai per-sample (medcl params)", w, lambda w=w: rate_dataloader(monai_ds, b, n, w, cpu, 1),
            args.view_size, b)
        if compose_ds is not None:
            add("cpu", "monai Compose (Rand*)", w, lambda w=w: rate_dataloader(compose_ds, b, n, w, cpu, 2),
                args.view_size, b)
    run_pending()
    for pairs in opened:
        pairs.close()

    # ------------------------------------------------------------------ GPU
    gpu_note = "not measured: no GPU in this session"
    if torch.cuda.is_available() and not args.cpu_only:
        gpu = torch.device("cuda")
        gcfg = AugmentConfig(view_size=args.gpu_view_size)
        gb = args.gpu_pairs
        print(f"GPU {info['gpu']}: view {gcfg.view_size}^3, {gb} pairs per batch")
        pairs = BatchedPairs.from_cohort(cohort, gcfg, seed=0, device=gpu, num_workers=4)
        print(f"  medcl cache placement: {pairs.placement}")
        add("cuda", "medcl batched", 4, lambda: rate_batched(pairs, gb, 20, seed=int(time.time()) % 1000),
            gcfg.view_size, gb)
        w = args.gpu_workers
        gds = ScanPairs.from_cohort(cohort, gcfg, seed=0)
        add("cuda", "monai per-sample (medcl params)", w, lambda: rate_dataloader(gds, gb, 6, w, gpu, 1),
            gcfg.view_size, gb)
        if not args.no_compose:
            gcds = ComposeDataset(cohort, gcfg)
            add("cuda", "monai Compose (Rand*)", w, lambda: rate_dataloader(gcds, gb, 6, w, gpu, 2),
                gcfg.view_size, gb)
        run_pending()
        pairs.close()
        gpu_note = None

    # ------------------------------------------------------------------ report
    for dev in ("cpu", "cuda"):
        mine = [r for r in rows if r["device"] == dev and r["contender"] == "medcl batched"]
        others = [r for r in rows if r["device"] == dev and r["contender"] != "medcl batched"]
        if mine and others:
            best_mine = max(r["pairs_per_s"] for r in mine)
            for r in rows:
                if r["device"] == dev:
                    r["medcl_best_over_this"] = best_mine / r["pairs_per_s"]
    print()
    print(table(rows, [("device", "device", "s"), ("contender", "contender", "s"), ("workers", "workers", "d"),
                       ("view", "view", "d"), ("batch", "pairs/batch", "d"), ("pairs_per_s", "pairs/s", ".1f"),
                       ("medcl_best_over_this", "best medcl / this", ".2f")]))
    summary = {}
    for dev in ("cpu", "cuda"):
        mine = [r["pairs_per_s"] for r in rows if r["device"] == dev and r["contender"] == "medcl batched"]
        for name in ("monai per-sample (medcl params)", "monai Compose (Rand*)"):
            theirs = [r["pairs_per_s"] for r in rows if r["device"] == dev and r["contender"] == name]
            if mine and theirs:
                summary[f"{dev}: best medcl / best {name}"] = max(mine) / max(theirs)
    for k, v in summary.items():
        print(f"{k}: {v:.2f}x")
    if gpu_note:
        print(f"GPU: {gpu_note}")
    write_json(args.json, {"benchmark": "augment", "machine": info, "cohort": cohort_summary(cohort),
                           "args": vars(args), "rows": rows, "summary": summary, "gpu": gpu_note or "measured"})


if __name__ == "__main__":
    main()
