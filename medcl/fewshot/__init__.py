"""Few-shot diagnosis on frozen features: subject-disjoint episodes, heads (vectorised over
episodes), metrics with subject-bootstrap intervals, baselines, and label-budget advice."""

from medcl.fewshot.episodes import Episode, EpisodeBatch, max_shots, sample_episode_batch, sample_episodes
from medcl.fewshot.evaluate import EvalSpec, evaluate_episodes, run_heads
from medcl.fewshot.heads import HEADS, HeadSpec, KNNHead, LinearHead, LogisticHead, PrototypeHead, make_head
from medcl.fewshot.metrics import (accuracy, balanced_accuracy, brier_score, confusion, expected_calibration_error,
                                   macro_f1, mean_ci95, roc_auc_ovr, sensitivity_specificity)
from medcl.fewshot.stats import EpisodePredictions, paired_difference, summarise

__all__ = ["Episode", "EpisodeBatch", "sample_episodes", "sample_episode_batch", "max_shots", "evaluate_episodes",
           "EvalSpec", "run_heads", "HEADS", "HeadSpec", "PrototypeHead", "LogisticHead", "KNNHead", "LinearHead", "make_head",
           "accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "expected_calibration_error", "brier_score",
           "sensitivity_specificity", "confusion", "mean_ci95", "EpisodePredictions", "summarise", "paired_difference"]
