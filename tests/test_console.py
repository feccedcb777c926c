"""The console of a medcl command (medcl/tracking/console.py), and what `make demo` and `make
test` install. (The demo's whole console is checked in tests/test_e2e.py.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CODE = r"""
import logging, sys, warnings
from medcl.tracking import console
from mlflow.utils.logging_utils import enable_logging, eprint
console.configure(verbose=sys.argv[1] == "verbose")
enable_logging()                                   # as MLflow's own code does now and then
eprint("Successfully registered model 'm'.")
logging.getLogger("mlflow.store").info("INFO line of MLflow")
logging.getLogger("mlflow.store").warning("WARNING line of MLflow")
for i in range(3):
    warnings.warn("the same warning", UserWarning)
warnings.warn("another warning", UserWarning)
import os; print("BAR", os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"))
"""


def _console(mode: str, env_extra: dict | None = None) -> str:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MLFLOW_")}
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_quiet_console_keeps_warnings_once_and_drops_mlflow_status_lines():
    out = _console("quiet")
    assert "Successfully registered" not in out and "INFO line" not in out
    assert "WARNING mlflow.store: WARNING line of MLflow" in out
    assert out.count("UserWarning: the same warning") == 1 and out.count("UserWarning: another warning") == 1
    assert "BAR false" in out
    # what the user set wins
    assert "BAR true" in _console("quiet", {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "true"})


def test_verbose_console_shows_mlflow_as_it_is():
    out = _console("verbose")
    assert "Successfully registered model 'm'." in out and "INFO mlflow.store: INFO line of MLflow" in out
    assert "BAR None" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_installs_only_the_package_and_make_test_adds_the_test_extra(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)

    def dry(target: str) -> list[str]:
        proc = subprocess.run(["make", "-n", target], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return [line for line in proc.stdout.splitlines() if "pip install" in line and "--upgrade pip" not in line]

    assert dry("demo") == ['.venv/bin/python -m pip install --quiet "torch==2.13.0" -e .']
    assert dry("test") == ['.venv/bin/python -m pip install --quiet "torch==2.13.0" -e .',
                           '.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[test]"']
    # --no-print-directory: under `make test` this make is a sub-make, which would name its folder
    # (a pytest tmp_path) in "Entering directory" lines
    demo = subprocess.run(["make", "--no-print-directory", "-n", "demo"], cwd=tmp_path, capture_output=True,
                          text=True).stdout
    assert ".venv/bin/medcl demo --config configs/demo.yaml --out out/demo" in demo and "pytest" not in demo
