# The two entry points of the README. Each creates or updates .venv/ first, with only what it
# needs: `make demo` the package and its dependencies, `make test` also the test extra
# (pytest, reference implementations, linters, dcm2niix, heudiconv's DICOM files, psycopg2).
# torch is pinned in the same pip command as everything else so that a CPU machine never
# pulls a multi-GB CUDA build.
VENV       := .venv
PY         := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.medcl-installed
TEST_STAMP := $(VENV)/.medcl-test-installed
TORCH      := torch==2.13.0
OUT        ?= out/demo
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup setup-test demo test bench

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet "$(TORCH)" -e .
	touch $(DEMO_STAMP)

$(TEST_STAMP): $(DEMO_STAMP)
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[test]"
	touch $(TEST_STAMP)

setup: $(DEMO_STAMP)

setup-test: $(TEST_STAMP)

demo: setup
	$(VENV)/bin/medcl demo --config configs/demo.yaml --out $(OUT)

test: setup-test
	$(PY) -m pytest -q
