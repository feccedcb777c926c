"""The batched data path (``augment.backend: batched``): the cohort held once, views made on
the training device a whole batch at a time.

Where the cohort lives (``augment.cache``, chosen once, see :func:`choose_placement`):

- ``device``: one fp16 tensor on the GPU (when it fits in a fraction of the free GPU memory);
- ``pinned``: one fp16 tensor in page-locked host memory; a batch's crops are gathered into a
  pinned buffer and reach the GPU in one asynchronous copy;
- ``host``: one fp16 tensor in ordinary host memory (CPU training);
- ``stream``: nothing held; loader workers read each batch's crop regions from the cache's
  ``.npy`` files (memory-mapped: only the bytes of the crops) and the DataLoader prefetches.

Loader workers never hold the cohort. They do the cheap per-scan work: read the mask's bytes
(memory-mapped, or the arrays already in memory, read only), draw the view parameters with
:func:`medcl.augment.params.sample_pair` (the same generator per ``(seed, epoch, scan)`` as the
MONAI path, so both backends draw the same parameters), and in ``stream`` mode read the crops.
The main process turns a batch of parameters into views with
:func:`medcl.augment.batched.apply_pairs` on the training device.

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

from medcl.augment.batched import apply_pairs
from medcl.augment.params import ViewParams, sample_pair
from medcl.config import AugmentConfig
from medcl.data.cohort import Cohort

PLACEMENTS = ("device", "pinned", "host", "stream")
WORKER_KINDS = ("thread", "process")
PREFETCH = 4          # batches of parameters made ahead, per worker
GPU_FRACTION = 0.4    # the cache goes on the GPU when it takes at most this much of the free memory
HOST_FRACTION = 0.5   # ... and in host memory when it takes at most this much of the available memory


def available_host_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def choose_placement(requested: str, nbytes: int, device: torch.device) -> str:
    """``augment.cache`` -> where the cohort goes. ``auto``: on the GPU when it fits there, else
    pinned host memory when it fits there, else streamed; without CUDA: host, else streamed.
    ``device`` and ``pinned`` need CUDA; asked for on a CPU they fall back to ``host``."""
    if requested not in ("auto",) + PLACEMENTS:
        raise ValueError(f"augment.cache: unknown placement '{requested}' (known: auto, {', '.join(PLACEMENTS)})")
    cuda = device.type == "cuda"
    if requested in ("device", "pinned") and not cuda:
        return "host"
    if requested != "auto":
        return requested
    if cuda:
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= GPU_FRACTION * free:
            return "device"
        return "pinned" if nbytes <= HOST_FRACTION * available_host_bytes() else "stream"
    return "host" if nbytes <= HOST_FRACTION * available_host_bytes() else "stream"


class VolumeStore:
    """Scans as 3-D fp16 views into one flat tensor (on the GPU, pinned, or in host memory)."""

    def __init__(self, flat: torch.Tensor, shapes: Sequence[tuple[int, int, int]]):
        self.flat = flat
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        self.offsets = np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in self.shapes])]).tolist()
        self.volumes = [flat[a:b].view(s) for a, b, s in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], placement: str, device: torch.device,
                    release: bool = False) -> "VolumeStore":
        """Copy ``arrays`` (any float dtype; fp16 keeps them exact) into one fp16 store.

        ``release`` (a list in host memory going to a host placement): each ``arrays[i]`` is
        replaced by its view of the store as soon as it is copied, so that the old array can be
        freed at once and the cohort is never held twice, not even while the store is built."""
        shapes = [a.shape for a in arrays]
        total = sum(int(np.prod(s)) for s in shapes)
        if placement == "device":
            flat = torch.empty(total, dtype=torch.float16, device=device)
        else:
            flat = torch.empty(total, dtype=torch.float16, pin_memory=placement == "pinned")
        at = 0
        for i, a in enumerate(arrays):
            n = a.size
            if flat.device.type == "cpu":     # straight from the (memory-mapped) array into the store
                flat[at:at + n].numpy()[:] = np.asarray(a, dtype=np.float16).reshape(-1)
                if release:
                    arrays[i] = flat[at:at + n].numpy().reshape(a.shape)
            else:
                flat[at:at + n].copy_(torch.from_numpy(np.array(a, dtype=np.float16).reshape(-1)))
            at += n
            del a
        return cls(flat, shapes)


def cache_files(cohort: Cohort) -> tuple[list[Path], list[Path]]:
    """(image files, mask files) of the cohort cache, in the cohort's order."""
    arrays = Path(cohort.root) / "arrays"
    keys = [r["scan_key"] for r in cohort.rows]
    return [arrays / f"{k}.npy" for k in keys], [arrays / f"{k}.mask.npy" for k in keys]


def cohort_nbytes(image_files: Sequence[Path]) -> int:
    """fp16 bytes of the cohort's images, from the ``.npy`` headers (nothing is read)."""
    return sum(int(np.prod(np.load(f, mmap_mode="r").shape)) * 2 for f in image_files)


def union_box(pair: Sequence[ViewParams]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(start, size) of the smallest box that holds the crops of all views in ``pair``."""
    start = tuple(min(p.crop_start[a] for p in pair) for a in range(3))
    end = tuple(max(p.crop_start[a] + p.crop_size[a] for p in pair) for a in range(3))
    return start, tuple(e - s for s, e in zip(start, end))


@dataclass
class Job:
    """What a loader worker returns for one batch: scan indices, their view pairs and, when
    streaming, the region of each scan that holds both crops (and where it starts)."""
    indices: list[int]
    pairs: list[tuple[ViewParams, ViewParams]]
    regions: list[torch.Tensor] | None = None
    origins: list[tuple[int, ...]] | None = None

    def pin_memory(self) -> "Job":   # DataLoader(pin_memory=True) calls this
        if self.regions is not None:
            self.regions = [r.pin_memory() for r in self.regions]
        return self


class PairJobs(Dataset):
    """Run by loader workers: one batch ``(epoch, indices)`` -> :class:`Job`.

    Reads only bytes: the masks (``masks`` given: the parent's arrays, shared by fork and only
    read; else memory-mapped from ``mask_files``) and, when ``image_files`` is given (stream),
    the region of each image that the two crops need.
    """

    def __init__(self, cfg: AugmentConfig, seed: int, masks: Sequence[np.ndarray] | None = None,
                 mask_files: Sequence[Path] | None = None, image_files: Sequence[Path] | None = None):
        if masks is None and mask_files is None:
            raise ValueError("PairJobs: give the masks or their files")
        self.cfg, self.seed = cfg, seed
        self.masks, self.mask_files, self.image_files = masks, mask_files, image_files

    def mask(self, i: int) -> np.ndarray:
        if self.masks is not None:
            return self.masks[i]
        m = np.load(self.mask_files[i], mmap_mode="r")
        return m.view(bool) if m.dtype == np.uint8 else m.astype(bool)

    def __getitem__(self, job: tuple[int, Sequence[int]]) -> Job:
        epoch, indices = job
        pairs = [sample_pair(np.random.default_rng([self.seed, epoch, i]), self.mask(i), self.cfg) for i in indices]
        out = Job(list(indices), pairs)
        if self.image_files is not None:
            out.regions, out.origins = [], []
            for i, pair in zip(indices, pairs):
                start, size = union_box(pair)
                img = np.load(self.image_files[i], mmap_mode="r")
                box = img[tuple(slice(s, s + n) for s, n in zip(start, size))]
                out.regions.append(torch.from_numpy(np.ascontiguousarray(box, dtype=np.float16)))
                out.origins.append(start)
        return out


class _JobList(Sampler):
    """The batches of the current call, as ``(epoch, indices)``; set before each epoch, read by a
    persistent DataLoader (the workers stay up across epochs)."""

    def __init__(self):
        self.jobs: list[tuple[int, list[int]]] = []

    def __iter__(self):
        return iter(list(self.jobs))

    def __len__(self) -> int:
        return len(self.jobs)


def _no_collate(job: Job) -> Job:
    return job


class ThreadJobs:
    """The job loader with thread workers: ``PairJobs`` run in a pool of ``workers`` threads,
    ``PREFETCH`` batches per worker ahead of the consumer, delivered in order (what a
    ``DataLoader`` with worker processes does, in the same process). The pool lives until
    :meth:`close`, across epochs."""

    def __init__(self, jobs: PairJobs, sampler: Iterable, workers: int, pin: bool = False):
        self.jobs, self.sampler, self.pin = jobs, sampler, pin
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medcl-jobs")
        self.ahead = PREFETCH * workers

    def _one(self, job) -> Job:
        out = self.jobs[job]
        return out.pin_memory() if self.pin else out

    def __iter__(self) -> Iterator[Job]:
        todo, pending = iter(self.sampler), deque()
        for job in todo:
            pending.append(self.pool.submit(self._one, job))
            if len(pending) >= self.ahead:
                break
        while pending:
            done = pending.popleft().result()
            for job in todo:
                pending.append(self.pool.submit(self._one, job))
                break
            yield done

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class BatchedPairs:
    """Batches of view pairs made on ``device`` from a cohort held once.

    ``batches(shards, epoch)`` yields ``(view1, view2, labels)`` for the given batches of scan
    indices (the loop decides the order, the sharding over ranks and where to resume).
    ``history`` holds the indices and view parameters of the last batch (torchio keeps what it
    applied; the report and the tests read it).
    """

    def __init__(self, cfg: AugmentConfig, seed: int, device: torch.device | str, labels: Sequence[int],
                 store: VolumeStore | None, jobs: PairJobs, num_workers: int = 0, placement: str = "host",
                 memory_format: torch.memory_format = torch.contiguous_format, worker_kind: str = "thread"):
        if worker_kind not in WORKER_KINDS:
            raise ValueError(f"train.worker_kind: unknown kind '{worker_kind}' (known: {', '.join(WORKER_KINDS)})")
        self.worker_kind = worker_kind
        self.cfg, self.seed, self.device = cfg, seed, torch.device(device)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.store, self.jobs, self.placement = store, jobs, placement
        self.num_workers, self.memory_format = num_workers, memory_format
        self.history: Job | None = None
        self._sampler = _JobList()
        self._loader: DataLoader | ThreadJobs | None = None

    # ----------------------------------------------------------------- construction

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
            store = VolumeStore.from_arrays([np.load(f, mmap_mode="r") for f in images], where, device)
        jobs = PairJobs(cfg, seed, mask_files=masks, image_files=images if where == "stream" else None)
        names = sorted({r["label"] for r in cohort.rows if r["label"]})
        labels = [names.index(r["label"]) if r["label"] else -1 for r in cohort.rows]
        return cls(cfg, seed, device, labels, store, jobs, num_workers, where, **kw)

    @classmethod
    def from_arrays(cls, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], labels: Sequence[int],
                    cfg: AugmentConfig, seed: int = 0, device: torch.device | str = "cpu", num_workers: int = 0,
                    placement: str | None = None, **kw) -> "BatchedPairs":
        """From scans already in memory (the loop's ``PairDataset``), moved into the store: on the
        host, each array of the list ``images`` becomes its view of the store as it is copied."""
        device = torch.device(device)
        nbytes = sum(a.size for a in images) * 2
        where = choose_placement(placement or cfg.cache, nbytes, device)
        if where == "stream":  # the scans are in memory already: nothing to stream from
            where = "pinned" if device.type == "cuda" else "host"
        store = VolumeStore.from_arrays(images, where, device, release=isinstance(images, list) and where != "device")
        return cls(cfg, seed, device, labels, store, PairJobs(cfg, seed, masks=masks), num_workers, where, **kw)

    # ----------------------------------------------------------------- iteration

    def _job_loader(self) -> DataLoader | ThreadJobs:
        if self._loader is None:
            w = self.num_workers
            pin = self.placement == "stream" and self.device.type == "cuda"
            if w > 0 and self.worker_kind == "thread":
                self._loader = ThreadJobs(self.jobs, self._sampler, w, pin)
            else:
                self._loader = DataLoader(
                    self.jobs, sampler=self._sampler, batch_size=None, collate_fn=_no_collate, num_workers=w,
                    persistent_workers=w > 0, prefetch_factor=PREFETCH if w > 0 else None, pin_memory=pin)
        return self._loader

    def batches(self, shards: Sequence[Sequence[int]], epoch: int
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        self._sampler.jobs = [(epoch, list(b)) for b in shards]
        s = self.cfg.view_size
        for job in self._job_loader():
            if job.regions is not None:
                sources, origins = job.regions, job.origins
            else:
                sources, origins = [self.store.volumes[i] for i in job.indices], None
            v1, v2 = apply_pairs(sources, job.pairs, s, self.device, origins, self.memory_format)
            self.history = job
            yield v1, v2, self.labels[job.indices].to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the loader workers (they also stop with the process)."""
        if isinstance(self._loader, ThreadJobs):
            self._loader.close()
        self._loader = None


def epoch_shards(n: int, batch: int, seed: int, epoch: int) -> list[list[int]]:
    """A permutation of ``range(n)`` from ``(seed, epoch)`` cut into ``n // batch`` batches
    (for benchmarks and tests; the loop has its own order, ``loop.epoch_batches``)."""
    order = np.random.default_rng([seed, 0x5EED, epoch]).permutation(n).tolist()
    return [order[k * batch:(k + 1) * batch] for k in range(n // batch)]


def batched_batches(dataset, shards: Sequence[Sequence[int]], epoch: int, num_workers: int,
                    device: torch.device, worker_kind: str = "thread"
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The loop's hook: batches of the loop's ``PairDataset`` made by the batched backend.

    The store is built once, on first use, from the dataset's fp16 arrays and kept on the
    dataset; when it is in host memory the dataset's arrays become views of it as they are
    copied, so the cohort is held once (on a GPU: once in host memory, once on the GPU).
    """
    pairs: BatchedPairs | None = getattr(dataset, "_batched_pairs", None)
    if pairs is None:
        pairs = BatchedPairs.from_arrays(dataset.images, dataset.masks, dataset.labels, dataset.cfg, dataset.seed,
                                         device, num_workers, worker_kind=worker_kind)
        dataset._batched_pairs = pairs
    yield from pairs.batches(shards, epoch)
