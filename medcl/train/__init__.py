"""Pretraining: the loop, optimisers and schedules, checkpoints and resume, health metrics.

| module | what |
|---|---|
| ``loop`` | :func:`pretrain`: the epochs, on one process or under torchrun |
| ``step`` | :func:`~medcl.train.step.train_step`: one optimiser step |
| ``state`` | :class:`TrainState`: what training changes, saved and restored as the checkpoint |
| ``callbacks`` | logging and progress, collapse warning, kNN probe, checkpoint cadence, crash-test hook |
| ``checkpoint`` | checkpoint files: atomic writes, reads that unpickle no code, resumable configs |
| ``pairs``, ``data``, ``monai_pairs``, ``batched_pairs``, ``store`` | where the batches of view pairs come from |
| ``optim`` | AdamW, SGD, LARS; warmup + cosine; batch-scaled learning rate |
| ``health`` | collapse metrics and the online kNN probe |
| ``speed`` | GPU speed settings of the loop and bench/train_step.py; FLOPs; the batch that fits |

Collectives (DDP) are :mod:`medcl.dist`, below the methods that use them.
"""

from medcl.train.loop import PretrainResult, pretrain
from medcl.train.optim import warmup_cosine
from medcl.train.state import TrainState

__all__ = ["PretrainResult", "TrainState", "pretrain", "warmup_cosine"]
