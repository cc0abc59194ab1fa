# minids: the two commands (see README), plus a few helpers.
#   make lab     create .venv, install minids with the notebook extras, open JupyterLab on notebooks/
#   make test    create .venv, install minids[dev] and the parity extra, lint, run the tests
#                (notebooks in smoke mode). PARITY=0 skips the parity extra (torch + transformers,
#                large downloads on most machines); its tests then skip, saying so.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
PARITY ?= 1
VENV := .venv
BIN := $(VENV)/bin

.PHONY: lab test smoke notebooks bench bench-torch figures data lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.lab-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[lab]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

$(VENV)/.parity-installed: pyproject.toml | $(VENV)/.dev-installed
	$(BIN)/python -m pip install --quiet -e ".[dev,parity]"
	touch $@

lab: $(VENV)/.lab-installed
	$(BIN)/jupyter lab notebooks/

test: $(VENV)/.dev-installed $(if $(filter 1,$(PARITY)),$(VENV)/.parity-installed)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist worksteal

smoke: $(VENV)/.dev-installed
	$(BIN)/python -m pytest tests/test_notebooks.py

# Execute every notebook in normal mode and write it back with its outputs, metadata noise
# stripped (tools/notebooks.py); NB="01_moe 03_fp8" runs just those.
notebooks: $(VENV)/.dev-installed
	$(BIN)/python tools/notebooks.py $(NB)

bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_moe.py
	$(BIN)/python benchmarks/bench_mla.py
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_grpo.py
	$(BIN)/python benchmarks/bench_fp8.py
	$(BIN)/python benchmarks/bench_matmul.py

bench-torch: $(VENV)/.parity-installed
	$(BIN)/python benchmarks/bench_torch.py

figures: $(VENV)/.dev-installed
	$(BIN)/python -m minids train --preset tiny --out runs/tiny --no-progress
	mkdir -p docs/figures && cp runs/tiny/loss.png docs/figures/tiny_loss.png
	$(BIN)/python tools/figures.py

data: $(VENV)/.dev-installed
	$(BIN)/python -m minids.data

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
