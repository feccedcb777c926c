"""Load → validate → canonicalise → pseudonymise → cache.

One function, :func:`preprocess`, turns a voxel array and its affine into the array the
models see (RAS orientation, isotropic spacing, cropped to the head, normalised intensity,
with a foreground mask). Ingest calls it for every scan; prediction calls it for a new scan,
so that a model never sees an array prepared differently from its training data.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medcl.config import DataConfig
from medcl.data.pseudonym import pseudonym
from medcl.data.sources import ScanSource, discover, read_labels

MANIFEST_FIELDS = ["scan_key", "subject_key", "label", "split", "shape", "spacing", "source_sha256"]


class IngestError(Exception):
    """A scan that cannot be ingested; ``str(exc)`` is the one-line reason."""


@dataclass
class Preprocessed:
    image: np.ndarray   # float32 (X, Y, Z) in RAS voxel order, z-scored inside the mask
    mask: np.ndarray    # bool foreground (head) mask, same shape


def load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(3D float32 voxels, 4x4 affine) of a NIfTI file, or IngestError."""
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for broken files
        raise IngestError(f"unreadable NIfTI ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise IngestError(f"expected a 3D image, got shape {data.shape}")
    return data, img.affine


def _reorient_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(ornt, ras)
    out = nib.orientations.apply_orientation(data, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(out), new_affine


def _foreground(image: np.ndarray, threshold: float) -> np.ndarray:
    """Head mask: threshold at a fraction of the robust max, close, fill, keep the largest blob."""
    hi = float(np.percentile(image, 99.5))
    mask = image > threshold * hi
    mask = ndimage.binary_closing(mask, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return mask


def preprocess(data: np.ndarray, affine: np.ndarray, cfg: DataConfig) -> Preprocessed:
    """Validate and canonicalise one volume (see the module docstring)."""
    if data.ndim != 3:
        raise IngestError(f"expected a 3D image, got shape {data.shape}")
    if min(data.shape) < 2:
        raise IngestError(f"image is 2D or degenerate, shape {data.shape}")
    if data.size > cfg.max_voxels:
        gib = data.size * 4 / 2**30
        raise IngestError(f"volume too large: {data.shape} needs ~{gib:.1f} GiB as float32 (limit data.max_voxels={cfg.max_voxels})")
    if not np.all(np.isfinite(data)):
        raise IngestError("image contains NaN or Inf voxels")
    spacing_in = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.all(spacing_in > 1e-6) or not np.all(np.isfinite(spacing_in)):
        raise IngestError(f"zero or invalid voxel spacing {spacing_in.round(4).tolist()}")
    if float(data.max() - data.min()) <= 0:
        raise IngestError("constant image (all voxels equal)")
    data, affine = _reorient_ras(data, affine)
    spacing_in = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    zoom = spacing_in / cfg.spacing
    if not np.allclose(zoom, 1.0, atol=1e-3):
        data = ndimage.zoom(data, zoom, order=1, prefilter=False)
    mask = _foreground(data, cfg.foreground_threshold)
    if mask.sum() < 64:
        raise IngestError("no foreground found (image is empty or almost constant)")
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - cfg.crop_margin, 0)
    hi = np.minimum(idx.max(0) + 1 + cfg.crop_margin, data.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    data, mask = data[box], mask[box]
    vals = data[mask]
    p_lo, p_hi = np.percentile(vals, cfg.clip_percentiles)
    data = np.clip(data, p_lo, p_hi)
    vals = data[mask]
    std = float(vals.std())
    if std <= 0:
        raise IngestError("constant intensity inside the foreground")
    image = ((data - float(vals.mean())) / std).astype(np.float32)
    return Preprocessed(image=image, mask=mask)


def preprocess_file(path: Path, cfg: DataConfig) -> Preprocessed:
    """Read and preprocess a NIfTI file (what prediction on a new scan uses)."""
    data, affine = load_nifti(path)
    return preprocess(data, affine, cfg)


@dataclass
class IngestResult:
    found: int = 0
    ingested: int = 0
    skipped_cached: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"found": self.found, "ingested": self.ingested, "cached": self.skipped_cached,
                "quarantined": len(self.quarantined), "ignored": len(self.ignored)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _assign_splits(rows: list[dict], test_fraction: float, seed: int) -> None:
    """Subject-level split, stratified by label: a subject's scans share one split."""
    by_label: dict[str, list[str]] = {}
    for r in rows:
        subs = by_label.setdefault(r["label"], [])
        if r["subject_key"] not in subs:
            subs.append(r["subject_key"])
    split_of: dict[str, str] = {}
    rng = np.random.default_rng(seed)
    for label, subs in sorted(by_label.items()):
        subs = sorted(subs)
        rng.shuffle(subs)
        n_test = int(round(len(subs) * test_fraction)) if label else 0
        for i, s in enumerate(subs):
            split_of[s] = "test" if i < n_test else "train"
    for r in rows:
        r["split"] = split_of[r["subject_key"]]


def ingest(paths: list[Path], out: Path, cfg: DataConfig, labels_csv: Path | None = None,
           test_fraction: float = 0.0, split_seed: int = 0, progress: bool = True) -> IngestResult:
    """Ingest every scan under ``paths`` into the cohort folder ``out``.

    Writes ``out/arrays/<scan_key>.npy`` (float16 image) and ``<scan_key>.mask.npy``,
    ``out/manifest.csv`` and ``out/quarantine.csv`` (``path,reason``; one row per bad file).
    ``found = ingested + cached + quarantined`` for scan files; non-scan files are ``ignored``.
    """
    from tqdm import tqdm

    out = Path(out)
    (out / "arrays").mkdir(parents=True, exist_ok=True)
    found = discover([Path(p) for p in paths])
    labels = read_labels(Path(labels_csv)) if labels_csv else {}
    result = IngestResult(found=len(found.scans), ignored=[(str(p), r) for p, r in found.ignored])
    old = {r["scan_key"]: r for r in read_manifest(out)} if (out / "manifest.csv").exists() else {}
    rows: list[dict] = []
    for src in tqdm(found.scans, desc="ingest", unit="scan", disable=not progress):
        try:
            row = _ingest_one(src, out, cfg, labels, old)
        except IngestError as exc:
            result.quarantined.append((str(src.path), str(exc)))
            continue
        if row.pop("_cached", False):
            result.skipped_cached += 1
        else:
            result.ingested += 1
        rows.append(row)
    _assign_splits(rows, test_fraction, split_seed)
    write_manifest(out, rows)
    with open(out / "quarantine.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "reason"])
        w.writerows(result.quarantined)
    (out / "ingest.json").write_text(json.dumps({"counts": result.counts(), "data": vars(cfg)}, indent=2, default=list))
    return result


def _ingest_one(src: ScanSource, out: Path, cfg: DataConfig, labels: dict[str, str], old: dict) -> dict:
    subject_key = pseudonym(src.subject_id, "sub")
    scan_key = pseudonym(f"{src.subject_id}/{src.scan_id}", "scan")
    sha = _sha256(src.path)
    label = labels.get(src.subject_id, "")
    prev = old.get(scan_key)
    if prev and prev["source_sha256"] == sha and (out / "arrays" / f"{scan_key}.npy").exists():
        return {**prev, "label": label, "_cached": True}
    pre = preprocess_file(src.path, cfg)
    np.save(out / "arrays" / f"{scan_key}.npy", pre.image.astype(np.float16))
    np.save(out / "arrays" / f"{scan_key}.mask.npy", pre.mask.astype(np.uint8))
    return {"scan_key": scan_key, "subject_key": subject_key, "label": label, "split": "",
            "shape": "x".join(map(str, pre.image.shape)), "spacing": cfg.spacing, "source_sha256": sha}


def write_manifest(out: Path, rows: list[dict]) -> None:
    tmp = Path(out) / "manifest.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        w.writeheader()
        for r in sorted(rows, key=lambda r: r["scan_key"]):
            w.writerow({k: r[k] for k in MANIFEST_FIELDS})
    tmp.replace(Path(out) / "manifest.csv")


def read_manifest(root: Path) -> list[dict]:
    path = Path(root) / "manifest.csv"
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise FileNotFoundError(f"{path}: cannot read cohort manifest ({exc.strerror})") from None
    missing = set(MANIFEST_FIELDS) - set(rows[0].keys() if rows else MANIFEST_FIELDS)
    if missing:
        raise ValueError(f"{path}: manifest lacks columns {sorted(missing)}")
    return rows
