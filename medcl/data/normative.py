"""Normative deviation maps: each voxel of a registered scan as a robust z-score against the
same voxel of an unlabelled reference pool (``data.normative: pool``, docs/data.md).

Scans registered to the MNI template and masked with its brain (``data.register`` +
``data.brain_mask: template``) share one grid, so voxel ``v`` is the same anatomical place in
every scan. The reference holds, per voxel, the median of the pool's intensities and their
scaled median absolute deviation (1.4826 * MAD: the standard deviation for normal data, and
robust to the patients a hospital's unlabelled pool also holds). A scan's model input is then

    z = clip((x - median) / max(scale, floor), -CLIP, CLIP)   inside its brain mask, 0 outside

where ``floor`` is half the median scale inside the brain (voxels where the pool hardly varies,
e.g. at the mask's edge, do not blow up). Shared anatomy is subtracted; what is left is what
makes this scan differ from the pool: a focal lesion, enlarged ventricles, thin cortex, and the
nuisances (contrast, bias) that the pretraining views teach the encoder to ignore. This is the
voxel-wise normative comparison of neuroimaging (e.g. Marquand et al. 2016, normative modelling
of clinical cohorts), applied before the encoder.

One function makes the model input everywhere: :meth:`NormativeReference.apply`, called by
:meth:`medcl.data.cohort.Cohort.image` (pretraining, evaluation, the report), by the streaming
pair source on each crop region, and by every prediction (:mod:`medcl.serving.inference`).

Example::

    >>> rng = np.random.default_rng(0)
    >>> pool = [rng.normal(1.0, 0.1, (4, 4, 4)).astype(np.float32) for _ in range(9)]
    >>> ref = fit_reference(pool, [np.ones((4, 4, 4), bool)] * 9)
    >>> scan = np.full((4, 4, 4), 1.0, np.float32); scan[1, 1, 1] = 0.0     # one dark voxel
    >>> z = ref.apply(scan, np.ones((4, 4, 4), bool))
    >>> bool(z[1, 1, 1] < -3), bool(abs(np.median(z)) < 1)
    (True, True)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

CLIP = 6.0          # |z| beyond this is "very different": clipped, so one bright artefact does not rescale a view
MAD_TO_SD = 1.4826  # median absolute deviation -> standard deviation for normal data
FILE = "normative.npz"


@dataclass(frozen=True)
class NormativeReference:
    """Per-voxel ``median`` and ``scale`` (float32, the template crop grid) of ``n_scans`` pool
    scans; ``pool``: a fingerprint of which scans they were (ingest refits only when it changes)."""
    median: np.ndarray
    scale: np.ndarray
    n_scans: int
    pool: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.median.shape)

    @property
    def sha256(self) -> str:
        """Fingerprint of the reference (a model must be used with the reference it was trained on)."""
        h = hashlib.sha256(np.ascontiguousarray(self.median).tobytes())
        h.update(np.ascontiguousarray(self.scale).tobytes())
        return h.hexdigest()

    def apply(self, image: np.ndarray, mask: np.ndarray, region: tuple[slice, ...] | None = None,
              source: str = "scan") -> np.ndarray:
        """float32 deviation map of ``image`` (or of its ``region`` of the full grid: ``image``
        and ``mask`` are then that region's crops); 0 outside ``mask``."""
        if region is None and tuple(np.shape(image)) != self.shape:
            raise ValueError(f"{source}: grid {tuple(np.shape(image))} is not the normative reference's {self.shape}: "
                             "data.normative needs every scan registered to the template with its brain mask "
                             "(data.register rigid|affine, data.brain_mask: template) at the reference's spacing")
        region = region or tuple(slice(None) for _ in self.shape)
        z = (np.asarray(image, np.float32) - self.median[region]) / self.scale[region]
        return np.where(np.asarray(mask, bool), np.clip(z, -CLIP, CLIP), 0.0).astype(np.float32)

    def save(self, path: str | Path) -> None:
        np.savez(path, median=self.median, scale=self.scale, n_scans=np.int64(self.n_scans), pool=np.str_(self.pool))

    @classmethod
    def load(cls, path: str | Path) -> "NormativeReference":
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(f["median"].astype(np.float32), f["scale"].astype(np.float32), int(f["n_scans"]),
                           str(f["pool"]) if "pool" in f.files else "")
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a normative reference ({str(exc).splitlines()[0][:200]})") from None


def fit_reference(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                  names: Sequence[str] | None = None, pool: str = "") -> NormativeReference:
    """The reference of a pool of registered scans (same grid): per-voxel median and 1.4826 * MAD,
    the scale floored at half its median inside the union of the brain masks."""
    if len(images) < 2:
        raise ValueError(f"normative reference: needs at least 2 pool scans, got {len(images)}")
    names = list(names) if names is not None else [f"scan {i}" for i in range(len(images))]
    shape = tuple(np.shape(images[0]))
    for name, img in zip(names, images):
        if tuple(np.shape(img)) != shape:
            raise ValueError(f"{name}: grid {tuple(np.shape(img))} differs from the pool's {shape}: data.normative "
                             "needs every scan registered to the template with its brain mask")
    stack = np.stack([np.asarray(x, np.float32) for x in images])
    median = np.median(stack, axis=0)
    scale = MAD_TO_SD * np.median(np.abs(stack - median), axis=0)
    brain = np.any(np.stack([np.asarray(m, bool) for m in masks]), axis=0)
    floor = 0.5 * float(np.median(scale[brain])) if brain.any() else 0.0
    scale = np.maximum(scale, max(floor, 1e-6))
    return NormativeReference(median.astype(np.float32), scale.astype(np.float32), len(images), pool)


def load_reference(root: str | Path) -> NormativeReference | None:
    """The reference of a cohort cache (``ROOT/normative.npz``), or ``None`` when it has none."""
    path = Path(root) / FILE
    return NormativeReference.load(path) if path.exists() else None
