"""Few-shot bench: N-way K-shot prototype episodes on cached embeddings, medcl's vectorised
head against a per-episode scikit-learn ``NearestCentroid`` loop, on the same episodes.

    .venv/bin/python bench/fewshot.py                       # 10,000 5-way 5-shot episodes
    .venv/bin/python bench/fewshot.py --features out/x/features.npz --key features_pretrained

The embedding cache is a ``features.npz`` as ``medcl fewshot`` and the demo write it (arrays
``labels``, ``subjects``, ``features_<source>``). The demo cohort has 3 classes, too few for
5-way episodes, so by default the bench writes (once) a cache of the same format with 10
classes x 60 subjects x 1-3 scans of 256-dim features (overlapping Gaussian class clusters, so
that the heads make mistakes) to ``~/.cache/medcl/``, then loads it. Both methods get the same :class:`~medcl.fewshot.episodes.EpisodeBatch` (sampled once,
timed separately); medcl is timed ``--repeat`` times (best kept), the loops once. The predictions of the two
must be identical (Euclidean prototypes are exactly nearest centroids), else exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.neighbors import NearestCentroid  # noqa: E402

from medcl.fewshot.episodes import sample_episode_batch  # noqa: E402
from medcl.fewshot.heads import HEADS  # noqa: E402

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medcl" / "bench_fewshot_features_v2.npz"


def write_cache(path: Path, n_classes=10, n_subjects=60, dim=256, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 0.2    # overlapping classes: the heads make mistakes
    labels, subjects, feats = [], [], []
    for c in range(n_classes):
        for s in range(n_subjects):
            subject_offset = rng.normal(size=dim) * 0.5
            for _ in range(int(rng.integers(1, 4))):
                labels.append(f"class{c:02d}")
                subjects.append(f"c{c:02d}s{s:03d}")
                feats.append(np.maximum(centres[c] + subject_offset + rng.normal(size=dim) * 0.8 + 1.0, 0))  # post-ReLU-like
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, labels=np.array(labels), subjects=np.array(subjects),
                            features_synthetic=np.array(feats, dtype=np.float32))
    return path


def best_of(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=Path, help="features.npz (default: a synthetic 10-class cache)")
    ap.add_argument("--key", help="array in the .npz (default: the first features_*)")
    ap.add_argument("--episodes", type=int, default=10_000)
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--shot", type=int, default=5)
    ap.add_argument("--query", type=int, default=15, help="query subjects per class")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    path = args.features or (DEFAULT_CACHE if DEFAULT_CACHE.exists() else write_cache(DEFAULT_CACHE))
    with np.load(path, allow_pickle=False) as z:
        key = args.key or next(k for k in z.files if k.startswith("features_"))
        X, labels, subjects = z[key].astype(np.float64), z["labels"], z["subjects"]
    print(f"cache {path} [{key}]: {X.shape[0]} scans, {len(np.unique(subjects))} subjects, "
          f"{len(np.unique(labels))} classes, {X.shape[1]} dims")

    t_sample, batch = best_of(lambda: sample_episode_batch(labels, subjects, args.shot, args.query, args.episodes,
                                                          args.seed, n_way=args.way), 1)
    q = batch.query
    print(f"{batch.n_episodes} episodes, {args.way}-way {args.shot}-shot, {int((q >= 0).sum(1).mean())} queries each "
          f"(sampled in {t_sample:.2f} s, shared by both methods)")

    def medcl_euclidean():
        proba = HEADS["prototype_euclidean"].predict_episodes(X, batch, centre=False)   # what evaluation runs
        return batch.class_names[proba.argmax(-1)]

    def per_episode(make_head):
        """Predictions of a head fitted on each episode's support in turn."""
        out = np.empty(q.shape, dtype=batch.class_names.dtype)
        for e in range(batch.n_episodes):
            s, qq = batch.support[e], q[e][q[e] >= 0]
            out[e, : len(qq)] = make_head().fit(X[s], labels[s]).predict(X[qq])
        return out

    def sklearn_loop():
        return per_episode(NearestCentroid)

    def medcl_cosine():
        return batch.class_names[HEADS["prototype"].predict_episodes(X, batch).argmax(-1)]

    def numpy_loop_cosine():
        return per_episode(HEADS["prototype"].make)

    mask = q >= 0
    t_m, p_m = best_of(medcl_euclidean, args.repeat)
    t_s, p_s = best_of(sklearn_loop, 1)              # minutes: once is enough
    same = int((p_m[mask] == p_s[mask]).sum())
    t_mc, p_mc = best_of(medcl_cosine, args.repeat)
    t_lc, p_lc = best_of(numpy_loop_cosine, 1)
    same_c = int((p_mc[mask] == p_lc[mask]).sum())
    acc = float(np.mean(p_m[mask] == labels[q[mask]]))
    n = int(mask.sum())
    rows = [("medcl prototype (Euclidean), all episodes at once", t_m), ("sklearn NearestCentroid, loop over episodes", t_s),
            ("medcl prototype (cosine, CL2N), all episodes at once", t_mc), ("medcl PrototypeHead (cosine), loop", t_lc)]
    print(f"\n{'method':<56}{'seconds':>9}{'episodes/s':>12}")
    for name, t in rows:
        print(f"{name:<56}{t:>9.3f}{batch.n_episodes / t:>12,.0f}")
    speedup = t_s / t_m
    print(f"\nspeed-up (sklearn loop / medcl, Euclidean): {speedup:.1f}x")
    print(f"identical predictions: {same}/{n} (Euclidean vs NearestCentroid), {same_c}/{n} (cosine, batched vs loop)")
    print(f"query accuracy: {acc:.3f}   machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"episodes": batch.n_episodes, "way": args.way, "shot": args.shot,
                                         "queries": n, "medcl_s": t_m, "sklearn_s": t_s, "speedup": speedup,
                                         "identical": same == n, "medcl_cosine_s": t_mc, "loop_cosine_s": t_lc,
                                         "identical_cosine": same_c == n}, indent=2))
    ok = same == n and same_c == n
    if not ok:
        print("FAIL: predictions differ", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
