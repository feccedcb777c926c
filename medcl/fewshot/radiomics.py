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

import logging
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

import mirp
import nibabel as nib
import numpy as np

__all__ = ["FAMILIES", "N_BINS", "RadiomicsError", "radiomics_features", "scan_features", "mirp_settings",
           "kept_columns", "standardise"]

# the default feature families (MIRP's names) and discretisation
FAMILIES = ("statistics", "intensity_histogram", "glcm", "glszm")
N_BINS = 32
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


def scan_features(image: np.ndarray, mask: np.ndarray, spacing: float, key: str = "0",
                  families=FAMILIES, n_bins: int = N_BINS) -> dict[str, float]:
    """MIRP's features of one scan (feature name -> value, in MIRP's order); a bad scan or a
    failure inside MIRP is a one-line :class:`RadiomicsError` naming ``key``."""
    image, mask = np.asarray(image, np.float32), np.asarray(mask).astype(bool)
    _check(image, mask, key)
    affine = np.diag([float(spacing)] * 3 + [1.0])
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

    ``images``: 3D arrays at ``spacing`` mm isotropic; ``masks``: boolean arrays of the same
    shapes. ``workers`` > 1 computes scans in that many processes (spawned; order kept);
    0 or 1 in this process. ``keys`` name the scans in errors (default: their index). Nothing is
    dropped or scaled here: see :func:`standardise`."""
    if len(images) != len(masks):
        raise ValueError(f"radiomics: {len(images)} images but {len(masks)} masks")
    if not len(images):
        raise ValueError("radiomics: no scans")
    keys = [str(k) for k in (keys if keys is not None else range(len(images)))]
    jobs = [(img, m, spacing, k, tuple(families), n_bins) for img, m, k in zip(images, masks, keys)]
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
