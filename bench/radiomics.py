"""Radiomics bench: seconds per scan of the radiomics baseline (medcl.fewshot.radiomics, MIRP)
and, as a sanity check, 5-fold cross-validated balanced accuracy of a logistic regression on
the radiomics features against the same on the raw-voxel PCA features.

    .venv/bin/python bench/radiomics.py --cohort /tmp/trace/work/cohort     # a built demo cohort
    .venv/bin/python bench/radiomics.py --subjects 30                        # build a small one first

Without ``--cohort`` a demo cohort of ``--subjects`` subjects is simulated and ingested (half
``test``) into ``~/.cache/medcl/bench_radiomics_<n>`` (kept between runs). Evaluated: the
labelled ``test`` scans (as the few-shot evaluation does). Timed: ``--time-scans`` scans in
this process after one warm-up scan (seconds per scan, one core), then every evaluated scan
with ``--workers`` processes (wall time, start-up of the processes included). Raw voxels: the
evaluation view (``--view-size``), PCA to ``--pca-components`` fitted on the ``train`` split
(unlabelled), as ``medcl fewshot`` does. Cross-validation: stratified 5-fold grouped by
subject; each training fold fits :func:`~medcl.fewshot.radiomics.standardise` (radiomics and
PCA features alike) and ``LogisticRegression(C=1)``; mean and standard deviation over folds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402
from sklearn.model_selection import StratifiedGroupKFold  # noqa: E402

import torch  # noqa: E402

from medcl.config import DataConfig  # noqa: E402
from medcl.data.cohort import Cohort  # noqa: E402
from medcl.data.demo import make_demo_sources  # noqa: E402
from medcl.data.ingest import ingest  # noqa: E402
from medcl.fewshot.baselines import pca_features  # noqa: E402
from medcl.fewshot.embed import cohort_views  # noqa: E402
from medcl.fewshot.radiomics import FAMILIES, N_BINS, radiomics_features, standardise  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medcl"


def demo_cohort(n_subjects: int, spacing: float) -> Path:
    """A simulated demo cohort (real anatomy, simulated pathology), half of it ``test``."""
    root = CACHE / f"bench_radiomics_{n_subjects}"
    if not (root / "cohort" / "manifest.csv").exists():
        src = make_demo_sources(root / "src", n_subjects, seed=0, spacing=spacing)
        ingest([src.nifti_dir], root / "cohort", DataConfig(spacing=spacing), labels_csv=src.labels_csv,
               test_fraction=0.5, split_seed=0, progress=False)
    return root / "cohort"


def pca_baseline(cohort: Cohort, evaluated: Cohort, view_size: int, components: int) -> np.ndarray:
    fit = cohort.select(split="train")
    fit = fit if len(fit) >= 2 else evaluated
    views = torch.stack(cohort_views(evaluated, view_size)).numpy()
    return pca_features(torch.stack(cohort_views(fit, view_size)).numpy(), views, components)


def cv_balanced_accuracy(X: np.ndarray, labels: np.ndarray, subjects: np.ndarray, folds: int = 5,
                         seed: int = 0) -> tuple[float, float]:
    scores = []
    for train, test in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(X, labels, subjects):
        head = LogisticRegression(C=1.0, max_iter=5000).fit(standardise(X[train], X[train]), labels[train])
        scores.append(balanced_accuracy_score(labels[test], head.predict(standardise(X[train], X[test]))))
    return float(np.mean(scores)), float(np.std(scores))


def timed_features(evaluated: Cohort, spacing: float, args) -> tuple[np.ndarray, list[str], dict]:
    images = [evaluated.image(i) for i in range(len(evaluated))]
    masks = [evaluated.mask(i) for i in range(len(evaluated))]
    keys = evaluated.scan_keys.tolist()
    kw = dict(families=args.families, n_bins=args.bins)
    radiomics_features(images[:1], masks[:1], spacing, **kw)            # warm-up: MIRP's lazy imports
    n = min(args.time_scans, len(images))
    t = time.perf_counter()
    radiomics_features(images[:n], masks[:n], spacing, keys=keys[:n], **kw)
    one_core = (time.perf_counter() - t) / n
    t = time.perf_counter()
    X, names = radiomics_features(images, masks, spacing, workers=args.workers, keys=keys, **kw)
    wall = time.perf_counter() - t
    voxels = float(np.mean([m.sum() for m in masks]))
    return X, names, {"s_per_scan_one_process": one_core, "timed_scans": n, "wall_s": wall,
                      "s_per_scan_wall": wall / len(images), "mask_voxels_mean": voxels,
                      "shape": images[0].shape}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cohort", type=Path, help="a cohort folder (default: build a demo cohort)")
    p.add_argument("--subjects", type=int, default=30, help="demo subjects to build without --cohort")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--time-scans", type=int, default=10)
    p.add_argument("--families", nargs="+", default=list(FAMILIES))
    p.add_argument("--bins", type=int, default=N_BINS)
    p.add_argument("--view-size", type=int, default=48)
    p.add_argument("--pca-components", type=int, default=64)
    args = p.parse_args(argv)
    cohort = Cohort.load(args.cohort or demo_cohort(args.subjects, 2.0))
    evaluated = cohort.select(split="test", labelled=True)
    evaluated = evaluated if len(evaluated) else cohort.select(labelled=True)
    spacing = float(evaluated.rows[0]["spacing"])
    print(f"cohort {cohort.root}: {len(evaluated)} labelled evaluation scans at {spacing} mm; "
          f"families {' '.join(args.families)}, {args.bins} bins; load average {os.getloadavg()[0]:.1f}")
    X, names, t = timed_features(evaluated, spacing, args)
    print(f"radiomics: {len(names)} features; scan {'x'.join(map(str, t['shape']))}, mask {t['mask_voxels_mean']:.0f} "
          f"voxels on average; {t['s_per_scan_one_process']:.2f} s/scan in one process ({t['timed_scans']} scans); "
          f"{t['wall_s']:.1f} s for {len(evaluated)} scans with {args.workers} workers = "
          f"{t['s_per_scan_wall']:.2f} s/scan")
    t0 = time.perf_counter()
    P = pca_baseline(cohort, evaluated, args.view_size, args.pca_components)
    print(f"raw voxels: PCA to {P.shape[1]} components in {time.perf_counter() - t0:.1f} s")
    labels, subjects = evaluated.labels, evaluated.subjects
    for name, F in (("radiomics", X), ("raw_voxels_pca", P)):
        mean, sd = cv_balanced_accuracy(F, labels, subjects)
        print(f"  5-fold CV balanced accuracy, logistic regression on {name}: {mean:.3f} (sd over folds {sd:.3f})")
    print(f"  chance: {1 / len(set(labels.tolist())):.3f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
