"""bench/gpu_smoke.sh without a GPU: its dry run runs the CPU-visible parts (cache placements,
bf16 autocast steps of every method through the loop's train_step) and reports every CUDA-only
check as skipped; a failing check makes it exit 1. On a GPU the same script measures them all."""

import os
import re
import subprocess
import sys
from pathlib import Path

from medcl.ssl import METHODS

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_smoke_dry_run_passes_and_skips_the_cuda_checks(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path),
           "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_smoke.sh"), "--dry-run"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = dict(re.findall(r"^\| ([^|]+?) \| (ok|skipped|FAILED) \|", r.stdout, re.M))
    assert all(table[f"bf16 steps {m}"] == "ok" for m in METHODS)
    assert table["cache host"] == table["cache stream"] == "ok"
    for cuda_only in ("views CUDA vs CPU", "views sync debug (1 batch)", "sync debug (10 steps)", "GPU idle fraction",
                      "peak memory"):
        assert table[cuda_only] == "skipped"
    assert "FAILED" not in table.values()

