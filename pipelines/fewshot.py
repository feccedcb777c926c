"""Few-shot pipeline: frozen encoders -> embeddings -> episodic evaluation of every head,
and the deployable diagnosis model (encoder + head fitted on K labelled scans per class)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcl.config import Config
from medcl.data.cohort import Cohort
from medcl.fewshot.embed import embed_cohort
from medcl.fewshot.evaluate import evaluate_episodes
from medcl.fewshot.heads import make_head
from medcl.models import Encoder


def evaluation_cohort(cohort: Cohort) -> Cohort:
    """Labelled scans of the ``test`` split (never seen by pretraining), else all labelled."""
    test = cohort.select(split="test", labelled=True)
    return test if len(test) else cohort.select(labelled=True)


@dataclass
class FewShotOutput:
    results: dict            # encoder name -> head -> shot -> metrics
    features: dict           # encoder name -> (N, D) features of the evaluation cohort
    cohort: Cohort


def evaluate_encoders(cfg: Config, cohort: Cohort, encoders: dict[str, Encoder]) -> FewShotOutput:
    """Every encoder, every head, the same episodes (same seed) for all of them."""
    f = cfg.fewshot
    eval_set = evaluation_cohort(cohort)
    if len(eval_set) == 0:
        raise ValueError(f"{cohort.root}: no labelled scans to evaluate few-shot heads on")
    results: dict = {}
    features: dict = {}
    for name, enc in encoders.items():
        feats = embed_cohort(enc, eval_set, cfg.augment.view_size)
        features[name] = feats
        results[name] = {
            head: evaluate_episodes(feats, eval_set.labels, eval_set.subjects, list(f.shots), head=head,
                                    n_query=f.n_query, n_episodes=f.n_episodes, seed=f.seed)
            for head in f.heads
        }
    return FewShotOutput(results, features, eval_set)


def fit_deployable_head(cfg: Config, encoder: Encoder, cohort: Cohort, k: int):
    """Fit the primary head on ``k`` labelled scans per class, one per subject, drawn by seed
    from the ``train`` split (or from all labelled scans); returns (linear head, scan keys)."""
    pool = cohort.select(split="train", labelled=True)
    pool = pool if len(pool) else cohort.select(labelled=True)
    rng = np.random.default_rng(cfg.fewshot.seed)
    chosen: list[int] = []
    for label in sorted(set(pool.labels.tolist())):
        subjects = sorted({pool.rows[i]["subject_key"] for i in range(len(pool)) if pool.rows[i]["label"] == label})
        picked = rng.choice(subjects, size=min(k, len(subjects)), replace=False)
        for s in picked:
            chosen.append(next(i for i in range(len(pool)) if pool.rows[i]["subject_key"] == s))
    support = Cohort(pool.root, [pool.rows[i] for i in chosen])
    feats = embed_cohort(encoder, support, cfg.augment.view_size)
    head = make_head(cfg.fewshot.primary_head).fit(feats, support.labels)
    return head.to_linear(), support.scan_keys.tolist()


def save_features(out: FewShotOutput, path: Path) -> None:
    np.savez_compressed(path, labels=out.cohort.labels, subjects=out.cohort.subjects,
                        **{f"features_{k}": v for k, v in out.features.items()})
