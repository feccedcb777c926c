"""What an encoder's features encode on the demo cohort (docs/methods.md, "Where the 5-shot
errors are"): for each encoder, on the ``test`` split of a demo cohort,

* the 5-shot prototype confusion (500 3-way episodes, 5 queries per class, rows = true class),
  which says which classes the few-shot head mixes up;
* the cross-validated R^2 of a ridge regression from the features (centred, L2-normalised,
  first 20 principal components: the geometry of the prototype head) to each parameter the
  simulation drew for the subject: its nuisances (gamma, gain, bias-field amplitude, noise level,
  head scale, warp) and its pathology (lesion contrast, ventricle push, cortical thinning), which
  says how much of each the features carry.

The parameters are drawn again from ``medcl.data.demo``'s per-subject random streams; each scan
is matched to its simulated subject by the SHA-256 of its source file (the cohort stores it).

    python bench/feature_probe.py COHORT DEMO_SRC pretrained=PATH/encoder.pt random=random:0 [--demo-seed 0]

``DEMO_SRC`` is the ``demo_src`` folder of the ``medcl demo`` run that simulated the cohort's
scans; ``random:SEED`` is the random-init encoder of that seed. Prints one table per measure.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_predict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medcl.data.cohort import Cohort  # noqa: E402
from medcl.data.demo import CLASSES, sample_pathology, subject_rngs  # noqa: E402
from medcl.fewshot.embed import embed_cohort  # noqa: E402
from medcl.fewshot.episodes import sample_episodes  # noqa: E402
from medcl.fewshot.heads import PrototypeHead  # noqa: E402
from medcl.fewshot.ops import l2_normalise  # noqa: E402
from medcl.models import build_encoder  # noqa: E402
from medcl.pipelines.pretrain import encoder_meta  # noqa: E402
from medcl.serving.inference import load_encoder  # noqa: E402
from medcl.validate import load_checked  # noqa: E402

PARAMS = ("gamma", "gain", "bias", "noise", "scale", "warp", "lesion", "ventricle", "cortex")


def subject_params(label: str, seed: int, index: int) -> dict[str, float]:
    """The draws of ``simulate_subject`` for subject ``index``, in the order the simulation makes them."""
    g = subject_rngs(seed, index)
    p = sample_pathology(label, g["pathology"])
    gamma, gain = g["contrast"].uniform(0.75, 1.35), g["contrast"].uniform(700.0, 1400.0)
    d = g["deform"]
    scale = d.uniform(0.94, 1.06)
    d.uniform(-6.0, 6.0, size=3), d.uniform(-6.0, 6.0, size=3)      # rotation, shift
    return {"gamma": gamma, "gain": gain, "bias": g["bias"].uniform(0.05, 0.25),
            "noise": g["noise"].uniform(0.01, 0.04), "scale": scale, "warp": d.uniform(1.0, 3.0),
            "lesion": p.lesion_contrast, "ventricle": p.ventricle_mm, "cortex": p.cortex_thinning}


def source_index(demo_src: Path) -> dict[str, int]:
    """SHA-256 of each simulated source file -> its subject index (``sub-demoNNNN`` is index NNNN - 1)."""
    out = {}
    for f in sorted((demo_src / "nifti").glob("sub-demo*.nii*")):
        out[hashlib.sha256(f.read_bytes()).hexdigest()] = int(f.name[8:12]) - 1
    return out


def r2_table(features: np.ndarray, targets: np.ndarray) -> list[float]:
    Z = l2_normalise(features - features.mean(0))
    Z = PCA(min(20, len(Z) - 1), random_state=0).fit_transform(Z)
    out = []
    for y in targets.T:
        pred = cross_val_predict(RidgeCV(alphas=np.logspace(-3, 3, 13)), Z, y, cv=5)
        out.append(1.0 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()))
    return out


def confusion(features: np.ndarray, labels: np.ndarray, subjects: np.ndarray, n_episodes: int) -> np.ndarray:
    """Row-normalised 5-shot confusion over ``n_episodes`` prototype episodes (medcl's head and sampler)."""
    counts = np.zeros((len(CLASSES), len(CLASSES)))
    for ep in sample_episodes(labels, subjects, 5, 5, n_episodes, seed=0):
        head = PrototypeHead().fit(features[ep.support], labels[ep.support])
        for t, p in zip(labels[ep.query], head.predict(features[ep.query])):
            counts[CLASSES.index(t), CLASSES.index(p)] += 1
    return counts / counts.sum(1, keepdims=True)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cohort", type=Path)
    ap.add_argument("demo_src", type=Path)
    ap.add_argument("encoders", nargs="+", help="TAG=PATH/encoder.pt or TAG=random:SEED")
    ap.add_argument("--demo-seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=500)
    a = ap.parse_args(argv)
    cfg = load_checked(ROOT / "configs" / "demo.yaml", [])
    test = Cohort.load(a.cohort).select(split="test")
    index = source_index(a.demo_src)
    rows = test.rows
    labels = np.array([r["label"] for r in rows])
    subjects = np.array([r["subject_key"] for r in rows])
    targets = np.array([[subject_params(r["label"], a.demo_seed, index[r["source_sha256"]])[k] for k in PARAMS]
                        for r in rows])
    m = cfg.model
    tables = {}
    for spec in a.encoders:
        tag, where = spec.split("=", 1)
        enc = build_encoder(m.arch, m.conv1_t_stride, m.widen_factor, seed=int(where[7:])).eval() \
            if where.startswith("random:") else load_encoder(where, encoder_meta(cfg))
        X = embed_cohort(enc, test, cfg.augment.view_size)
        tables[tag] = (r2_table(X, targets), confusion(X, labels, subjects, a.episodes))
    print("R^2 of the simulated parameter from the features (5-fold ridge on 20 PCs of CL2N features)")
    print("| parameter | " + " | ".join(tables) + " |\n|---|" + "---|" * len(tables))
    for j, k in enumerate(PARAMS):
        print(f"| {k} | " + " | ".join(f"{t[0][j]:.2f}" for t in tables.values()) + " |")
    print(f"\n5-shot prototype confusion ({a.episodes} episodes; row = true class, fraction of its queries)")
    for tag, (_, cm) in tables.items():
        print(f"{tag}: " + "; ".join(f"{c} -> " + ", ".join(f"{CLASSES[j]} {cm[i, j]:.2f}" for j in range(len(CLASSES)))
                                     for i, c in enumerate(CLASSES)))


if __name__ == "__main__":
    main(sys.argv[1:])
