"""Time of the view-parameter sampler per batch: each scan's foreground box held (computed once,
when the pair source takes the cohort in) against the box recomputed for every pair (before).

Both contenders call :func:`medcl.augment.params.sample_views` on the same scans with the same
generators, ``(seed, epoch, scan)`` as in training; ``old`` passes no box (the sampler computes
it from the mask, as every pair did before), ``new`` passes the scan's held box (what
:class:`medcl.train.batched_pairs.ParamDrawer` and :class:`medcl.train.monai_pairs.ScanPairs`
do). The two must draw identical views; the script checks that before timing. Each time is the
median of ``--repeat`` rounds (both contenders once per round), one thread, as a loader worker
runs it. Also printed: the one-off cost of computing every scan's box.

    python bench/sampler.py COHORT [--config configs/demo.yaml] [--batches 16 256]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, interleaved_medians, machine, table, write_json

sys.path.insert(0, str(ROOT))

from medcl.augment.params import foreground_box, sample_views  # noqa: E402
from medcl.config import load_config  # noqa: E402
from medcl.data.cohort import Cohort  # noqa: E402


def draw(masks, boxes, indices, cfg, epoch: int, seed: int = 0) -> list:
    """The views of one batch; ``boxes`` None: each box recomputed from its mask (before)."""
    return [sample_views(np.random.default_rng([seed, epoch, i]), masks[i], cfg,
                         None if boxes is None else boxes[i]) for i in indices]


def seconds(masks, boxes, batches, cfg) -> float:
    """Mean seconds per batch over ``batches``."""
    start = time.perf_counter()
    for epoch, indices in enumerate(batches):
        draw(masks, boxes, indices, cfg, epoch)
    return (time.perf_counter() - start) / len(batches)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cohort", type=Path, help="a cohort cache (its train split is used when it has one)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml", help="its augment section")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 256], help="pairs per batch")
    ap.add_argument("--pairs", type=int, default=1024, help="pairs timed per contender and round")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=str(ROOT / "out" / "bench" / "sampler.json"))
    args = ap.parse_args()

    cfg = load_config(args.config, args.overrides).augment
    cohort = Cohort.load(args.cohort)
    if any(r["split"] == "train" for r in cohort.rows):
        cohort = cohort.select(split="train")
    masks = [cohort.mask(i) for i in range(len(cohort))]   # as medcl.train.pairs.load_scans reads them
    start = time.perf_counter()
    boxes = [foreground_box(m) for m in masks]
    box_seconds = time.perf_counter() - start
    rng = np.random.default_rng(0)
    rows = []
    for b in args.batches:
        batches = [rng.integers(0, len(masks), b).tolist() for _ in range(max(1, args.pairs // b))]
        if draw(masks, None, batches[0], cfg, 0) != draw(masks, boxes, batches[0], cfg, 0):
            raise SystemExit("sampler.py: the views with held boxes differ from the recomputed ones")
        (old, old_runs), (new, new_runs) = interleaved_medians(
            [lambda: seconds(masks, None, batches, cfg), lambda: seconds(masks, boxes, batches, cfg)], args.repeat)
        rows.append({"pairs": b, "old_ms": old * 1e3, "new_ms": new * 1e3, "ratio": old / new,
                     "old_runs_ms": [x * 1e3 for x in old_runs], "new_runs_ms": [x * 1e3 for x in new_runs]})
    print(f"{len(masks)} scans of {cohort.root}, shape {masks[0].shape}; augment from {args.config}"
          f"{' + ' + ' '.join(args.overrides) if args.overrides else ''}")
    print(f"every scan's box computed once: {box_seconds * 1e3:.0f} ms ({box_seconds / len(masks) * 1e3:.2f} ms a scan)")
    print(table(rows, [("pairs", "pairs/batch", "d"), ("old_ms", "old: box per pair (ms)", ".1f"),
                       ("new_ms", "new: box held (ms)", ".1f"), ("ratio", "old/new", ".2f")]))
    write_json(args.json, {"machine": machine(), "scans": len(masks), "box_once_ms": box_seconds * 1e3,
                           "overrides": args.overrides, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
