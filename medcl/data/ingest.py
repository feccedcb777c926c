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
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medcl.config import DataConfig
from medcl.data import dicom
from medcl.data.errors import IngestError, check_size
from medcl.data.normative import FILE as NORMATIVE_FILE, NormativeReference, fit_reference
from medcl.data.pseudonym import pseudonym
from medcl.data.readers import load_nifti, load_source, source_sha256
from medcl.data.register import register
from medcl.data.sources import LabelTable, ScanSource, discover, read_labels

__all__ = ["IngestError", "IngestResult", "Preprocessed", "ingest", "load_nifti", "preprocess", "preprocess_file",
           "read_scan", "read_manifest", "write_manifest"]

MANIFEST_FIELDS = ["scan_key", "subject_key", "label", "split", "shape", "spacing", "source_sha256"]
OPTIONAL_FIELDS = ["kind", "prep_sha256"]   # added later: manifests without them still load


@dataclass
class Preprocessed:
    image: np.ndarray   # float32 (X, Y, Z) in RAS voxel order, z-scored inside the mask
    mask: np.ndarray    # bool foreground (head, or brain with data.brain_mask=template) mask, same shape
    transform: np.ndarray = field(default_factory=lambda: np.eye(4))  # scan RAS mm -> MNI template RAS mm
    # (data.register); the identity when registration is off
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))     # image voxel -> RAS mm (template RAS mm
    # when registered): where each voxel of ``image`` lies, so a map on ``image`` goes back to the scan


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


def _check_volume(data: np.ndarray, affine: np.ndarray, cfg: DataConfig) -> None:
    if data.ndim != 3:
        raise IngestError(f"expected a 3D image, got shape {data.shape}")
    if min(data.shape) < 2:
        raise IngestError(f"image is 2D or degenerate, shape {data.shape}")
    check_size(data.shape, cfg.max_voxels)
    if not np.all(np.isfinite(data)):
        raise IngestError("image contains NaN or Inf voxels")
    spacing_in = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.all(spacing_in > 1e-6) or not np.all(np.isfinite(spacing_in)):
        raise IngestError(f"zero or invalid voxel spacing {spacing_in.round(4).tolist()}")
    if float(data.max() - data.min()) <= 0:
        raise IngestError("constant image (all voxels equal)")


def _resample(data: np.ndarray, affine: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """RAS volume to ``spacing`` mm isotropic, with the affine of the new grid (ndimage.zoom
    maps the first and last voxels onto the first and last: each axis scales by (n_in - 1)/(n_out - 1))."""
    spacing_in = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    zoom = spacing_in / spacing
    if np.allclose(zoom, 1.0, atol=1e-3):
        return data, affine
    shape_in = np.array(data.shape)
    data = ndimage.zoom(data, zoom, order=1, prefilter=False)
    affine = affine.copy()
    affine[:3, :3] *= (shape_in - 1) / np.maximum(np.array(data.shape) - 1, 1)
    return data, affine


def _canonical(data: np.ndarray, affine: np.ndarray, cfg: DataConfig):
    """(image, mask, transform, affine of the image's grid): RAS, data.spacing, registered to the
    template when asked (docs/data.md, "Registration to the MNI template"), with its foreground mask."""
    data, affine = _resample(*_reorient_ras(data, affine), cfg.spacing)
    transform, mask = np.eye(4), None
    if cfg.register != "none":
        reg = register(data, affine, cfg.register, cfg.spacing)
        data, transform, affine = reg.image, reg.transform, reg.grid.affine
        if cfg.brain_mask == "template":
            mask = reg.grid.brain.copy()
    if mask is None:
        mask = _foreground(data, cfg.foreground_threshold)
    if mask.sum() < 64:
        raise IngestError("no foreground found (image is empty or almost constant)")
    return data, mask, transform, affine


MIN_FOREGROUND_EDGE = 4   # voxels: the smallest crop edge medcl.augment.params draws (a view needs it)


def _check_foreground(mask: np.ndarray, spacing: float) -> np.ndarray:
    """The mask's voxel indices; IngestError when its box is thinner than the smallest view."""
    idx = np.argwhere(mask)
    extent = idx.max(0) - idx.min(0) + 1
    if extent.min() < MIN_FOREGROUND_EDGE:
        axis = int(np.argmin(extent))
        raise IngestError(f"foreground thinner than the smallest view: {int(extent[axis])} voxel(s) along axis {axis} "
                          f"at data.spacing={spacing:g} mm (at least {MIN_FOREGROUND_EDGE} needed)")
    return idx


def preprocess(data: np.ndarray, affine: np.ndarray, cfg: DataConfig) -> Preprocessed:
    """Validate and canonicalise one volume (see the module docstring)."""
    _check_volume(data, affine, cfg)
    data, mask, transform, grid_affine = _canonical(data, affine, cfg)
    idx = _check_foreground(mask, cfg.spacing)
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
    shift = np.eye(4)
    shift[:3, 3] = lo
    return Preprocessed(image=image, mask=mask, transform=transform, affine=grid_affine @ shift)


def read_scan(path: Path, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """The voxels and RAS affine of one scan as stored: a NIfTI file, or a DICOM file or folder
    holding exactly one volume under the series selection rules."""
    path = Path(path)
    if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        return load_nifti(path, cfg)
    found = discover([path], cfg)
    scans = [s for s in found.scans if s.kind in ("dicom", "nifti")]
    if len(scans) != 1:
        detail = f"; first problem: {found.problems[0][1]}" if found.problems and not scans else ""
        raise IngestError(f"{path}: expected one scan, found {len(scans)} ({len(found.skipped)} DICOM series "
                          f"skipped by the selection rules, {len(found.ignored)} files ignored{detail})")
    return load_source(scans[0], cfg)


def preprocess_file(path: Path, cfg: DataConfig) -> Preprocessed:
    """Read (:func:`read_scan`) and preprocess one scan: what prediction on a new scan uses."""
    return preprocess(*read_scan(path, cfg), cfg)


@dataclass
class IngestResult:
    """Counts of one ingest. Scans (a NIfTI file, a DICOM volume, an .npz image) add up:
    ``found = ingested + cached + quarantined``. Apart from them: ``ignored`` files that are
    not scans, ``skipped`` DICOM series excluded by the selection rules, and ``label_issues``
    (rows of the label CSV that match no scan, classes too small for the requested shots)."""

    found: int = 0
    ingested: int = 0
    skipped_cached: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    label_issues: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return {"found": self.found, "ingested": self.ingested, "cached": self.skipped_cached,
                "quarantined": len(self.quarantined), "ignored": len(self.ignored),
                "skipped": len(self.skipped), "label_issues": len(self.label_issues)}


MAX_POOL = 400         # scans in a normative reference: enough for a voxel's median, bounded memory
MIN_JOBS_FOR_POOL = 8   # starting worker processes costs a second or two: small batches run in-process
PREP_KEYS = ("spacing", "foreground_threshold", "crop_margin", "clip_percentiles", "policy_4d",
             "dicom_min_slices", "npz_spacing", "register", "brain_mask")
PREP_KEYS_OFF = {"register": "none", "brain_mask": "none"}   # keys added later: hashed only when not off,
                                                              # so caches made before them stay valid


def prep_sha256(cfg: DataConfig) -> str:
    """Hash of the settings that change a cached array (a cached scan is reused only if equal)."""
    values = {k: getattr(cfg, k) for k in PREP_KEYS if getattr(cfg, k) != PREP_KEYS_OFF.get(k, object())}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=list).encode()).hexdigest()[:16]


def _assign_splits(rows: list[dict], test_fraction: float, seed: int) -> None:
    """Subject-level split, stratified by label: a subject's scans share one split. Rows whose
    source gave a split (MedMNIST ``train``/``val``/``test``) keep it."""
    by_label: dict[str, list[str]] = {}
    given = {r["subject_key"]: r["split"] for r in rows if r.get("split")}
    for r in rows:
        if r["subject_key"] in given:
            continue
        subs = by_label.setdefault(r["label"], [])
        if r["subject_key"] not in subs:
            subs.append(r["subject_key"])
    split_of: dict[str, str] = dict(given)
    rng = np.random.default_rng(seed)
    for label, subs in sorted(by_label.items()):
        subs = sorted(subs)
        rng.shuffle(subs)
        n_test = int(round(len(subs) * test_fraction)) if label else 0
        for i, s in enumerate(subs):
            split_of[s] = "test" if i < n_test else "train"
    for r in rows:
        r["split"] = split_of[r["subject_key"]]


@dataclass(frozen=True)
class _Job:
    src: ScanSource
    scan_key: str
    cached: tuple[str, str] | None    # (source sha, prep sha) of the manifest row, if any


def _convert(job: _Job, out: str, cfg: DataConfig, prep: str) -> tuple[str, dict | str]:
    """Worker: ("cached" | "ok", {shape, source_sha256}) or ("bad", one-line reason)."""
    arrays = Path(out) / "arrays"
    try:
        sha = source_sha256(job.src)
        registered = cfg.register != "none"
        suffixes = (".npy", ".mask.npy") + ((".xfm.npy",) if registered else ())
        if job.cached == (sha, prep) and all((arrays / f"{job.scan_key}{x}").exists() for x in suffixes):
            return "cached", {"source_sha256": sha}
        data, affine = load_source(job.src, cfg)
        pre = preprocess(data, affine, cfg)
        del data
        if not registered:   # a transform left by an earlier registered ingest would be stale
            (arrays / f"{job.scan_key}.xfm.npy").unlink(missing_ok=True)
        arrs = (pre.image.astype(np.float16), pre.mask.astype(np.uint8), pre.transform)
        for suffix, arr in zip(suffixes, arrs):
            tmp = arrays / f"{job.scan_key}.tmp{os.getpid()}{suffix}"
            np.save(tmp, arr)
            tmp.replace(arrays / f"{job.scan_key}{suffix}")
        return "ok", {"source_sha256": sha, "shape": "x".join(map(str, pre.image.shape))}
    except IngestError as exc:
        return "bad", str(exc)
    except MemoryError:
        return "bad", "out of memory while reading or preparing the volume (lower data.max_voxels)"
    except Exception as exc:  # one bad scan must never stop the batch
        return "bad", f"unexpected error ({type(exc).__name__}: {dicom.scrub(str(exc))})"


def _run_jobs(jobs: list[_Job], out: Path, cfg: DataConfig, prep: str, workers: int, progress: bool):
    """Yield (job, status, payload) as jobs finish; each worker holds one scan at a time."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="ingest", unit="scan", disable=not progress)
    if workers <= 1 or len(jobs) < MIN_JOBS_FOR_POOL:
        for job in jobs:
            status, payload = _convert(job, str(out), cfg, prep)
            bar.update()
            yield job, status, payload
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_convert, job, str(out), cfg, prep): job for job in jobs}
            for fut in as_completed(futures):
                status, payload = fut.result()
                bar.update()
                yield futures[fut], status, payload
    bar.close()


def _label_of(src: ScanSource, table: LabelTable | None, used: set[str]) -> tuple[str, str | None]:
    """(label, quarantine reason or None) of a scan from its source and the label CSV."""
    label = src.label
    if table is None:
        return label, None
    key, csv_label = table.lookup(src)
    if key is None:
        return label, None
    used.add(key)
    if key in table.conflicts:
        lines = ", ".join(map(str, table.lines[key]))
        return "", f"conflicting labels for its {table.column} in {table.path.name} (lines {lines})"
    if label and csv_label and label != csv_label:
        return "", f"label in {table.path.name} (line {table.lines[key][0]}) differs from the source's own label"
    return csv_label or label, None


def ingest(paths: list[Path], out: Path, cfg: DataConfig, labels_csv: Path | None = None,
           test_fraction: float = 0.0, split_seed: int = 0, progress: bool = True, shots: int = 0) -> IngestResult:
    """Ingest every scan under ``paths`` into the cohort folder ``out``.

    Writes ``out/arrays/<scan_key>.npy`` (float16 image) and ``<scan_key>.mask.npy`` (and
    ``<scan_key>.xfm.npy``, the 4x4 scan -> template transform, when ``data.register`` is on),
    ``out/manifest.csv``, ``out/quarantine.csv`` (``path,reason``: one row per bad scan and per
    label problem) and ``out/ingest.json`` (counts). Counts: see :class:`IngestResult`. A second
    run reuses every scan whose content hash and preprocessing settings are unchanged.
    ``shots`` (the largest K that few-shot evaluation will ask for) flags classes too small.
    """
    t0 = time.perf_counter()
    out = Path(out)
    (out / "arrays").mkdir(parents=True, exist_ok=True)
    workers = cfg.workers or os.cpu_count() or 1
    found = discover([Path(p) for p in paths], cfg, workers)
    table = read_labels(Path(labels_csv)) if labels_csv else None
    result = IngestResult(found=len(found.scans) + len(found.problems),
                          quarantined=[(str(p), r) for p, r in found.problems],
                          ignored=[(str(p), r) for p, r in found.ignored],
                          skipped=[(str(p), r) for p, r in found.skipped])
    old = {r["scan_key"]: r for r in read_manifest(out)} if (out / "manifest.csv").exists() else {}
    prep = prep_sha256(cfg)
    jobs, meta = _plan_jobs(found, table, old, cfg, prep, result)
    rows = []
    for job, status, payload in _run_jobs(jobs, out, cfg, prep, workers, progress):
        if status == "bad":
            result.quarantined.append((str(job.src.path), payload))
            continue
        row = {**meta[job.scan_key], **payload}
        if status == "cached":
            row["shape"] = old[job.scan_key]["shape"]
            result.skipped_cached += 1
        else:
            result.ingested += 1
        rows.append(row)
    _flag_small_classes(rows, shots, table, result)
    _assign_splits(rows, test_fraction, split_seed)
    write_manifest(out, rows)
    write_reference(out, rows, cfg)
    result.seconds = time.perf_counter() - t0
    _write_reports(out, result, cfg)
    return result


def write_reference(out: Path, rows: list[dict], cfg: DataConfig) -> None:
    """``data.normative: pool``: ``out/normative.npz``, the reference of the train split's scans
    (at most ``MAX_POOL``, in scan-key order: the keys are keyed hashes, so a random sample),
    fitted again only when those scans (keys, sources, preprocessing) changed; removed when
    ``normative`` is none, so a cohort never applies a stale reference."""
    path = Path(out) / NORMATIVE_FILE
    if cfg.normative == "none":
        path.unlink(missing_ok=True)
        return
    pool = sorted((r["scan_key"], r.get("source_sha256", ""), r.get("prep_sha256", ""))
                  for r in rows if r["split"] == "train")[:MAX_POOL]
    if len(pool) < 2:
        raise ValueError(f"{out}: data.normative: pool needs at least 2 train-split scans for its reference, "
                         f"found {len(pool)}")
    tag = hashlib.sha256(json.dumps(pool).encode()).hexdigest()
    if path.exists() and NormativeReference.load(path).pool == tag:
        return
    keys, arrays = [p[0] for p in pool], Path(out) / "arrays"
    fit_reference([np.load(arrays / f"{k}.npy") for k in keys], [np.load(arrays / f"{k}.mask.npy") for k in keys],
                  keys, tag).save(path)


def _plan_jobs(found, table: LabelTable | None, old: dict, cfg: DataConfig, prep: str,
               result: IngestResult) -> tuple[list["_Job"], dict]:
    """One job per scan to convert (label problems and duplicates quarantined on the way), with
    its manifest row so far; label rows that match no scan become label issues."""
    jobs, meta, used = [], {}, set()
    for src in found.scans:
        label, problem = _label_of(src, table, used)
        if problem:
            result.quarantined.append((str(src.path), problem))
            continue
        scan_key = pseudonym(f"{src.subject_id}/{src.scan_id}", "scan")
        if scan_key in meta:   # the same scan reached twice (e.g. through a symlink)
            result.quarantined.append((str(src.path), "duplicate of another scan in this ingest (same subject and scan id)"))
            continue
        prev = old.get(scan_key)
        cached = (prev["source_sha256"], prev.get("prep_sha256", "")) if prev else None
        jobs.append(_Job(src, scan_key, cached))
        meta[scan_key] = {"scan_key": scan_key, "subject_key": pseudonym(src.subject_id, "sub"), "label": label,
                          "split": src.split, "spacing": cfg.spacing, "kind": src.kind, "prep_sha256": prep}
    if table is not None:
        for key in sorted(set(table.labels) - used, key=lambda k: table.lines[k][0]):
            result.label_issues.append((str(table.path), f"line {table.lines[key][0]}: {table.column} matches no scan found"))
    return jobs, meta


def _write_reports(out: Path, result: IngestResult, cfg: DataConfig) -> None:
    """``quarantine.csv`` (bad scans and label problems) and ``ingest.json`` (counts)."""
    result.quarantined.sort()
    with open(out / "quarantine.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "reason"])
        w.writerows(result.quarantined + result.label_issues)
    (out / "ingest.json").write_text(json.dumps({"counts": result.counts(), "seconds": round(result.seconds, 2),
                                                 "data": vars(cfg)}, indent=2, default=list))


def _flag_small_classes(rows: list[dict], shots: int, table: LabelTable | None, result: IngestResult) -> None:
    """A class with no more subjects than ``shots`` cannot give K support and one query subject."""
    if shots <= 0:
        return
    subjects: dict[str, set[str]] = {}
    for r in rows:
        if r["label"]:
            subjects.setdefault(r["label"], set()).add(r["subject_key"])
    scans = Counter(r["label"] for r in rows if r["label"])
    where = str(table.path) if table is not None else "labels"
    for label, subs in sorted(subjects.items()):
        if len(subs) <= shots:
            result.label_issues.append((where, f"class '{label}' has {scans[label]} scan(s) of {len(subs)} subject(s): "
                                               f"too few for {shots}-shot episodes (K support subjects plus a query subject)"))


def write_manifest(out: Path, rows: list[dict]) -> None:
    tmp = Path(out) / "manifest.csv.tmp"
    fields = MANIFEST_FIELDS + OPTIONAL_FIELDS
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in sorted(rows, key=lambda r: r["scan_key"]):
            w.writerow({k: r.get(k, "") for k in fields})
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
