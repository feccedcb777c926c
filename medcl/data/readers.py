"""Read one scan of any kind into (float32 voxels, 4x4 RAS affine), and hash its content.

Readers only load: validation and canonicalisation are :func:`medcl.data.ingest.preprocess`,
the one place where a volume is prepared. Each reader refuses an over-large volume from its
header, before the voxels are read (:func:`medcl.data.errors.check_size`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from medcl.config import DataConfig
from medcl.data import dicom, nifti_header
from medcl.data.errors import IngestError, check_size
from medcl.data.sources import ScanSource


def reduce_4d(data: np.ndarray, policy: str) -> np.ndarray:
    """A 4D array (X, Y, Z, T) to 3D by ``policy``: quarantine (error) | first | mean."""
    if data.ndim != 4 or data.shape[3] == 1:
        return data[..., 0] if data.ndim == 4 else data
    if policy == "first":
        return data[..., 0]
    if policy == "mean":
        return data.mean(axis=3, dtype=np.float32)
    raise IngestError(four_d_reason(data.shape, policy))


def four_d_reason(shape: tuple[int, ...], policy: str) -> str:
    return (f"4D image: {shape[3]} volumes of {tuple(int(s) for s in shape[:3])} (data.policy_4d={policy}; "
            f"use first or mean to keep it)")


def load_nifti(path: Path, cfg: DataConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(3D float32 voxels, 4x4 affine) of a NIfTI file, or IngestError."""
    cfg = cfg or DataConfig()
    try:
        with _nibabel_quiet():
            img = nib.load(str(path))
        shape = img.shape
    except Exception as exc:  # nibabel raises many types for broken files
        raise IngestError(f"unreadable NIfTI ({type(exc).__name__}: {dicom.scrub(str(exc)) or 'no detail'})") from None
    if any(int(n) < 1 for n in shape):
        raise IngestError(f"invalid image dimensions in the header: shape {tuple(int(n) for n in shape)}")
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise IngestError(f"2D image: shape {tuple(shape)}")
    stored = _raw_header(path, img)
    problem = nifti_header.geometry_problem(stored, shape) or _dtype_problem(img)
    if problem:
        raise IngestError(problem)
    if len(shape) > 4:
        raise IngestError(f"expected a 3D image, got {len(shape)} dimensions, shape {tuple(shape)}")
    if len(shape) == 4 and shape[3] > 1 and cfg.policy_4d == "quarantine":
        raise IngestError(four_d_reason(shape, cfg.policy_4d))
    check_size(shape[:3] if cfg.policy_4d == "first" or len(shape) == 3 else shape, cfg.max_voxels)
    try:
        proxy = img.dataobj
        raw = proxy[..., 0] if len(shape) == 4 and cfg.policy_4d == "first" else proxy
        with np.errstate(over="ignore", invalid="ignore"):   # scaled past float32: Inf, refused by preprocess
            data = np.asarray(raw, dtype=np.float32)
    except Exception as exc:
        raise IngestError(f"unreadable NIfTI voxels ({type(exc).__name__}: {dicom.scrub(str(exc)) or 'no detail'})") from None
    affine = np.array(img.affine, float)
    affine[:3] *= nifti_header.unit_scale(stored)          # metres or micrometres to mm
    return reduce_4d(data, cfg.policy_4d), affine


@contextlib.contextmanager
def _nibabel_quiet():
    """nibabel logs the header fixes it makes on load ("setting 0 dims to 1", "sizeof_hdr should
    be 348") to stderr; medcl checks the header as stored and names what it refuses instead."""
    log = logging.getLogger("nibabel.global")
    was = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = was


def _raw_header(path: Path, img):
    """The header as stored (nibabel's loader replaces a zero pixdim by 1 when it checks it)."""
    try:
        with nib.openers.ImageOpener(str(path)) as fobj:
            return type(img.header).from_fileobj(fobj, check=False)
    except Exception:
        return img.header


def _dtype_problem(img) -> str | None:
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        what = "colour (RGB) image" if dtype.fields is not None else f"{dtype} voxels"
        return f"{what}: a scan must hold one real number per voxel (datatype {img.header.get('datatype', '?')})"
    return None


@functools.lru_cache(maxsize=1)
def _npz_member(path: str, mtime: float, name: str) -> np.ndarray:
    """One array of an .npz, cached so the images of one split are decompressed once per worker."""
    with np.load(path, allow_pickle=False) as npz:
        return np.asarray(npz[name])


def load_npz_item(path: Path, split: str, index: int, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``{split}_images`` in a MedMNIST-style .npz, with a diagonal affine
    of ``data.npz_spacing`` mm (``data.spacing`` when 0: MedMNIST gives no voxel size)."""
    try:
        images = _npz_member(str(path), Path(path).stat().st_mtime, f"{split}_images")
    except Exception as exc:
        raise IngestError(f"unreadable npz ({type(exc).__name__}: {dicom.scrub(str(exc))})") from None
    vol = np.asarray(images[index], dtype=np.float32)
    if vol.ndim == 4 and vol.shape[-1] == 1:
        vol = vol[..., 0]
    spacing = cfg.npz_spacing or cfg.spacing
    return vol, np.diag([spacing, spacing, spacing, 1.0])


def load_source(src: ScanSource, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(voxels, RAS affine) of any :class:`ScanSource`."""
    if src.kind == "nifti":
        return load_nifti(src.path, cfg)
    if src.kind == "dicom":
        return dicom.load_series(list(src.members), cfg.dicom_min_slices, cfg.policy_4d, cfg.max_voxels)
    if src.kind == "npz":
        return load_npz_item(src.path, src.item[0], src.item[1], cfg)
    raise IngestError(f"unknown scan kind {src.kind!r}")


def source_sha256(src: ScanSource) -> str:
    """Content hash of a scan: its file(s), or for an .npz item the image's bytes."""
    h = hashlib.sha256()
    if src.kind == "npz":
        images = _npz_member(str(src.path), Path(src.path).stat().st_mtime, f"{src.item[0]}_images")
        h.update(f"{src.item[0]}/{src.item[1]}".encode())
        h.update(np.ascontiguousarray(images[src.item[1]]).tobytes())
        return h.hexdigest()
    files = sorted({p for p, _ in src.members}) if src.kind == "dicom" else [str(src.path)]
    for p in files:
        try:
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as exc:
            raise IngestError(dicom._os_reason(exc)) from None
    if src.kind == "dicom":
        h.update(repr(sorted(f for _, f in src.members)).encode())
    return h.hexdigest()
