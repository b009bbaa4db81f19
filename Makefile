# Two commands on a fresh machine: `make repro` runs the pipeline, `make test` runs the tests
# (`make lint` checks style and types).
# Both create .venv and install the pinned dependencies first; a second call skips that.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The offline page for `dvc plots show|diff` (.dvc/config's plots.html_template), from the pinned vl-convert.
PLOTS_PAGE := .dvc/offline_plots.html
# dvc.yaml's stages call the `pipeline` console script, so the venv's bin must be on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test lint bench sweep clean

install: $(STAMP) $(PLOTS_PAGE)
	$(BIN)/python -m pipeline.model.recurrence

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

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

# Benchmarks print ratios measured side by side in one run; run them on an idle machine.
bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/train_processes.py
	$(BIN)/python benchmarks/predict_throughput.py

# The training-window search: BiRNN configurations x 3 seeds as queued DVC experiments.
sweep: $(STAMP)
	$(BIN)/python sweeps/window_search.py

clean:
	rm -rf $(VENV)
