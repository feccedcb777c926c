"""The one exception of the data path, and the memory guard every reader applies before it
allocates a volume."""

from __future__ import annotations

import math


class IngestError(Exception):
    """A scan that cannot be ingested; ``str(exc)`` is the one-line reason.

    A reason names what is wrong and never quotes a header value that could identify a
    patient (names, IDs, dates, UIDs): it is written to ``quarantine.csv`` and printed.
    """


def check_size(shape: tuple[int, ...], max_voxels: int) -> None:
    """Refuse a volume of ``shape`` before it is read when it exceeds ``max_voxels``."""
    n = math.prod(int(s) for s in shape)
    if n > max_voxels:
        size = n * 4
        text = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
        raise IngestError(f"volume too large: {tuple(int(s) for s in shape)} needs ~{text} as float32 "
                          f"(limit data.max_voxels={max_voxels})")
