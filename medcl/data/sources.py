"""Discover scans under the paths a user gives, and read labels.

A :class:`ScanSource` names one scan to ingest: where it is, which subject it belongs to
(the identifier as the site knows it, pseudonymised at ingest) and how to read it.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_BIDS_SUB = re.compile(r"sub-([A-Za-z0-9]+)")


@dataclass(frozen=True)
class ScanSource:
    path: Path
    subject_id: str      # site identifier, never written out: pseudonymised at ingest
    scan_id: str         # distinguishes several scans of one subject
    kind: str            # "nifti"


@dataclass
class Discovery:
    scans: list[ScanSource]
    ignored: list[tuple[Path, str]]   # (path, reason) of files that are not scans


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def nifti_ids(path: Path) -> tuple[str, str]:
    """(subject id, scan id) from a file name: BIDS ``sub-XX`` if present, else the stem."""
    stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    match = _BIDS_SUB.search(stem)
    subject = match.group(1) if match else stem
    return subject, stem


def discover(paths: list[Path]) -> Discovery:
    """Walk ``paths`` (files or folders, any depth) and list the NIfTI scans found."""
    scans: list[ScanSource] = []
    ignored: list[tuple[Path, str]] = []
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(
            Path(d) / f for d, _, fs in os.walk(root) for f in fs
        )
        if not root.exists():
            ignored.append((root, "does not exist"))
        for f in files:
            if is_nifti(f):
                subject, scan = nifti_ids(f)
                scans.append(ScanSource(f, subject, scan, "nifti"))
            else:
                ignored.append((f, "not a recognised scan file"))
    return Discovery(scans, ignored)


def read_labels(path: Path) -> dict[str, str]:
    """``subject,label`` CSV -> {subject id: label}; conflicting labels are an error."""
    labels: dict[str, str] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"subject", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: label CSV needs the columns subject,label")
        for row in reader:
            sid, label = row["subject"].strip(), row["label"].strip()
            if sid in labels and labels[sid] != label:
                raise ValueError(f"{path}: subject on line {reader.line_num} has conflicting labels")
            labels[sid] = label
    return labels
