"""Few-shot diagnosis on frozen features: subject-disjoint episodes, heads, metrics, evaluation."""

from medcl.fewshot.episodes import Episode, max_shots, sample_episodes
from medcl.fewshot.evaluate import evaluate_episodes
from medcl.fewshot.heads import HEADS, LinearHead, LogisticHead, PrototypeHead, make_head
from medcl.fewshot.metrics import accuracy, balanced_accuracy, confusion, mean_ci95

__all__ = ["Episode", "sample_episodes", "max_shots", "evaluate_episodes", "HEADS", "PrototypeHead",
           "LogisticHead", "LinearHead", "make_head", "accuracy", "balanced_accuracy", "confusion", "mean_ci95"]
