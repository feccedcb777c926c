"""A batch's view parameters on the training device in one copy.

The device path needs a few small tensors per batch (the sampling grid's coefficients, the
intensity steps' gammas, contrasts, bias coefficients and blur kernels, the rows they apply
to). Copied one by one, each is a host-to-device transfer from pageable memory, which waits
for the host; :func:`to_device` packs them into one contiguous float32 host buffer (pinned
when the device is a GPU), copies it with one ``non_blocking`` transfer, and returns views
of the device buffer in the tensors' shapes. The caching host allocator keeps the pinned
buffer until the copy has run, so the caller never waits.

On a CPU nothing is copied: the tensors come back as they are (float32), the same numbers
the separate copies gave.
"""

from __future__ import annotations

from typing import Sequence

import torch


def to_device(parts: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """``parts`` (host tensors, any shape; cast to float32) on ``device``, in one transfer.

    An integer part (row indices) travels as float32, exact below 2^24; the caller turns it
    back with ``.long()`` on the device.
    """
    device = torch.device(device)
    parts = [p.to(torch.float32) for p in parts]
    return parts if device.type == "cpu" else packed_copy(parts, device)


def packed_copy(parts: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """float32 ``parts`` through one contiguous host buffer (pinned for a GPU), one
    ``non_blocking`` copy to ``device``, and views of the copy in the parts' shapes."""
    device = torch.device(device)
    sizes = [p.numel() for p in parts]
    buf = torch.empty(sum(sizes), dtype=torch.float32, pin_memory=device.type == "cuda")
    if parts:
        torch.cat([p.reshape(-1) for p in parts], out=buf)
    moved = buf.to(device, non_blocking=True)
    return [piece.view(p.shape) for piece, p in zip(moved.split(sizes), parts)]
