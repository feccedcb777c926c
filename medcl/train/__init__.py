"""Pretraining: the loop, schedules and checkpoints."""

from medcl.train.loop import PairDataset, PretrainResult, pretrain, warmup_cosine

__all__ = ["PairDataset", "PretrainResult", "pretrain", "warmup_cosine"]
