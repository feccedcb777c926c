"""Where the batched pair source keeps the cohort (``augment.cache``, chosen once by
:func:`choose_placement`):

- ``device``: one fp16 tensor on the GPU (when it fits in a fraction of the free GPU memory);
- ``pinned``: one fp16 tensor in page-locked host memory; a batch's crops are gathered into a
  pinned buffer and reach the GPU in one asynchronous copy;
- ``host``: one fp16 tensor in ordinary host memory (CPU training);
- ``stream``: nothing held; loader workers read each batch's crop regions from the cache's
  ``.npy`` files (memory-mapped: only the bytes of the crops) and the loader prefetches.

fp16 holds the cache's values exactly (ingest writes them as float16) in half the memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import psutil
import torch

from medcl.data.cohort import Cohort

PLACEMENTS = ("device", "pinned", "host", "stream")
GPU_FRACTION = 0.4    # the cache goes on the GPU when it takes at most this much of the free memory
HOST_FRACTION = 0.5   # ... and in host memory when it takes at most this much of the available memory


def available_host_bytes() -> int:
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
