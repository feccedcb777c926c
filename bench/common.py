"""Shared by bench/augment.py, bench/train_step.py and bench/memory.py: a cohort cache to run
on, the machine's description, medians of repeated timings, a table and a JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from medcl.data.cohort import Cohort  # noqa: E402


def machine() -> dict:
    """CPU, cores, memory, GPU name (or none), torch and MONAI versions."""
    import monai
    import psutil

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "gpu": gpu,
            "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None,
            "torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version(),
            "load_average_1min": os.getloadavg()[0]}


def synthetic_cohort(root: Path, n: int, spacing: float, seed: int = 0) -> Cohort:
    """``n`` scans in cohort-cache format (fp16 image, uint8 mask, manifest.csv) made from the MNI
    ICBM152 template (real anatomy) at ``spacing`` mm: each trimmed by a few voxels (so the shapes
    differ), rescaled in intensity and, for half, flipped. Kept between runs (same arguments)."""
    from medcl.config import DataConfig
    from medcl.data.ingest import preprocess_file, write_manifest

    root = Path(root)
    if (root / "manifest.csv").exists() and len(Cohort.load(root)) == n:
        return Cohort.load(root)
    import nilearn.datasets

    t1 = Path(nilearn.datasets.__file__).parent / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    pre = preprocess_file(t1, DataConfig(spacing=spacing))
    (root / "arrays").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lo = rng.integers(0, 4, 3)
        hi = np.array(pre.image.shape) - rng.integers(0, 4, 3)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        img, mask = pre.image[box] * rng.uniform(0.8, 1.2), pre.mask[box]
        if i % 2:
            img, mask = img[::-1], mask[::-1]
        key = f"scan-{i:06d}"
        np.save(root / "arrays" / f"{key}.npy", np.ascontiguousarray(img, dtype=np.float16))
        np.save(root / "arrays" / f"{key}.mask.npy", np.ascontiguousarray(mask, dtype=np.uint8))
        rows.append({"scan_key": key, "subject_key": f"sub-{i:06d}", "label": ["healthy", "lesion", "atrophy"][i % 3],
                     "split": "train", "shape": "x".join(map(str, img.shape)), "spacing": spacing,
                     "source_sha256": "synthetic"})
    write_manifest(root, rows)
    return Cohort.load(root)


def cohort_summary(cohort: Cohort) -> str:
    shapes = [tuple(int(v) for v in r["shape"].split("x")) for r in cohort.rows]
    mean = np.mean([np.prod(s) for s in shapes])
    return f"{len(cohort)} scans, ~{shapes[0][0]}x{shapes[0][1]}x{shapes[0][2]} voxels ({mean / 1e6:.2f} M mean)"


def median_of(fn, repeat: int) -> tuple[float, list[float]]:
    """fn() returns a rate; the median of ``repeat`` calls and all of them."""
    values = [fn() for _ in range(repeat)]
    return statistics.median(values), values


def interleaved_medians(fns: list, repeat: int) -> list[tuple[float, list[float]]]:
    """Each of ``fns`` (a rate each) run ``repeat`` times in rounds (every contender once per
    round), so a change in the machine's speed during the benchmark (a shared VM's host, other
    jobs) reaches every contender alike; the median and the runs of each."""
    runs: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            runs[i].append(fn())
    return [(statistics.median(r), r) for r in runs]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    def __init__(self, device: torch.device | None = None):
        self.device = device

    def __enter__(self):
        if self.device is not None:
            sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device is not None:
            sync(self.device)
        self.seconds = time.perf_counter() - self.t0


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table; columns are (key, header, format)."""
    cells = [[h for _, h, _ in columns]] + [[("" if r.get(k) is None else format(r[k], f)) for k, _, f in columns]
                                           for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c[i].rjust(widths[i]) if i else c[i].ljust(widths[i]) for i in range(len(columns)))
             for c in cells]
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
