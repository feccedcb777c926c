"""Spread over pretraining seeds: each seed's few-shot numbers (primary head, and the linear
probe) and their mean and sd, as summary.json's ``seeds`` block (``demo.seeds``, docs/fewshot.md)."""

from __future__ import annotations

import dataclasses

import numpy as np

from medcl.config import Config
from medcl.fewshot.suite import FewShotOutput, evaluate_features


def primary_only(cfg: Config, features: dict, labels, subjects) -> FewShotOutput:
    """``features`` scored with the primary head alone (and the probe, when ``fewshot.probe``):
    the same episodes, and so the same numbers for that head, as in the full suite."""
    f = dataclasses.replace(cfg.fewshot, heads=(cfg.fewshot.primary_head,), baselines=(), budget_method="none",
                            embedding_map="none", curve_shots=(), calibration="none", saliency="none")
    return evaluate_features(dataclasses.replace(cfg, fewshot=f), features, labels, subjects)


def seed_entry(cfg: Config, train_seed: int, fs: FewShotOutput) -> dict:
    """One seed's ``seeds.per_seed`` entry: balanced accuracy and its CI per K (primary head) of
    the pretrained and the random-init encoder, and their linear probe when computed."""
    def pick(r: dict) -> dict:
        return {"balanced_accuracy": r["balanced_accuracy"], "ci95": r["ci95"]}

    h = cfg.fewshot.primary_head
    entry: dict = {"train_seed": train_seed}
    for src in ("pretrained", "random_init"):
        entry[src] = {k: pick(r) for k, r in fs.results[src][h].items()}
    probe = {src: pick(fs.ceiling[src]) for src in ("pretrained", "random_init") if src in fs.ceiling}
    if probe:
        entry["probe"] = probe
    return entry


def seeds_block(cfg: Config, per_seed: list[dict]) -> dict:
    """summary.json's ``seeds``: the per-seed entries, and per source and K the mean and sd
    (ddof = 1; None with one seed) of the balanced accuracy over the seeds."""
    mean_sd: dict = {}
    for src in ("pretrained", "random_init"):
        mean_sd[src] = {}
        for k in per_seed[0][src]:
            v = np.array([e[src][k]["balanced_accuracy"] for e in per_seed], dtype=float)
            mean_sd[src][k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None}
    return {"n": len(per_seed), "train_seeds": [e["train_seed"] for e in per_seed], "per_seed": per_seed,
            "mean_sd": mean_sd}
