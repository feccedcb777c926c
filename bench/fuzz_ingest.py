"""Fuzz ingest: random mutations of valid DICOM and NIfTI files, each case ingested in a worker
process under a per-case time limit.

Seeds (real voxels: the MNI template at 8 mm): a 12-slice single-frame DICOM series, one enhanced
multi-frame DICOM file, a ``.nii`` and a ``.nii.gz``. A case copies one seed into its own folder
and mutates one file with one of the mutations below; ``medcl.data.ingest.ingest`` then runs on
the folder. What must hold for every case:

* no crash: ``ingest`` returns (an exception escaping it, or a dead worker, is a failure);
* no hang: the case ends within ``--timeout`` seconds (the worker is killed otherwise);
* no file lost: every file of the folder is in a found scan, quarantined, ignored or in a
  skipped series, and ``found = ingested + cached + quarantined``;
* every reason is one non-empty line without a traceback.

Mutations: truncation, flipped bytes (anywhere or in the header), DICOM elements set to odd
values and types (through pydicom, validation off), DICOM element lengths set huge or
undefined, NIfTI header fields set to odd values, a ``.nii.gz`` whose compressed bytes are cut
or flipped. Workers run with a 3 GiB address-space limit, so a runaway allocation is a
``MemoryError`` (a reason), not a killed machine.

Run: ``.venv/bin/python bench/fuzz_ingest.py --cases 10000 --workers 2 --json out.json``
(figures in docs/performance.md); ``tests/test_fuzz_ingest.py`` runs a few hundred in CI.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import queue
import shutil
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # tests/dicomwrite.py: the series writer

SEEDS = ("series", "enhanced", "nii", "niigz")
DICOM_FIELDS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
                "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept",
                "NumberOfFrames", "PhotometricInterpretation", "SeriesInstanceUID", "PatientID", "Modality",
                "ImageType", "EchoNumbers", "AcquisitionNumber", "SliceThickness", "SOPClassUID")
ODD_VALUES = (0, -1, 1, 3, 65535, 2**31, "", "abc", "nan", "inf", "-1e308", "1e308", "\\".join(["1"] * 9),
              "0\\0\\0", "1\\0\\0\\0\\0\\0", "x" * 5000, b"\xff\xfe", 1.5, None)
NIFTI_FIELDS = {   # NIfTI-1 header: offset, struct format, values count
    "sizeof_hdr": (0, "<i", 1), "dim": (40, "<h", 8), "datatype": (70, "<h", 1), "bitpix": (72, "<h", 1),
    "pixdim": (76, "<f", 8), "vox_offset": (108, "<f", 1), "scl_slope": (112, "<f", 1), "scl_inter": (116, "<f", 1),
    "xyzt_units": (123, "<B", 1), "qform_code": (252, "<h", 1), "sform_code": (254, "<h", 1),
    "quatern": (256, "<f", 6), "srow": (280, "<f", 12), "magic": (344, "<4s", 1)}
NIFTI_ODD = {"h": (0, -1, 1, 7, 255, 32767, -32768, 1234), "i": (0, -1, 348, 540, 2**31 - 1),
             "f": (0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 1e-30, 352.0, 3e9),
             "B": (0, 1, 3, 7, 255), "4s": (b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0", b"xyz\0")}


# ---------------------------------------------------------------------------------- seeds


def make_seeds(root: Path) -> dict[str, Path]:
    """The four valid inputs every case starts from (real voxels, small)."""
    import nibabel as nib

    from dicomwrite import mni_block, write_series

    vol, aff = mni_block(step=8, box=(slice(2, 22), slice(2, 27), slice(5, 17)))
    write_series(vol, aff, root / "series", identity={"PatientID": "FUZZ-1"})
    write_series(vol, aff, root / "enhanced", identity={"PatientID": "FUZZ-2"}, enhanced=True)
    (root / "nifti").mkdir()
    nib.save(nib.Nifti1Image(vol, aff), str(root / "nifti" / "sub-a_T1w.nii"))
    nib.save(nib.Nifti1Image(vol, aff), str(root / "nifti" / "sub-b_T1w.nii.gz"))
    return {"series": root / "series", "enhanced": root / "enhanced", "nii": root / "nifti" / "sub-a_T1w.nii",
            "niigz": root / "nifti" / "sub-b_T1w.nii.gz"}


# ------------------------------------------------------------------------------ mutations


def truncate(raw: bytes, rng) -> bytes:
    return raw[: int(rng.integers(0, len(raw)))]


def flip_bytes(raw: bytes, rng, header_only: bool = False) -> bytes:
    b = bytearray(raw)
    end = min(len(b), 1024) if header_only else len(b)
    for _ in range(int(rng.integers(1, 17))):
        b[int(rng.integers(0, end))] = int(rng.integers(0, 256))
    return bytes(b)


def huge_length(raw: bytes, rng) -> bytes:
    """A DICOM element's length field (explicit VR little endian) set huge, odd or undefined."""
    b = bytearray(raw)
    spots = [i for i in range(132, len(b) - 8) if b[i + 4:i + 6].isalpha() and b[i + 4:i + 6].isupper()
             and b[i + 1] in (0x00, 0x02, 0x08, 0x10, 0x18, 0x20, 0x28, 0x52, 0x7F)][:400]
    if not spots:
        return flip_bytes(raw, rng)
    i = spots[int(rng.integers(0, len(spots)))]
    long_vr = bytes(b[i + 4:i + 6]) in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"UC", b"UR")
    if long_vr:
        struct.pack_into("<I", b, i + 8, int(rng.choice([0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, 1, 3])))
    else:
        struct.pack_into("<H", b, i + 6, int(rng.choice([0xFFFF, 0xFFFE, 0x8001, 1, 3])))
    return bytes(b)


def odd_dicom_value(path: Path, rng) -> None:
    """One element of a DICOM file set to an odd value or type, written without validation."""
    import pydicom
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    ds = pydicom.dcmread(path, force=True)
    name = DICOM_FIELDS[int(rng.integers(0, len(DICOM_FIELDS)))]
    value = ODD_VALUES[int(rng.integers(0, len(ODD_VALUES)))]
    try:
        if value is None:
            if name in ds:
                delattr(ds, name)
        else:
            setattr(ds, name, value)
        ds.save_as(path)
    except Exception:   # pydicom cannot even write it: a plain byte flip instead
        path.write_bytes(flip_bytes(path.read_bytes(), rng, header_only=True))


def odd_nifti_field(raw: bytes, rng) -> bytes:
    b = bytearray(raw)
    name = list(NIFTI_FIELDS)[int(rng.integers(0, len(NIFTI_FIELDS)))]
    offset, fmt, count = NIFTI_FIELDS[name]
    k = int(rng.integers(0, count))
    odd = NIFTI_ODD[fmt.lstrip("<")]
    struct.pack_into(fmt, b, offset + k * struct.calcsize(fmt), odd[int(rng.integers(0, len(odd)))])
    return bytes(b)


def mutate(case: Path, kind: str, rng) -> str:
    """Mutate one file of ``case`` (a copy of seed ``kind``); the mutation's name."""
    files = sorted(p for p in case.rglob("*") if p.is_file())
    target = files[int(rng.integers(0, len(files)))]
    raw = target.read_bytes()
    if kind == "niigz" and rng.random() < 0.5:
        op = str(rng.choice(["truncate", "flip"]))
        target.write_bytes(truncate(raw, rng) if op == "truncate" else flip_bytes(raw, rng))
        return f"gz-{op}"
    if kind == "niigz":
        raw = gzip.decompress(raw)
    ops = ["truncate", "flip", "flip-header", "field"] + (["length"] if kind in ("series", "enhanced") else [])
    op = str(rng.choice(ops))
    if op == "field" and kind in ("series", "enhanced"):
        odd_dicom_value(target, rng)
        return "dicom-field"
    out = {"truncate": lambda: truncate(raw, rng), "flip": lambda: flip_bytes(raw, rng),
           "flip-header": lambda: flip_bytes(raw, rng, header_only=True), "length": lambda: huge_length(raw, rng),
           "field": lambda: odd_nifti_field(raw, rng)}[op]()
    target.write_bytes(gzip.compress(out) if kind == "niigz" else out)
    return op


# -------------------------------------------------------------------------------- one case


def run_case(case: Path) -> dict:
    """Ingest one case folder; the counts, reasons and the files nobody accounted for."""
    from medcl.config import DataConfig
    from medcl.data.ingest import ingest
    from medcl.data.sources import discover

    cfg = DataConfig(spacing=8.0, workers=1)
    src = case / "in"
    found = discover([src], cfg)
    res = ingest([src], case / "out", cfg, progress=False)
    seen = {Path(p) for s in found.scans for p in ([m for m, _ in s.members] if s.kind == "dicom" else [s.path])}
    seen |= {Path(p) for p, _ in found.problems + found.ignored}
    in_skipped = sum(int(r.split("DICOM series of ")[1].split(" ")[0]) for _, r in found.skipped
                     if r.startswith("DICOM series of "))
    files = {p for p in src.rglob("*") if p.is_file()}
    lost = len(files - seen) - in_skipped
    reasons = [r for _, r in res.quarantined]
    return {"counts": res.counts(), "reasons": reasons, "lost": lost}


def _worker(conn) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MEDCL_SITE_SECRET", "medcl-fuzz")   # never the user's site secret file
    while True:
        case = conn.recv()
        if case is None:
            return
        try:
            conn.send(("ok", run_case(Path(case))))
        except BaseException as exc:   # the failure being hunted: report it, keep serving
            conn.send(("crash", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"))


class Worker:
    """One process that ingests cases sent to it; killed (by its own pid) and replaced on a hang."""

    def __init__(self):
        self.conn, child = mp.get_context("spawn").Pipe()
        self.proc = mp.get_context("spawn").Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()

    def run(self, case: Path, timeout: float) -> tuple[str, object]:
        self.conn.send(str(case))
        if self.conn.poll(timeout):
            try:
                return self.conn.recv()
            except EOFError:
                return "crash", f"worker died (exit code {self.proc.exitcode})"
        return "hang", f"no answer within {timeout:g} s"

    def stop(self, kill: bool = False) -> None:
        if kill and self.proc.is_alive():
            self.proc.kill()
        elif self.proc.is_alive():
            self.conn.send(None)
        self.proc.join(10)


# ------------------------------------------------------------------------------ the run


def check(status: str, payload) -> list[str]:
    """The invariants a finished case breaks (empty: it holds them all)."""
    if status != "ok":
        return [f"{status}: {str(payload).splitlines()[0]}"]
    bad = []
    c = payload["counts"]
    if c["found"] != c["ingested"] + c["cached"] + c["quarantined"]:
        bad.append(f"counts do not add up: {c}")
    if payload["lost"] > 0:
        bad.append(f"{payload['lost']} file(s) in no count")
    for r in payload["reasons"]:
        if not r or "\n" in r or "Traceback" in r:
            bad.append(f"reason not one line: {r[:200]!r}")
    return bad


def prepare(i: int, seed: int, seeds: dict[str, Path], work: Path) -> tuple[str, str, Path]:
    """Case ``i``: a copy of one seed in its own folder, one file mutated (reproducible from
    ``seed`` and ``i`` alone). (seed kind, mutation, case folder)."""
    rng = np.random.default_rng([seed, i])
    kind = SEEDS[i % len(SEEDS)]
    case = work / f"case{i:05d}"
    src = seeds[kind]
    if src.is_dir():
        shutil.copytree(src, case / "in" / src.name)
    else:
        (case / "in").mkdir(parents=True)
        shutil.copy(src, case / "in" / src.name)
    return kind, mutate(case / "in", kind, rng), case


def fuzz(n: int, seed: int, workers: int, timeout: float, work: Path) -> dict:
    """Run ``n`` cases on ``workers`` worker processes; the figures and every failure."""
    seeds = make_seeds(work / "seeds")
    for kind, path in seeds.items():                 # each seed, unmutated, must ingest
        case = work / f"pristine-{kind}"
        (case / "in").mkdir(parents=True)
        (shutil.copytree if path.is_dir() else shutil.copy)(path, case / "in" / path.name)
        got = run_case(case)
        if got["counts"]["ingested"] != 1:
            raise SystemExit(f"seed {kind} does not ingest: {got}")
    todo = queue.Queue()
    for i in range(n):
        todo.put(i)
    lock = threading.Lock()
    out = {"stats": Counter(), "reasons": Counter(), "examples": {}, "failures": [], "times": []}

    def serve() -> None:
        worker = Worker()
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                break
            kind, op, case = prepare(i, seed, seeds, work)
            t0 = time.perf_counter()
            status, payload = worker.run(case, timeout)
            elapsed = time.perf_counter() - t0
            if status != "ok":                      # a hung or dead worker is replaced
                worker.stop(kill=True)
                worker = Worker()
            with lock:
                out["stats"][f"{kind}/{op}"] += 1
                out["times"].append(elapsed)
                for r in payload["reasons"] if status == "ok" else []:
                    out["reasons"][_reason_kind(r)] += 1
                    out["examples"].setdefault(_reason_kind(r), r)
                out["failures"] += [{"case": i, "seed": kind, "mutation": op, "problem": b} for b in check(status, payload)]
            shutil.rmtree(case, ignore_errors=True)
        worker.stop()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=serve) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times = out["times"]
    return {"cases": len(times), "seed": seed, "workers": workers, "timeout_s": timeout,
            "seconds": round(time.perf_counter() - t0, 1), "failures": out["failures"],
            "case_seconds": {"median": round(float(np.median(times)), 4), "max": round(float(np.max(times)), 3)},
            "by_seed_and_mutation": dict(sorted(out["stats"].items())),
            "distinct_reason_kinds": len(out["reasons"]), "reasons": out["reasons"].most_common(),
            "examples": out["examples"]}


def _reason_kind(reason: str) -> str:
    """A reason without its numbers and details in parentheses, to count kinds of reason."""
    import re

    return re.sub(r"\(.*", "", re.sub(r"[-+]?\d[\d.e+-]*", "N", reason)).strip()[:90]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per case before it counts as a hang")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medcl-fuzz-") as tmp:
        result = fuzz(args.cases, args.seed, args.workers, args.timeout, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(f"{result['cases']} cases in {result['seconds']} s ({args.workers} workers): {len(result['failures'])} failures; "
          f"case time median {result['case_seconds']['median']} s, max {result['case_seconds']['max']} s; "
          f"{result['distinct_reason_kinds']} kinds of reason")
    for f in result["failures"][:20]:
        print(f"  case {f['case']} ({f['seed']}/{f['mutation']}): {f['problem']}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
