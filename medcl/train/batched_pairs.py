"""The batched pair source (``augment.backend: batched``): the cohort held once
(:mod:`medcl.train.store`), each batch's views made together on the training device.

One concept runs through this module: **a batch's view parameters**. The source asks for a
batch as a request ``(epoch, scan indices)``; a loader worker answers it with a
:class:`BatchParams` (the indices, each scan's pair of :class:`~medcl.augment.params.ViewParams`
and, when streaming, each scan's crop region); the main process applies it with
:func:`medcl.augment.batched.apply_pairs`. :class:`ParamDrawer` is what a worker runs (request
-> ``BatchParams``); the requests of one call reach a persistent loader through
:class:`_Requests`; the loader is a ``DataLoader`` or, with thread workers, a
:class:`ThreadLoader`.

Workers never hold the cohort. They do the cheap per-scan work: read the mask's bytes
(memory-mapped, or the arrays already in memory, read only), draw the view parameters with
:func:`medcl.augment.params.sample_views` (the pair and any local views; the same generator per ``(seed, epoch, scan)`` as the
MONAI path, so both backends draw the same parameters), and in ``stream`` mode read the crops.

Workers are threads by default (``train.worker_kind: thread``): that work is a few milliseconds
a batch and reading bytes, so a thread does it without a second Python process, and adding
workers adds no memory (a forked worker maps the parent's pages, and every one of them counts in
its resident set). ``process`` runs them as ``DataLoader`` worker processes instead.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medcl.augment.batched import apply_pairs, apply_views
from medcl.augment.params import Box, ViewParams, foreground_box, sample_views, union_box
from medcl.config import AugmentConfig
from medcl.data.cohort import Cohort
from medcl.data.normative import NormativeReference
from medcl.train.pairs import Batch, PairSource
from medcl.train.store import VolumeStore, cache_files, choose_placement, cohort_nbytes

WORKER_KINDS = ("thread", "process")
PREFETCH = 4          # batches of parameters made ahead, per worker

Request = tuple[int, Sequence[int]]   # (epoch, scan indices): one batch asked of a worker


@dataclass
class BatchParams:
    """One batch's view parameters, as a worker returns them: scan indices, their views (the
    pair, then any local views of multi-crop) and, when streaming, the region of each scan that
    holds every crop (and where it starts)."""
    indices: list[int]
    pairs: list[tuple[ViewParams, ...]]
    regions: list[torch.Tensor] | None = None
    origins: list[tuple[int, ...]] | None = None

    def pin_memory(self) -> "BatchParams":   # DataLoader(pin_memory=True) calls this
        if self.regions is not None:
            self.regions = [r.pin_memory() for r in self.regions]
        return self


class _ModelInput:
    """Scan ``i`` of a cohort as the encoder sees it (``Cohort.image``), made only when read."""

    def __init__(self, cohort: Cohort, i: int, shape: tuple[int, ...]):
        self.cohort, self.i, self.shape, self.size = cohort, i, tuple(shape), int(np.prod(shape))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.cohort.image(self.i).astype(dtype or np.float32)


class ParamDrawer(Dataset):
    """Run by loader workers: a :data:`Request` -> :class:`BatchParams`.

    Reads only bytes: the masks (``masks`` given: the parent's arrays, shared by fork and only
    read; else memory-mapped from ``mask_files``) and, when ``image_files`` is given (stream),
    the region of each image that the crops need. Each scan's foreground box is computed once,
    here (``boxes``: given by a caller that holds them), not once per pair. With a normative
    ``reference`` (the cohort's), each streamed region is its deviation map, as ``Cohort.image``.
    """

    def __init__(self, cfg: AugmentConfig, seed: int, masks: Sequence[np.ndarray] | None = None,
                 mask_files: Sequence[Path] | None = None, image_files: Sequence[Path] | None = None,
                 boxes: Sequence[Box] | None = None, reference: NormativeReference | None = None):
        if masks is None and mask_files is None:
            raise ValueError("ParamDrawer: give the masks or their files")
        self.cfg, self.seed, self.reference = cfg, seed, reference
        self.masks, self.mask_files, self.image_files = masks, mask_files, image_files
        n = len(masks) if masks is not None else len(mask_files)
        self.boxes = list(boxes) if boxes is not None else [foreground_box(self.mask(i)) for i in range(n)]

    def mask(self, i: int) -> np.ndarray:
        if self.masks is not None:
            return self.masks[i]
        m = np.load(self.mask_files[i], mmap_mode="r")
        return m.view(bool) if m.dtype == np.uint8 else m.astype(bool)

    def __getitem__(self, request: Request) -> BatchParams:
        epoch, indices = request
        masks = [self.mask(i) for i in indices]
        pairs = [sample_views(np.random.default_rng([self.seed, epoch, i]), m, self.cfg, self.boxes[i])
                 for i, m in zip(indices, masks)]
        out = BatchParams(list(indices), pairs)
        if self.image_files is not None:
            out.regions, out.origins = [], []
            for i, pair, mask in zip(indices, pairs, masks):
                start, size = union_box(pair)
                img = np.load(self.image_files[i], mmap_mode="r")
                region = tuple(slice(s, s + n) for s, n in zip(start, size))
                box = img[region] if self.reference is None else self.reference.apply(img[region], mask[region], region)
                out.regions.append(torch.from_numpy(np.ascontiguousarray(box, dtype=np.float16)))
                out.origins.append(start)
        return out


class _Requests(Sampler):
    """The requests of the current call; replaced before each call, read by a persistent
    loader (its workers stay up across epochs)."""

    def __init__(self):
        self.requests: list[Request] = []

    def __iter__(self):
        return iter(list(self.requests))

    def __len__(self) -> int:
        return len(self.requests)


def _no_collate(params: BatchParams) -> BatchParams:
    return params


class ThreadLoader:
    """The loader with thread workers: a :class:`ParamDrawer` run in a pool of ``workers``
    threads, ``PREFETCH`` batches per worker ahead of the consumer, delivered in order (what a
    ``DataLoader`` with worker processes does, in the same process). The pool lives until
    :meth:`close`, across epochs."""

    def __init__(self, drawer: ParamDrawer, sampler: Iterable[Request], workers: int, pin: bool = False):
        self.drawer, self.sampler, self.pin = drawer, sampler, pin
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medcl-jobs")
        self.ahead = PREFETCH * workers

    def _one(self, request: Request) -> BatchParams:
        out = self.drawer[request]
        return out.pin_memory() if self.pin else out

    def __iter__(self) -> Iterator[BatchParams]:
        todo, pending = iter(self.sampler), deque()
        for request in todo:
            pending.append(self.pool.submit(self._one, request))
            if len(pending) >= self.ahead:
                break
        while pending:
            done = pending.popleft().result()
            for request in todo:
                pending.append(self.pool.submit(self._one, request))
                break
            yield done

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class BatchedPairs(PairSource):
    """Batches of view pairs made on ``device`` from a cohort held once.

    ``history`` holds the :class:`BatchParams` of the last batch (torchio keeps what it applied;
    the report and the tests read it).
    """

    def __init__(self, cfg: AugmentConfig, seed: int, device: torch.device | str, labels: Sequence[int],
                 store: VolumeStore | None, drawer: ParamDrawer, num_workers: int = 0, placement: str = "host",
                 memory_format: torch.memory_format = torch.contiguous_format, worker_kind: str = "thread"):
        if worker_kind not in WORKER_KINDS:
            raise ValueError(f"train.worker_kind: unknown kind '{worker_kind}' (known: {', '.join(WORKER_KINDS)})")
        self.worker_kind = worker_kind
        self.cfg, self.seed, self.device = cfg, seed, torch.device(device)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.store, self.drawer, self.placement = store, drawer, placement
        self.num_workers, self.memory_format = num_workers, memory_format
        self.history: BatchParams | None = None
        self._requests = _Requests()
        self._loader: DataLoader | ThreadLoader | None = None

    @classmethod
    def from_cohort(cls, cohort: Cohort, cfg: AugmentConfig, seed: int = 0, device: torch.device | str = "cpu",
                    num_workers: int = 0, placement: str | None = None, **kw) -> "BatchedPairs":
        """Read the cache files once into the chosen placement (or stream them)."""
        if len(cohort) == 0:
            raise ValueError(f"{cohort.root}: no scans to pretrain on")
        device = torch.device(device)
        images, masks = cache_files(cohort)
        where = choose_placement(placement or cfg.cache, cohort_nbytes(images), device)
        store = None
        if where != "stream":
            arrays = [np.load(f, mmap_mode="r") for f in images]
            if cohort.reference is not None:      # deviation maps, each made as the store copies it
                arrays = [_ModelInput(cohort, i, a.shape) for i, a in enumerate(arrays)]
            store = VolumeStore.from_arrays(arrays, where, device)
        drawer = ParamDrawer(cfg, seed, mask_files=masks, image_files=images if where == "stream" else None,
                             reference=cohort.reference)
        return cls(cfg, seed, device, cohort.label_ids(), store, drawer, num_workers, where, **kw)

    @classmethod
    def from_arrays(cls, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], labels: Sequence[int],
                    cfg: AugmentConfig, seed: int = 0, device: torch.device | str = "cpu", num_workers: int = 0,
                    placement: str | None = None, **kw) -> "BatchedPairs":
        """From scans already in memory (the loop's, :func:`medcl.train.pairs.load_scans`), moved
        into the store: on the host, each array of the list ``images`` becomes its view of the
        store as it is copied, so the cohort is never held twice."""
        device = torch.device(device)
        nbytes = sum(a.size for a in images) * 2
        where = choose_placement(placement or cfg.cache, nbytes, device)
        if where == "stream":  # the scans are in memory already: nothing to stream from
            where = "pinned" if device.type == "cuda" else "host"
        store = VolumeStore.from_arrays(images, where, device, release=isinstance(images, list) and where != "device")
        return cls(cfg, seed, device, labels, store, ParamDrawer(cfg, seed, masks=masks), num_workers, where, **kw)

    def _param_loader(self) -> DataLoader | ThreadLoader:
        if self._loader is None:
            w = self.num_workers
            pin = self.placement == "stream" and self.device.type == "cuda"
            if w > 0 and self.worker_kind == "thread":
                self._loader = ThreadLoader(self.drawer, self._requests, w, pin)
            else:
                self._loader = DataLoader(
                    self.drawer, sampler=self._requests, batch_size=None, collate_fn=_no_collate, num_workers=w,
                    persistent_workers=w > 0, prefetch_factor=PREFETCH if w > 0 else None, pin_memory=pin)
        return self._loader

    def batches(self, shards: Sequence[Sequence[int]], epoch: int) -> Iterator[Batch]:
        self._requests.requests = [(epoch, list(b)) for b in shards]
        s, n_local = self.cfg.view_size, self.cfg.local_views
        for params in self._param_loader():
            if params.regions is not None:
                sources, origins = params.regions, params.origins
            else:
                sources, origins = [self.store.volumes[i] for i in params.indices], None
            v1, v2 = apply_pairs(sources, [p[:2] for p in params.pairs], s, self.device, origins, self.memory_format)
            self.history = params
            y = self.labels[params.indices].to(self.device, non_blocking=True)
            if not n_local:
                yield v1, v2, y
                continue
            local = apply_views(sources, [p[2:] for p in params.pairs], self.cfg.local_size, self.device, origins,
                                self.memory_format)
            yield v1, v2, y, local.unflatten(0, (len(params.pairs), n_local))

    def close(self) -> None:
        """Stop the loader workers (they also stop with the process)."""
        if isinstance(self._loader, ThreadLoader):
            self._loader.close()
        self._loader = None
