# The two entry points of the README. Each creates or updates .venv/ first.
# torch is pinned in the same pip command as everything else so that a CPU
# machine never pulls a multi-GB CUDA build.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.medcl-installed
OUT    ?= out/demo
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup demo test bench

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/medcl demo --config configs/demo.yaml --out $(OUT)

test: setup
	$(PY) -m pytest -q

