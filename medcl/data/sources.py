"""Discover scans under the paths a user gives, and read labels.

A :class:`ScanSource` names one scan to ingest: where it is, which subject it belongs to
(the identifier as the site knows it, pseudonymised at ingest, never written out) and how to
read it. Four kinds of input are recognised (docs/data.md):

* NIfTI files (``.nii``, ``.nii.gz``), subject from a BIDS-style ``sub-XX`` in the name, else the stem;
* BIDS datasets (a folder given on the command line that holds ``dataset_description.json``):
  ``sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]`` for each of ``data.bids_suffixes``, labels from
  the ``data.bids_label_column`` column of ``participants.tsv``;
* DICOM files in folder trees of any depth, grouped into series and volumes
  (:mod:`medcl.data.dicom`), subject from PatientID (0010,0020);
* MedMNIST-style ``.npz`` files (``train_images``, ``train_labels``, ``val_*``, ``test_*``),
  one scan per image, keeping the given splits.

Everything else is ignored and counted. Files that look like scans but cannot be read are
``problems`` (quarantined, with their reason).
"""

from __future__ import annotations

import csv
import os
import re
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medcl.config import DataConfig
from medcl.data import dicom
from medcl.data.dicom_geometry import Frame, group_frames, skip_reason
from medcl.data.errors import IngestError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NPZ_SPLITS = ("train", "val", "test")
NON_SCAN_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".md", ".html", ".xml", ".py", ".yaml", ".yml",
                     ".pdf", ".png", ".jpg", ".jpeg", ".gif", ".bval", ".bvec", ".log", ".zip")
_BIDS_SUB = re.compile(r"sub-([A-Za-z0-9]+)")


@dataclass(frozen=True)
class ScanSource:
    path: Path
    subject_id: str      # site identifier, never written out: pseudonymised at ingest
    scan_id: str         # distinguishes several scans of one subject (never written out either)
    kind: str            # "nifti" | "dicom" | "npz"
    members: tuple[tuple[str, int], ...] = ()   # dicom: the (file, frame) pairs of the volume
    item: tuple[str, int] = ("", -1)            # npz: (split, index)
    label: str = ""      # label given by the source itself (npz labels, BIDS participants.tsv)
    split: str = ""      # split given by the source itself (npz)


@dataclass
class Discovery:
    scans: list[ScanSource] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)    # files that are not scans
    problems: list[tuple[Path, str]] = field(default_factory=list)   # scan files that cannot be read
    skipped: list[tuple[Path, str]] = field(default_factory=list)    # DICOM series excluded by the rules


def nifti_ids(path: Path) -> tuple[str, str]:
    """(subject id, scan id) from a file name: BIDS ``sub-XX`` if present, else the stem."""
    stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    match = _BIDS_SUB.search(stem)
    subject = match.group(1) if match else stem
    return subject, stem


# ------------------------------------------------------------------------------- walking


def walk_files(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every file under ``root`` (following folder symlinks once), and (path, reason) for
    folders that cannot be listed or that a symlink loop reaches again."""
    root = Path(root)
    if root.is_file() or root.is_symlink() and not root.is_dir():
        return [root], []
    if not root.exists():
        return [], [(root, "does not exist")]
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    seen: set[tuple[int, int]] = set()

    def onerror(exc: OSError) -> None:
        problems.append((Path(exc.filename or root), f"cannot list folder ({exc.strerror})"))

    for d, dirs, fs in os.walk(root, onerror=onerror, followlinks=True):
        st = os.stat(d)
        if (st.st_dev, st.st_ino) in seen:
            problems.append((Path(d), "symlink loop (folder already visited)"))
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        files.extend(Path(d) / f for f in sorted(fs))
    return files, problems


def is_bids_root(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "dataset_description.json").is_file()


# ----------------------------------------------------------------------------- discovery


def discover(paths: list[Path], cfg: DataConfig | None = None, workers: int = 1) -> Discovery:
    """Walk ``paths`` (files or folders, any depth) and list the scans found (see module doc)."""
    cfg = cfg or DataConfig()
    out = Discovery()
    candidates: list[Path] = []
    for root in (Path(p) for p in paths):
        files, problems = walk_files(root)
        out.problems.extend(problems)
        if is_bids_root(root):
            _discover_bids(root, files, cfg, out)
            continue
        for f in files:
            _classify(f, cfg, out, candidates)
    _discover_dicom(candidates, cfg, out, workers)
    return out


def _file_problem(f: Path) -> str | None:
    """Why a scan-like file cannot even be opened (zero bytes, loop, unreadable), or None."""
    try:
        size = f.stat().st_size
        with open(f, "rb"):
            pass
    except OSError as exc:
        return dicom._os_reason(exc)
    return "empty file (0 bytes)" if size == 0 else None


def _classify(f: Path, cfg: DataConfig, out: Discovery, candidates: list[Path]) -> None:
    name = f.name.lower()
    if name.endswith(NIFTI_SUFFIXES) or name.endswith(".npz"):
        problem = _file_problem(f)
        if problem:
            out.problems.append((f, problem))
        elif name.endswith(".npz"):
            _discover_npz(f, cfg, out)
        else:
            subject, scan = nifti_ids(f)
            out.scans.append(ScanSource(f, subject, scan, "nifti"))
    elif name.endswith(NON_SCAN_SUFFIXES) or name.startswith("."):
        out.ignored.append((f, "not a recognised scan file"))
    else:
        candidates.append(f)   # DICOM files often have no suffix: the header decides


def _discover_bids(root: Path, files: list[Path], cfg: DataConfig, out: Discovery) -> None:
    labels = _participants_labels(root / "participants.tsv", cfg.bids_label_column)
    pattern = re.compile(r"^sub-([A-Za-z0-9]+)(?:/ses-([A-Za-z0-9]+))?/anat/sub-[^/]*_(%s)\.nii(\.gz)?$"
                         % "|".join(re.escape(s) for s in cfg.bids_suffixes))
    for f in files:
        rel = f.relative_to(root).as_posix()
        m = pattern.match(rel)
        if not m:
            out.ignored.append((f, "not a BIDS anat image of data.bids_suffixes"))
            continue
        problem = _file_problem(f)
        if problem:
            out.problems.append((f, problem))
            continue
        subject = m.group(1)
        stem = f.name[: -len(".nii.gz")] if f.name.endswith(".nii.gz") else f.name[: -len(".nii")]
        out.scans.append(ScanSource(f, subject, stem, "nifti", label=labels.get(subject, "")))


def _participants_labels(path: Path, column: str) -> dict[str, str]:
    """BIDS participants.tsv -> {subject without 'sub-': label} from ``column`` (if present)."""
    if not path.is_file() or not column:
        return {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if not reader.fieldnames or "participant_id" not in reader.fieldnames or column not in reader.fieldnames:
            return {}
        return {row["participant_id"].strip().removeprefix("sub-"): row[column].strip()
                for row in reader if row[column] and row[column].strip() not in ("n/a", "")}


def npy_member_shape(zf: zipfile.ZipFile, name: str) -> tuple[int, ...]:
    """Shape of an array in an .npz without reading its data (NEP 1 .npy header)."""
    with zf.open(name) as fh:
        version = np.lib.format.read_magic(fh)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in reader:
            raise ValueError(f"npy format version {version}")
        shape, _, _ = reader[version](fh)
    return tuple(shape)


def _discover_npz(f: Path, cfg: DataConfig, out: Discovery) -> None:
    """MedMNIST-style .npz: ``{split}_images`` (N, D, H, W[, 1]) and ``{split}_labels``."""
    try:
        with zipfile.ZipFile(f) as zf:
            names = set(zf.namelist())
            shapes = {s: npy_member_shape(zf, f"{s}_images.npy") for s in NPZ_SPLITS if f"{s}_images.npy" in names}
        if not shapes:
            out.problems.append((f, "npz without train_images, val_images or test_images arrays"))
            return
        with np.load(f, allow_pickle=False) as npz:
            labels = {s: np.asarray(npz[f"{s}_labels"]).reshape(shapes[s][0], -1)
                      for s in shapes if f"{s}_labels" in npz.files}
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, KeyError) as exc:
        out.problems.append((f, f"unreadable npz ({type(exc).__name__}: {dicom.scrub(str(exc))})"))
        return
    stem = f.name[: -len(".npz")]
    for split, shape in shapes.items():
        vol = shape[1:-1] if len(shape) == 5 and shape[-1] == 1 else shape[1:]
        if len(vol) != 3:
            out.problems.append((f, f"{split}_images has shape {shape}: not a stack of 3D volumes (2D images?)"))
            continue
        lab = labels.get(split)
        if lab is not None and lab.shape[1] != 1:
            out.problems.append((f, f"{split}_labels has {lab.shape[1]} columns: only one label per image is supported"))
            lab = None
        for i in range(shape[0]):
            label = "" if lab is None else str(lab[i, 0].item())
            out.scans.append(ScanSource(f, f"{stem}/{split}/{i}", f"{stem}/{split}/{i}", "npz",
                                        item=(split, i), label=label, split=split))


def _dicom_header(path: Path) -> tuple[str, object]:
    """("frames", [Frame]) | ("ignored", reason) | ("problem", reason) for one file."""
    problem = _file_problem(path)
    if problem:
        if problem.startswith("empty") and not path.name.lower().endswith(dicom.DICOM_SUFFIXES):
            return "ignored", "empty file"
        return "problem", problem
    try:
        return "frames", dicom.read_frames(path)
    except dicom.NotDicom:
        return "ignored", "not DICOM and not a recognised scan file"
    except IngestError as exc:
        return "problem", str(exc)


def _read_headers(files: list[Path], workers: int) -> list[tuple[str, object]]:
    if workers <= 1 or len(files) < 4000:   # the fast header path reads ~3000 files a second
        return [_dicom_header(f) for f in files]
    from multiprocessing import get_context

    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(_dicom_header, files, chunksize=max(16, len(files) // (8 * workers))))


def _discover_dicom(files: list[Path], cfg: DataConfig, out: Discovery, workers: int) -> None:
    frames: list[Frame] = []
    for f, (what, value) in zip(files, _read_headers(files, workers)):
        if what == "frames":
            frames.extend(value)
        elif what == "ignored":
            out.ignored.append((f, value))
        else:
            out.problems.append((f, value))
    by_series: dict[str, list[Frame]] = {}
    for fr in frames:
        by_series.setdefault(fr.series_uid, []).append(fr)
    for uid, series in sorted(by_series.items(), key=lambda kv: min(f.path for f in kv[1])):
        first = Path(min(f.path for f in series))
        n_files = len({f.path for f in series})
        why = skip_reason(series[0], cfg.dicom_modalities, cfg.dicom_include, cfg.dicom_exclude,
                                cfg.dicom_skip_image_types)
        if why:
            out.skipped.append((first, f"DICOM series of {n_files} file(s) skipped: {why}"))
            continue
        if not uid:
            out.problems.append((first, "DICOM without SeriesInstanceUID (0020,000E): cannot group it into a series"))
            continue
        if not series[0].patient_id:
            out.problems.append((first, "DICOM without PatientID (0010,0020): cannot assign a subject key"))
            continue
        groups = group_frames(series)
        biggest = max(len(g) for g in groups)
        for k, g in enumerate(groups):
            path = Path(g[0].path)
            if len(groups) > 1 and len(g) < cfg.dicom_min_slices and len(g) < biggest:
                out.problems.append((path, f"mixed orientations, sizes or echoes in one series: {len(g)} image(s) "
                                           f"differ from the other {len(series) - len(g)} and are too few for a volume"))
                continue
            scan_id = uid if len(groups) == 1 else f"{uid}#{k}"
            out.scans.append(ScanSource(path, g[0].patient_id, scan_id, "dicom",
                                        members=tuple((f.path, f.frame) for f in g)))


# -------------------------------------------------------------------------------- labels


@dataclass
class LabelTable:
    """A label CSV: ``subject,label`` or ``scan,label`` (joined on the subject or scan id)."""

    path: Path
    column: str                                   # "subject" or "scan"
    labels: dict[str, str]                        # id -> label (first line that names it)
    lines: dict[str, list[int]]                   # id -> CSV line numbers
    conflicts: set[str] = field(default_factory=set)

    def lookup(self, src: ScanSource) -> tuple[str | None, str]:
        """(key found in the table or None, label)."""
        keys = [src.subject_id] if self.column == "subject" else [src.scan_id, src.scan_id.split("#")[0]]
        for k in keys:
            if k in self.labels:
                return k, self.labels[k]
        return None, ""


def read_labels(path: Path) -> LabelTable:
    """Read a label CSV; a missing column or unreadable file is a ValueError (one line).

    A subject (or scan) given two different labels is kept in ``conflicts``: its scans are
    quarantined by ingest, the rest of the table is used."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or [])
            column = "subject" if "subject" in cols else "scan" if "scan" in cols else None
            if column is None or "label" not in cols:
                raise ValueError(f"{path}: label CSV needs the columns subject,label (or scan,label)")
            table = LabelTable(path, column, {}, {})
            for row in reader:
                key, label = (row[column] or "").strip(), (row["label"] or "").strip()
                if not key:
                    continue
                table.lines.setdefault(key, []).append(reader.line_num)
                if key in table.labels and table.labels[key] != label:
                    table.conflicts.add(key)
                table.labels.setdefault(key, label)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read label CSV ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: label CSV is not UTF-8 text") from None
    return table
