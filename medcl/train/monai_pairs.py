"""The per-sample pair source (``augment.backend: monai``): each view made on its own with MONAI
transforms (:func:`medcl.augment.make_pair`) in ``DataLoader`` workers, then collated and moved
to the training device. The reference path: the batched source applies the same parameters."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medcl.augment import make_views
from medcl.augment.params import Box, foreground_box
from medcl.config import AugmentConfig
from medcl.data.cohort import Cohort
from medcl.train.pairs import Batch, PairSource, load_scans


class ScanPairs(Dataset):
    """Scan ``i`` -> (view1, view2, label id[, local views]), the views of (seed, epoch, i)
    reproducible; the local views (L, 1, s, s, s) only with ``cfg.local_views > 0``.

    Holds the scans in memory (float16, see :func:`medcl.train.pairs.load_scans`) and each
    scan's foreground box, computed once here (``boxes``: given by a caller that holds them);
    ``epoch`` is set before each epoch's loader starts (its worker processes copy the dataset then).
    """

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], labels: Sequence[int],
                 cfg: AugmentConfig, seed: int = 0, boxes: Sequence[Box] | None = None):
        self.images, self.masks, self.labels = images, masks, list(labels)
        self.boxes = list(boxes) if boxes is not None else [foreground_box(m) for m in masks]
        self.cfg, self.seed, self.epoch = cfg, seed, 0

    @classmethod
    def from_cohort(cls, cohort: Cohort, cfg: AugmentConfig, seed: int = 0) -> "ScanPairs":
        return cls(*load_scans(cohort), cohort.label_ids(), cfg, seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        v1, v2, local, _ = make_views(self.images[i], self.masks[i], rng, self.cfg, self.boxes[i])
        return (v1, v2, self.labels[i]) if local is None else (v1, v2, self.labels[i], local)


class MonaiPairs(PairSource):
    """:class:`ScanPairs` through a ``DataLoader`` with ``num_workers`` worker processes."""

    def __init__(self, dataset: ScanPairs, device: torch.device, num_workers: int = 0):
        self.dataset, self.device, self.num_workers = dataset, torch.device(device), num_workers

    def batches(self, shards: Sequence[Sequence[int]], epoch: int) -> Iterator[Batch]:
        """The loader is made per call: its generator (worker seeds; never the global RNG) is
        seeded from (seed, epoch), so a resumed epoch's loader is the uninterrupted one's."""
        self.dataset.epoch = epoch
        loader = DataLoader(self.dataset, batch_sampler=shards, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(self.dataset.seed * 100_003 + epoch))
        for batch in loader:
            yield tuple(x.to(self.device, non_blocking=True) for x in batch)
