"""The loop's data path, chosen once: ``augment.backend`` -> a :class:`~medcl.train.pairs.PairSource`.

| module | what |
|---|---|
| :mod:`medcl.train.pairs` | the interface, the order of an epoch (:func:`~medcl.train.pairs.epoch_batches`), the sharding over ranks |
| :mod:`medcl.train.monai_pairs` | ``monai``: MONAI transforms per view in ``DataLoader`` workers |
| :mod:`medcl.train.batched_pairs` | ``batched``: the cohort held once, a batch's views made together on the device |
| :mod:`medcl.train.store` | where the batched source holds the cohort (``augment.cache``) |
"""

from __future__ import annotations

import torch

from medcl.config import Config
from medcl.data.cohort import Cohort
from medcl.train.batched_pairs import BatchedPairs
from medcl.train.monai_pairs import MonaiPairs, ScanPairs
from medcl.train.pairs import PairSource, load_scans


BACKENDS = ("batched", "monai")   # augment.backend: how views are made (docs/performance.md)


def make_pair_source(cohort: Cohort, cfg: Config, device: torch.device,
                     memory_format: torch.memory_format = torch.contiguous_format) -> PairSource:
    """The pair source of ``cfg.augment.backend`` over ``cohort``, its views seeded by
    ``train.seed``, its loader workers ``train.num_workers`` (of ``train.worker_kind``); the
    batched source makes its views in ``memory_format`` (the loop's, :mod:`medcl.train.speed`).

    Both read the scans into memory first (:func:`~medcl.train.pairs.load_scans`); the batched
    source then moves them into its store, so the cohort is held once (on a GPU: once in host
    memory and once on the device).
    """
    a, t = cfg.augment, cfg.train
    images, masks = load_scans(cohort)
    if a.backend == "batched":
        return BatchedPairs.from_arrays(images, masks, cohort.label_ids(), a, t.seed, device, t.num_workers,
                                        worker_kind=t.worker_kind, memory_format=memory_format)
    return MonaiPairs(ScanPairs(images, masks, cohort.label_ids(), a, t.seed), device, t.num_workers)
