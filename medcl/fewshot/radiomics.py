"""Radiomics baseline: IBSI-compliant hand-crafted features of each scan's foreground mask,
computed by MIRP (Zwanenburg et al., "The Image Biomarker Standardization Initiative",
Radiology 2020; MIRP: Zwanenburg & Löck, JOSS 2024), for the heads to be scored on beside the
pretrained encoder.

What is computed, per scan, inside ``mask`` (3D, ``by_slice=False``):

- ``statistics``: the IBSI intensity-based statistics (mean, variance, skewness, percentiles,
  energy, ...) of the voxel values themselves;
- ``intensity_histogram``: the same statistics, entropy and uniformity of the discretised values;
- ``glcm``: grey-level co-occurrence matrix, distance 1 (26-neighbourhood), the 13 directions'
  matrices merged into one (IBSI "3D volume-merged");
- ``glszm``: grey-level size-zone matrix (26-connected zones in 3D).

Discretisation is a **fixed bin number** of 32 bins over each scan's intensity range inside
the mask (IBSI's recommendation for MRI, whose intensities have no physical unit; the cached
images are z-scored per scan, so a fixed bin width in z units would be close to equivalent).
``morphology`` (the mask's shape: mesh volume, surface, sphericity, ...) is available but not in
the default families: MIRP computes Moran's I and Geary's C with it, which take seconds per scan
on a head-sized mask whatever the other settings (docs/performance.md), and the mask here is the
whole head, whose shape is anatomy and field of view rather than pathology.

MIRP is given each scan as a NIfTI pair written to a temporary folder: for numpy arrays it
assumes 1 mm voxels and has no spacing argument, while a NIfTI header carries ``spacing``.

Example::

    >>> img = np.random.default_rng(0).normal(size=(12, 12, 12)).astype(np.float32)
    >>> X, names = radiomics_features([img], [np.ones(img.shape, bool)], spacing=2.0)
    >>> X.shape == (1, len(names)), names[0]
    (True, 'stat_mean')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path

import mirp
import nibabel as nib
import numpy as np

from medcl.data.cohort import Cohort

__all__ = ["FAMILIES", "FAMILY_NAMES", "N_BINS", "SPACING", "RadiomicsError", "radiomics_features", "scan_features",
           "mirp_settings", "kept_columns", "standardise", "resample", "cohort_radiomics"]

# the default feature families (MIRP's names), discretisation and grid (mm) of the suite's baseline
FAMILIES = ("statistics", "intensity_histogram", "glcm", "glszm")
N_BINS = 32
SPACING = 4.0
# every family a config may name (MIRP's base families; fewshot.radiomics_families is checked against it)
FAMILY_NAMES = ("morphology", "local_intensity", "statistics", "intensity_histogram", "intensity_volume_histogram",
                "glcm", "glrlm", "glszm", "gldzm", "ngtdm", "ngldm")
# MIRP's table has these metadata columns beside the features
_METADATA_PREFIXES = ("sample_name", "image_")


class RadiomicsError(ValueError):
    """A scan whose features cannot be computed; ``str(exc)`` is one line naming the scan."""


def mirp_settings(families=FAMILIES, n_bins: int = N_BINS) -> dict:
    """The keyword arguments of ``mirp.extract_features`` that define the features (everything
    but the image and the mask), so a direct MIRP call can reproduce them."""
    return {"image_modality": "mr", "by_slice": False, "ibsi_compliant": True,
            "base_feature_families": list(families),
            "base_discretisation_method": "fixed_bin_number", "base_discretisation_n_bins": int(n_bins),
            "glcm_distance": 1.0, "glcm_spatial_method": "3d_volume_merge", "glszm_spatial_method": "3d"}


@contextmanager
def _quiet():
    """MIRP logs two INFO lines per call to stdout (``logging.basicConfig``); hold them back."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


def _check(image: np.ndarray, mask: np.ndarray, key: str) -> None:
    if image.ndim != 3 or mask.shape != image.shape:
        raise RadiomicsError(f"radiomics: scan {key}: image {image.shape} and mask {mask.shape} must be the same 3D shape")
    n = int(np.count_nonzero(mask))
    if n == 0:
        raise RadiomicsError(f"radiomics: scan {key}: the mask is empty (no foreground voxel)")
    if not np.isfinite(image[mask]).all():
        raise RadiomicsError(f"radiomics: scan {key}: non-finite intensities inside the mask")


def scan_features(image: np.ndarray, mask: np.ndarray, spacing, key: str = "0",
                  families=FAMILIES, n_bins: int = N_BINS) -> dict[str, float]:
    """MIRP's features of one scan (feature name -> value, in MIRP's order); ``spacing``: mm,
    one number or one per axis. A bad scan or a failure inside MIRP is a one-line
    :class:`RadiomicsError` naming ``key``."""
    image, mask = np.asarray(image, np.float32), np.asarray(mask).astype(bool)
    _check(image, mask, key)
    affine = np.diag(list(np.broadcast_to(np.asarray(spacing, float), (3,))) + [1.0])
    with tempfile.TemporaryDirectory(prefix="medcl-radiomics-") as tmp:
        paths = Path(tmp) / "scan_image.nii", Path(tmp) / "scan_mask.nii"
        nib.save(nib.Nifti1Image(image, affine), paths[0])
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), paths[1])
        try:
            with _quiet():
                table = mirp.extract_features(image=str(paths[0]), mask=str(paths[1]),
                                              **mirp_settings(families, n_bins))[0]
        except Exception as exc:  # noqa: BLE001 - any MIRP failure becomes one line naming the scan
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RadiomicsError(f"radiomics: scan {key}: MIRP failed: {type(exc).__name__}: {reason}") from None
    if len(table) != 1:
        raise RadiomicsError(f"radiomics: scan {key}: MIRP returned {len(table)} rows, expected 1")
    row = table.iloc[0]
    return {c: float(row[c]) for c in table.columns if not c.startswith(_METADATA_PREFIXES)}


def _scan_job(job: tuple) -> dict[str, float]:
    return scan_features(*job)


def radiomics_features(images: list[np.ndarray], masks: list[np.ndarray], spacing: float, workers: int = 0,
                       keys: list[str] | None = None, families=FAMILIES,
                       n_bins: int = N_BINS) -> tuple[np.ndarray, list[str]]:
    """``(N, F)`` float64 features of each scan's foreground and the ``F`` feature names
    (MIRP's, e.g. ``cm_contrast_d1_3d_v_mrg_fbn_n32``: family, feature, distance, aggregation,
    discretisation).

    ``images``: 3D arrays at ``spacing`` mm (one number, one per axis, or one of those per
    scan); ``masks``: boolean arrays of the same
    shapes. ``workers`` > 1 computes scans in that many processes (spawned; order kept);
    0 or 1 in this process. ``keys`` name the scans in errors (default: their index). Nothing is
    dropped or scaled here: see :func:`standardise`."""
    if len(images) != len(masks):
        raise ValueError(f"radiomics: {len(images)} images but {len(masks)} masks")
    if not len(images):
        raise ValueError("radiomics: no scans")
    keys = [str(k) for k in (keys if keys is not None else range(len(images)))]
    spacings = spacing if isinstance(spacing, list) else [spacing] * len(images)
    jobs = [(img, m, sp, k, tuple(families), n_bins) for img, m, sp, k in zip(images, masks, spacings, keys)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            rows = list(pool.map(_scan_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        rows = [_scan_job(job) for job in jobs]
    names = list(rows[0])
    for key, row in zip(keys, rows):
        if list(row) != names:
            raise RadiomicsError(f"radiomics: scan {key}: MIRP returned other features than for scan {keys[0]}")
    return np.array([[row[n] for n in names] for row in rows], dtype=np.float64), names


def kept_columns(fit: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Boolean mask of the columns :func:`standardise` keeps: finite on every fitting row and
    not constant there (standard deviation above ``rtol`` times the column's largest |value|)."""
    fit = np.asarray(fit, dtype=np.float64)
    finite = np.isfinite(fit).all(0)
    safe = np.where(finite, fit, 0.0)
    scale = np.abs(safe).max(0) if len(fit) else np.zeros(fit.shape[1])
    return finite & (safe.std(0) > rtol * np.maximum(scale, np.finfo(float).tiny))


def standardise(fit: np.ndarray, apply: np.ndarray) -> np.ndarray:
    """``apply``'s rows z-scored with the mean and standard deviation of ``fit``'s rows, on the
    columns :func:`kept_columns` keeps (dropped: non-finite or constant on ``fit``). A
    non-finite value left in ``apply`` becomes 0, the fitting rows' mean.

    >>> standardise(np.array([[1., 5., np.nan], [3., 5., 1.]]), np.array([[2., 7., 0.]]))
    array([[0.]])
    """
    fit, apply = np.asarray(fit, dtype=np.float64), np.asarray(apply, dtype=np.float64)
    if fit.ndim != 2 or apply.ndim != 2 or fit.shape[1] != apply.shape[1]:
        raise ValueError(f"standardise: fit {fit.shape} and apply {apply.shape} need the same number of columns")
    if len(fit) < 2:
        raise ValueError(f"standardise: need at least 2 fitting rows, got {len(fit)}")
    keep = kept_columns(fit)
    mean, std = fit[:, keep].mean(0), fit[:, keep].std(0)
    z = (apply[:, keep] - mean) / std
    return np.where(np.isfinite(z), z, 0.0)


def _pool(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Mean of ``a`` over a partition of each axis into ``shape`` contiguous blocks (area
    averaging; blocks of equal size when the axis divides evenly)."""
    for ax, m in enumerate(shape):
        starts = (np.arange(m) * a.shape[ax]) // m
        counts = np.diff(np.r_[starts, a.shape[ax]]).reshape([-1 if i == ax else 1 for i in range(a.ndim)])
        a = np.add.reduceat(a, starts, axis=ax) / counts
    return a


def resample(image: np.ndarray, mask: np.ndarray, spacing: float, new_spacing: float):
    """``(image, mask, spacing per axis)`` on a grid of about ``new_spacing`` mm: each new voxel
    the mean of the old voxels it covers (area averaging, an anti-aliased downsampling), the
    mask the voxels at least half covered by it (IBSI's partial-volume threshold 0.5). An
    integer factor pads the edges (image: edge values, mask: outside) to whole blocks, so the
    grid is exactly ``new_spacing``; otherwise each axis gets ``round(extent / new_spacing)``
    voxels and its exact spacing is returned. ``new_spacing`` at or below ``spacing``: unchanged."""
    if new_spacing <= spacing * (1 + 1e-6):
        return image, mask, (float(spacing),) * 3
    f = new_spacing / spacing
    if abs(f - round(f)) < 1e-6:
        pad = [(0, -n % round(f)) for n in image.shape]
        image, mask = np.pad(image, pad, mode="edge"), np.pad(mask, pad)
        shape = tuple(n // round(f) for n in image.shape)
    else:
        shape = tuple(max(1, round(n / f)) for n in image.shape)
    img = _pool(image.astype(np.float64), shape).astype(np.float32)
    return img, _pool(mask.astype(np.float64), shape) >= 0.5, tuple(n * spacing / m for n, m in zip(image.shape, shape))


def _settings_digest(spacing: float, families, n_bins: int) -> str:
    settings = {**mirp_settings(families, n_bins), "spacing": float(spacing), "resample": "area-v1",
                "mirp": version("mirp")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"ids": z["ids"].tolist(), "X": z["X"], "names": z["names"].tolist()}
    except (OSError, ValueError, KeyError):       # a torn or foreign file: recompute, then overwrite
        return {}


def _write_cache(path: Path, ids: list[str], X: np.ndarray, names: list[str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, ids=np.array(ids), X=X, names=np.array(names))
        os.replace(tmp, path)
    except OSError as exc:                        # a read-only cohort: features computed, not kept
        logging.getLogger(__name__).warning("radiomics cache %s not written: %s", path, exc.strerror)


def cache_path(cohort: Cohort, spacing: float = SPACING, families=FAMILIES, n_bins: int = N_BINS) -> Path:
    """Where :func:`cohort_radiomics` keeps a cohort's features for these settings:
    ``<cohort>/radiomics/<hash of the settings and MIRP's version>.npz``."""
    return Path(cohort.root) / "radiomics" / f"{_settings_digest(spacing, families, n_bins)}.npz"


def cohort_radiomics(cohort: Cohort, spacing: float = SPACING, families=FAMILIES, n_bins: int = N_BINS,
                     workers: int = 0) -> tuple[np.ndarray, list[str], dict]:
    """``(N, F)`` radiomics features of every scan of ``cohort`` (manifest order), their names,
    and ``{"computed": n, "cached": n, "spacing": mm}``. Each scan's stored image (its intensities,
    also when the cohort has a normative reference: IBSI features are defined on them) and foreground mask
    are resampled to ``spacing`` mm (:func:`resample`; a coarser cohort keeps its own grid), then
    :func:`radiomics_features`. Features are cached per scan (scan key and preprocessing hash)
    in :func:`cache_path`, so a rerun, another seed or another split reuses them and only new
    scans are computed; other settings are another file."""
    if not len(cohort):
        raise ValueError("radiomics: no scans")
    path = cache_path(cohort, spacing, families, n_bins)
    ids = [f"{r['scan_key']}:{r.get('prep_sha256', '')}" for r in cohort.rows]
    cache = _read_cache(path)
    known = {i: row for i, row in zip(cache.get("ids", []), cache.get("X", []))}
    todo = [j for j, i in enumerate(ids) if i not in known]
    names = cache.get("names")
    if todo:
        grids = [resample(cohort.intensity(j), cohort.mask(j), float(cohort.rows[j]["spacing"]), spacing) for j in todo]
        X_new, names_new = radiomics_features([g[0] for g in grids], [g[1] for g in grids], [g[2] for g in grids],
                                              workers, [cohort.rows[j]["scan_key"] for j in todo], families, n_bins)
        if names is not None and names != names_new:
            raise RadiomicsError(f"radiomics: {path}: cached features are not MIRP's {len(names_new)} features "
                                 "for these settings; delete the file to recompute")
        names = names_new
        known.update({ids[j]: x for j, x in zip(todo, X_new)})
        _write_cache(path, list(known), np.array(list(known.values())), names)
    X = np.array([known[i] for i in ids], dtype=np.float64)
    sp = min(float(r["spacing"]) for r in cohort.rows)
    return X, list(names), {"computed": len(todo), "cached": len(ids) - len(todo), "spacing": max(spacing, sp)}
