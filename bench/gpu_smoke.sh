#!/usr/bin/env bash
# The GPU-only paths of medcl in one run (under 5 minutes on one GPU): cache placements, views on
# CUDA vs CPU, bf16 steps of every method, sync-debug mode, the GPU-idle fraction, peak memory.
# Prints one table for docs/performance.md. Without a GPU: bench/gpu_smoke.sh --dry-run (CI).
# Usage: bench/gpu_smoke.sh [--dry-run]      (PYTHON=path/to/python to pick the interpreter)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
export MLFLOW_DISABLE_TELEMETRY=true OMP_WAIT_POLICY=PASSIVE
exec timeout 300 "$python" "$here/gpu_smoke.py" "$@"
