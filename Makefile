# Two commands on a fresh machine: `make repro` runs the pipeline, `make test` runs the tests
# (`make lint` checks style and types).
# Both create .venv and install the pinned dependencies first; a second call skips that.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ONNX_VENV := .venv-onnx
ONNX_STAMP := $(ONNX_VENV)/.installed
# The offline page for `dvc plots show|diff` (.dvc/config's plots.html_template), from the pinned vl-convert.
PLOTS_PAGE := .dvc/offline_plots.html
# dvc.yaml's stages call the `pipeline` console script, so the venv's bin must be on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test lint docs bench sweep clean

install: $(STAMP) $(ONNX_STAMP) $(PLOTS_PAGE)
	$(BIN)/python -m pipeline.model.recurrence

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# onnxruntime and numpy alone, no torch and no pipeline: tests/test_export.py serves the
# exported ONNX models from here, as a server without this package would.
$(ONNX_STAMP): requirements-onnxruntime.lock
	test -x $(ONNX_VENV)/bin/python || $(PYTHON) -m venv $(ONNX_VENV)
	$(ONNX_VENV)/bin/python -m pip install --quiet -r requirements-onnxruntime.lock
	touch $(ONNX_STAMP)

$(PLOTS_PAGE): $(STAMP)
	$(BIN)/pipeline plots-template --output $@

repro: install
	$(BIN)/dvc repro

test: install
	$(BIN)/python -m pytest -q

# Style and types, configured in pyproject.toml: the same checks for everyone and for CI.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy pipeline

# The docs/ pages as a site in site/ (mkdocs.yml); --strict fails on a broken link or anchor.
# NO_MKDOCS_2_WARNING=1 turns off the theme's end-of-life banner, printed on every build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Benchmarks print ratios measured side by side in one run; run them on an idle machine.
bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/train_runs.py
	$(BIN)/python benchmarks/runs_at_once.py
	$(BIN)/python benchmarks/repro_floor.py
	$(BIN)/python benchmarks/stacked_runs.py
	$(BIN)/python benchmarks/train_processes.py
	$(BIN)/python benchmarks/predict_throughput.py

# The training-window search: BiRNN configurations x 3 seeds as queued DVC experiments.
sweep: $(STAMP)
	$(BIN)/python sweeps/window_search.py

clean:
	rm -rf $(VENV) .venv-onnx
