"""Helpers shared by several test modules (imported as ``from support import ...``, as
``conftest`` is; no test module imports another)."""

from __future__ import annotations

import numpy as np


def head_volume(shape=(16, 18, 15), blob: tuple | None = None, blob_value: float = 60.0, seed: int | None = None,
                dtype=np.float32) -> np.ndarray:
    """A smooth ellipsoidal 'head' (``clip(1.2 - r, 0) * 100`` on a [-1, 1]^3 grid, ``r`` the
    distance to the centre), plus a bright ``blob_value`` cube so that orientation and flips
    are visible: at ``blob`` (three slices), or with ``seed`` a 3-voxel cube at a random corner
    in [4, 9)^3; none if neither is given. Computed in float64, returned as ``dtype``."""
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    img = np.clip(1.2 - np.sqrt((g ** 2).sum(0)), 0, None) * 100
    if seed is not None:
        x, y, z = np.random.default_rng(seed).integers(4, 9, size=3)
        blob = (slice(x, x + 3), slice(y, y + 3), slice(z, z + 3))
    if blob is not None:
        img[blob] += blob_value
    return img.astype(dtype)
