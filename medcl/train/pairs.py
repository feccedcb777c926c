"""Where the loop's batches of view pairs come from: one interface, :class:`PairSource`.

The loop decides *which* scans make each batch (:func:`epoch_batches`: the order of an epoch,
the same on every rank), which part of it this rank takes and where a resumed epoch starts; a
pair source only turns those batches of scan indices into ``(view1, view2, labels)`` on the
training device. Two implementations, chosen once from ``augment.backend`` by
:func:`medcl.train.data.make_pair_source`:

- :class:`medcl.train.monai_pairs.MonaiPairs` (``monai``): each view made on its own with MONAI
  transforms in ``DataLoader`` workers;
- :class:`medcl.train.batched_pairs.BatchedPairs` (``batched``): the cohort held once, each
  batch's views made together on the training device.

Both draw the views of scan ``i`` in epoch ``e`` from ``numpy.random.default_rng([seed, e, i])``
(:func:`medcl.augment.params.sample_views`: the pair, then any local views), so a view depends on (seed, epoch, scan) only: not on
the backend, the number of workers, the number of ranks, or where a run was resumed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, Sequence

import numpy as np
import torch

from medcl.data.cohort import Cohort

Batch = tuple[torch.Tensor, ...]   # (view1, view2, label ids[, local views]), on the device


class PairSource(ABC):
    """Batches of view pairs for the given batches of scan indices (see the module docstring)."""

    @abstractmethod
    def batches(self, shards: Sequence[Sequence[int]], epoch: int) -> Iterator[Batch]:
        """One ``(view1, view2, labels)`` per entry of ``shards`` (scan indices), in that order:
        views (B, 1, S, S, S) float32 and label ids (B,) int64 (-1: unlabelled) on the device;
        with multi-crop (``augment.local_views`` = L > 0) a fourth entry, the local views
        (B, L, 1, s, s, s) at ``augment.local_size``."""

    def close(self) -> None:
        """Stop the loader workers (they also stop with the process)."""


def epoch_batches(n: int, global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of ``epoch``: a permutation of ``range(n)`` that depends only on
    (seed, epoch), cut into ``n // global_batch`` batches (the remainder is dropped)."""
    order = np.random.default_rng([seed, 0x5EED, epoch]).permutation(n).tolist()
    return [order[k * global_batch:(k + 1) * global_batch] for k in range(n // global_batch)]


def rank_shards(batches: Sequence[Sequence[int]], rank: int, world: int) -> list[list[int]]:
    """This rank's part of each global batch: equal consecutive shards in rank order, so the
    batch gathered over the ranks is the global batch, in the same order as on one process."""
    per_rank = len(batches[0]) // world if batches else 0
    return [list(b[rank * per_rank:(rank + 1) * per_rank]) for b in batches]


def load_scans(cohort: Cohort) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(images as float16, masks as bool) of every scan, read into memory in the cohort's order.

    float16 halves the memory of the cache's float32 view; both sources convert from it, and
    loader processes share these arrays through fork's copy-on-write instead of holding copies.
    """
    if len(cohort) == 0:
        raise ValueError(f"{cohort.root}: no scans to pretrain on")
    images = [cohort.image(i).astype(np.float16) for i in range(len(cohort))]
    masks = [cohort.mask(i) for i in range(len(cohort))]
    return images, masks
