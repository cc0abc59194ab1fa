# minids: the two commands (see README), plus a few helpers.
#   make lab     create .venv, install minids with the notebook extras, open JupyterLab on notebooks/
#   make test    create .venv, install minids[dev], lint, run the tests (notebooks in smoke mode)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: lab test smoke bench figures data lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.lab-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[lab]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

lab: $(VENV)/.lab-installed
	$(BIN)/jupyter lab notebooks/

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

smoke: $(VENV)/.dev-installed
	$(BIN)/python -m pytest tests/test_notebooks.py

bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_moe.py
	$(BIN)/python benchmarks/bench_mla.py

figures: $(VENV)/.dev-installed
	$(BIN)/python -m minids train --preset tiny --out runs/tiny --no-progress
	mkdir -p docs/figures && cp runs/tiny/loss.png docs/figures/tiny_loss.png

data: $(VENV)/.dev-installed
	$(BIN)/python -m minids.data

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
