"""Peak host memory of the training data path with 0 and 4 loader workers, for both backends
(``batched`` with its default thread workers and with worker processes; ``monai``, whose
workers are processes).

Each configuration runs in a fresh process that does what the loop does (the pair source of
``augment.backend``, ``medcl.train.data.make_pair_source``: ``batched`` holds the cohort once,
``monai`` makes views in ``DataLoader`` workers; then batches of view pairs), while this process
samples the whole process tree (the run and its loader workers) every 0.1 s:

* ``RSS``: the sum of the resident sets. It counts a page once per process that maps it, so
  pages that forked workers share with the parent (the cohort, torch's libraries) count several
  times: an upper bound, and the figure the issue names;
* ``PSS``: the proportional set size (a shared page is split among its sharers): the sum over
  the tree is the physical memory the tree uses. A cohort copied into every worker shows up in
  both; a cohort shared shows up only in RSS.

Run: ``.venv/bin/python bench/memory.py`` (``--help``). Linux only (``/proc``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from common import ROOT, cohort_summary, machine, synthetic_cohort, table, write_json  # noqa: E402


def child(args) -> None:
    """The measured process: build the data path as the loop does and run ``--batches`` batches."""
    import numpy as np
    import torch

    from medcl.config import load_config
    from medcl.data.cohort import Cohort
    from medcl.train.data import make_pair_source
    from medcl.train.pairs import epoch_batches
    from medcl.train.store import cache_files, cohort_nbytes

    torch.set_num_threads(1)
    cohort = Cohort.load(args.cohort)
    cfg = load_config(overrides=[f"augment.view_size={args.view_size}", f"augment.backend={args.backend}",
                                 f"train.num_workers={args.workers}", f"train.worker_kind={args.worker_kind}"])
    source = make_pair_source(cohort, cfg, torch.device("cpu"))
    shards = epoch_batches(len(cohort), args.pairs, 0, 0)[:args.batches]
    n = 0
    for v1, v2, _ in source.batches(shards, 0):
        n += v1.shape[0]
    source.close()
    images, masks = cache_files(cohort)      # sizes from the .npy headers: fp16 images, bool masks
    print(json.dumps({"pairs": n, "cache_mb": cohort_nbytes(images) / 2**20,
                      "masks_mb": sum(np.load(f, mmap_mode="r").size for f in masks) / 2**20}))


def measure(args, backend: str, workers: int, kind: str) -> dict:
    import psutil

    cmd = [sys.executable, __file__, "--child", "--cohort", args.cohort, "--backend", backend, "--workers",
           str(workers), "--worker-kind", kind, "--view-size", str(args.view_size), "--pairs", str(args.pairs),
           "--batches", str(args.batches)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = peak_procs = 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            rss = pss = 0
            for p in procs:
                try:
                    full = p.memory_full_info()
                    rss, pss = rss + full.rss, pss + full.pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            peak_procs = max(peak_procs, len(procs))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{backend} with {workers} workers failed (exit {proc.returncode})")
    res = json.loads(out.strip().splitlines()[-1])
    return {"backend": backend, "kind": kind, "workers": workers, "processes": peak_procs, "peak_rss_mb": peak_rss / 2**20,
            "peak_pss_mb": peak_pss / 2**20, **res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cohort", help="a cohort cache (default: a synthetic one from the MNI template)")
    ap.add_argument("--scans", type=int, default=240)
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--backend", default="batched")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--worker-kind", default="thread", help="batched backend: thread or process")
    ap.add_argument("--view-size", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "out" / "bench" / "memory.json"))
    args = ap.parse_args()
    if args.child:
        return child(args)
    if not args.cohort:
        tmp = Path(os.environ.get("MEDCL_BENCH_DIR", tempfile.gettempdir()))
        args.cohort = str(synthetic_cohort(tmp / f"medcl-bench-cohort-{args.scans}-{args.spacing}", args.scans,
                                           args.spacing).root)
    from medcl.data.cohort import Cohort

    info = machine()
    summary = cohort_summary(Cohort.load(args.cohort))
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; load average "
          f"{info['load_average_1min']:.1f}\ncohort: {summary}")
    rows = []
    contenders = (("batched", "thread"), ("batched", "process"), ("monai", "process"))
    for backend, kind in contenders:
        for workers in (0, 4):
            runs = [measure(args, backend, workers, kind) for _ in range(args.repeat)]
            med = sorted(runs, key=lambda r: r["peak_pss_mb"])[len(runs) // 2]
            row = {**med, "peak_rss_mb": sorted(r["peak_rss_mb"] for r in runs)[len(runs) // 2],
                   "runs_rss_mb": [round(r["peak_rss_mb"]) for r in runs],
                   "runs_pss_mb": [round(r["peak_pss_mb"]) for r in runs]}
            rows.append(row)
            print(f"  {backend} ({kind}) workers={workers}: peak RSS {row['peak_rss_mb']:.0f} MB, PSS {row['peak_pss_mb']:.0f} MB "
                  f"(runs RSS {row['runs_rss_mb']}, PSS {row['runs_pss_mb']})", flush=True)
    ratios = {}
    for backend, kind in contenders:
        r0, r4 = [r for r in rows if r["backend"] == backend and r["kind"] == kind]
        for key in ("peak_rss_mb", "peak_pss_mb"):
            ratios[f"{backend} ({kind} workers) {key[5:8].upper()} 4 workers / 0"] = r4[key] / r0[key]
    print()
    print(table(rows, [("backend", "backend", "s"), ("kind", "workers are", "s"), ("workers", "workers", "d"), ("processes", "processes", "d"),
                       ("cache_mb", "cohort MB", ".0f"), ("masks_mb", "masks MB", ".0f"),
                       ("peak_rss_mb", "peak RSS MB", ".0f"), ("peak_pss_mb", "peak PSS MB", ".0f")]))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    write_json(args.json, {"benchmark": "memory", "machine": info, "cohort": summary, "args": vars(args),
                           "rows": rows, "ratios": ratios})


if __name__ == "__main__":
    main()
