"""PHI audit: scan an output tree for the identifying values found in the source DICOM headers.

``medcl audit-phi OUTPUT_DIR --dicom SRC`` reads the identifying fields (PS3.15 Annex E, Basic
Application Level Confidentiality Profile: names, IDs, dates, accession number, institution,
UIDs ...) of every DICOM file under SRC, derives the forms a value may take in text (a name's
components, a date as ``YYYY-MM-DD`` ...), and looks for them, case-insensitively, in every file
name and file content under OUTPUT_DIR, inside ``.gz`` files and zip archives (``.npz``, ``.zip``)
too. A hit is reported as ``path: field`` and never shows the value itself.
"""

from __future__ import annotations

import gzip
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcl.data import dicom
from medcl.data.errors import IngestError
from medcl.data.sources import walk_files

PHI_FIELDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs", "OtherPatientNames",
    "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "MedicalRecordLocator",
    "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "RequestingPhysician",
    "NameOfPhysiciansReadingStudy", "StationName", "DeviceSerialNumber",
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
)
MIN_LEN = 4                      # shorter values would match everywhere (documented in docs/data.md)
NOT_IDENTIFYING = {"anonymous", "anon", "unknown", "none", "n/a", "removed", "deidentified"}
CHUNK = 1 << 22


@dataclass(frozen=True)
class Hit:
    path: str        # relative to the audited folder (with ``!member`` for archive members)
    field: str       # the DICOM field whose value was found
    where: str       # "name" or "content"

    def line(self) -> str:
        return f"{self.path}: {self.field} value found in the file {self.where}"


def _forms(field: str, value: str) -> set[str]:
    """The text forms in which ``value`` of ``field`` could appear in an output."""
    value = value.strip()
    forms = {value}
    if field.endswith("Date") and re.fullmatch(r"\d{8}", value):
        y, m, d = value[:4], value[4:6], value[6:]
        forms |= {f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}"}
    if "^" in value:                          # PN: family^given^middle^prefix^suffix (PS3.5 6.2)
        parts = [p.strip() for p in value.split("^") if p.strip()]
        forms |= set(parts) | {" ".join(parts), " ".join(reversed(parts[:2]))}
    return {f for f in forms if len(f) >= MIN_LEN and f.lower() not in NOT_IDENTIFYING}


def phi_values(sources: list[Path]) -> dict[str, str]:
    """{text form: field} of the identifying values in every DICOM file under ``sources``."""
    needles: dict[str, str] = {}
    for root in sources:
        files, _ = walk_files(Path(root))
        for f in files:
            try:
                with dicom.quiet():
                    ds = dicom.read_dataset(f, pixels=False)
                    header = {field: ds.get(field) for field in PHI_FIELDS}
            except (dicom.NotDicom, IngestError):
                continue
            for field, elem in header.items():
                if elem in (None, ""):
                    continue
                items = elem if isinstance(elem, (list, tuple)) or type(elem).__name__ == "MultiValue" else [elem]
                for v in items:
                    for form in _forms(field, str(v)):
                        needles.setdefault(form, field)
    return needles


class _Matcher:
    """Case-insensitive search for many needles at once (a site has thousands: every file has
    its own SOPInstanceUID). Every needle has at least 4 bytes: the buffer's 4-byte windows are
    compared with the needles' first 4 bytes in one vectorised pass, and only the candidate
    positions are checked in full. A value inside a longer token counts (a study date inside a
    Siemens UID is a leak of the date)."""

    def __init__(self, needles: dict[str, str]):
        self.field = {n.lower(): f for n, f in needles.items()}
        self.by_prefix: dict[int, list[tuple[str, bytes]]] = {}
        for n in sorted(self.field):
            b = n.encode()
            self.by_prefix.setdefault(int.from_bytes(b[:4], "little"), []).append((n, b))
        self.keys = np.array(sorted(self.by_prefix), dtype=np.uint32)
        self.first2 = np.zeros(1 << 16, bool)
        self.first2[self.keys & 0xFFFF] = True
        self.overlap = max(len(n.encode()) for n in self.field) - 1

    def find(self, data: bytes) -> set[str]:
        if len(data) < 4:
            return set()
        low = data.lower()
        a = np.frombuffer(low, np.uint8)
        pairs = a[:-3].astype(np.uint16) | (a[1:-2].astype(np.uint16) << 8)
        pos = np.flatnonzero(self.first2[pairs])                       # first two bytes match
        a32 = a.astype(np.uint32)
        windows = a32[pos] | (a32[pos + 1] << 8) | (a32[pos + 2] << 16) | (a32[pos + 3] << 24)
        slot = np.minimum(np.searchsorted(self.keys, windows), len(self.keys) - 1)
        found: set[str] = set()
        for i, w in zip(pos[self.keys[slot] == windows].tolist(), windows[self.keys[slot] == windows].tolist()):
            for n, b in self.by_prefix[w]:
                if n not in found and low.startswith(b, i):
                    found.add(n)
        return found

    def redact(self, text: str) -> str:
        """``text`` with every needle replaced by ``<Field>`` (hit lines never show a value)."""
        for n in sorted(self.find(text.encode()), key=lambda x: -len(x)):
            i = text.lower().find(n)
            while i >= 0:
                text = text[:i] + f"<{self.field[n]}>" + text[i + len(n):]
                i = text.lower().find(n)
        return text

    def scan(self, read) -> set[str]:
        found: set[str] = set()
        tail = b""
        while True:
            chunk = read(CHUNK)
            if not chunk:
                return found
            buf = tail + chunk
            found |= self.find(buf)
            tail = buf[-self.overlap:] if self.overlap else b""


def audit(output: Path, needles: dict[str, str]) -> list[Hit]:
    """Every place under ``output`` where a value of ``needles`` occurs (names and contents)."""
    output = Path(output)
    if not needles:
        return []
    m = _Matcher(needles)
    hits: list[Hit] = []
    files, _ = walk_files(output)
    for f in files:
        rel = f.relative_to(output).as_posix() if f != output else f.name
        shown = m.redact(rel)
        for n in sorted(m.find(rel.encode())):
            hits.append(Hit(shown, m.field[n], "name"))
        if f.is_symlink() or not f.is_file():
            continue
        for member, found in _scan_file(f, m):
            hits.extend(Hit(shown + m.redact(member), m.field[n], "content") for n in sorted(found))
    return hits


def _scan_file(f: Path, m: _Matcher) -> list[tuple[str, set[str]]]:
    results = []
    with open(f, "rb") as fh:
        results.append(("", m.scan(fh.read)))
    if f.name.endswith(".gz"):
        try:
            with gzip.open(f, "rb") as fh:
                results.append(("!gunzip", m.scan(fh.read)))
        except (OSError, EOFError):
            pass
    if zipfile.is_zipfile(f):
        try:
            with zipfile.ZipFile(f) as zf:
                for name in zf.namelist():
                    with zf.open(name) as fh:
                        found = m.scan(fh.read) | m.find(name.encode())
                    results.append((f"!{name}", found))
        except (OSError, zipfile.BadZipFile, NotImplementedError):
            pass
    return results
