"""Seconds per scan of ``preprocess`` with registration to the MNI template off, affine, and
affine with the template's brain mask, on simulated demo scans (medcl.data.demo, 2 mm).

The scans are written once (``--work``; reused when present), read into memory, then each
setting preprocesses every scan in this process (one core; ingest runs one such worker per
core), alternating settings scan by scan so all three see the same machine load. CPU seconds
(``time.process_time``) are printed beside wall seconds: on a shared machine they say what a
free core would take. The first
registration of a process reads the template (about a second); it is done before the clock.
Run: ``PYTHONPATH=. .venv/bin/python bench/register.py --scans 20``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcl.config import DataConfig  # noqa: E402
from medcl.data.demo import make_demo_sources  # noqa: E402
from medcl.data.ingest import preprocess  # noqa: E402
from medcl.data.readers import load_nifti  # noqa: E402

SETTINGS = {"off": {}, "affine": {"register": "affine"},
            "affine+mask": {"register": "affine", "brain_mask": "template"}}


def scans(work: Path, n: int, spacing: float) -> list:
    folder = work / "nifti"
    if len(list(folder.glob("*.nii.gz"))) < n:
        make_demo_sources(work, n_subjects=n, spacing=spacing)
    files = sorted(folder.glob("*.nii.gz"))[:n]
    return [load_nifti(f, DataConfig()) for f in files]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=20)
    ap.add_argument("--spacing", type=float, default=2.0, help="demo voxel size and data.spacing (mm)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medcl-bench-register")
    args = ap.parse_args()
    vols = scans(args.work, args.scans, args.spacing)
    cfgs = {k: DataConfig(spacing=args.spacing, **v) for k, v in SETTINGS.items()}
    for cfg in cfgs.values():                     # warm-up: template read, caches filled
        preprocess(*vols[0], cfg)
    times: dict[str, list[float]] = {k: [] for k in cfgs}
    cpu: dict[str, list[float]] = {k: [] for k in cfgs}
    shapes: dict[str, set] = {k: set() for k in cfgs}
    for data, affine in vols:
        for name, cfg in cfgs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            pre = preprocess(data, affine, cfg)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            shapes[name].add(pre.image.shape)
    base = statistics.mean(times["off"])
    print(f"{len(vols)} demo scans, {vols[0][0].shape} voxels of {args.spacing} mm; seconds per scan of "
          f"preprocess in one process (wall: mean, median, max; CPU: mean)")
    print(f"{'setting':12s} {'mean s':>7s} {'median s':>8s} {'max s':>6s} {'cpu s':>6s} {'ratio':>6s} {'extra s':>7s}  shapes")
    for name, ts in times.items():
        mean = statistics.mean(ts)
        print(f"{name:12s} {mean:7.3f} {statistics.median(ts):8.3f} {max(ts):6.3f} {statistics.mean(cpu[name]):6.3f} "
              f"{mean / base:6.2f} {mean - base:7.3f}  {len(shapes[name])} distinct")


if __name__ == "__main__":
    main()
