"""The ingest fuzzer (bench/fuzz_ingest.py) in CI: a few hundred mutated DICOM and NIfTI files,
each ingested in a worker process, with no crash, no hang, no file missing from the counts
and every reason one line. The 10,000-case run and its figures: docs/performance.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "bench" / "fuzz_ingest.py"


def _fuzz(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(FUZZ), "--json", str(out), *args], capture_output=True, text=True,
                          timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                            "MEDCL_SITE_SECRET": "fuzz-secret"})
    assert out.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def test_few_hundred_mutated_files_crash_hang_and_lose_nothing(tmp_path):
    proc, res = _fuzz(tmp_path, "--cases", "240", "--workers", "2", "--seed", "13", "--timeout", "30")
    assert res["failures"] == [], res["failures"][:10]
    assert proc.returncode == 0 and res["cases"] == 240
    kinds = set(res["by_seed_and_mutation"])
    for seed in ("series", "enhanced", "nii", "niigz"):     # every seed under several mutations
        assert sum(k.startswith(seed + "/") for k in kinds) >= 4, kinds
    assert res["distinct_reason_kinds"] >= 12               # the mutations reach many different checks
    assert proc.stderr.strip() == "", proc.stderr[-2000:]   # nothing but the summary: no stray log line


def test_the_fuzzer_reports_a_hang(tmp_path):
    """With a time limit no ingest can meet, every case is a hang, the worker is replaced and
    the run still counts every case (the harness can fail)."""
    proc, res = _fuzz(tmp_path, "--cases", "3", "--workers", "1", "--timeout", "0.001")
    assert proc.returncode == 1 and res["cases"] == 3
    assert [f["problem"].split(":")[0] for f in res["failures"]] == ["hang"] * 3
