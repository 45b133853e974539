# ditserve — one target per habit. The README's two commands are `make serve` and `make test`.
#
# torch is installed before the package, on its own, so that the build fits the machine: with an
# NVIDIA driver (nvidia-smi on PATH) the CUDA build from PyPI, otherwise the CPU build
# (torch==2.13.0, which these machines hold on disk). Override with TORCH_SPEC / TORCH_INDEX, e.g.
#   make setup TORCH_INDEX=--index-url=<your PyTorch CPU wheel index>

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(HAS_GPU),torch>=2.6$(comma)<2.15,torch==2.13.0)
TORCH_INDEX ?=
EXTRAS ?= serve,dev,bench
comma := ,

.PHONY: setup serve test test-all lint format bench train clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed  ## create the venv and install ditserve with its extras

serve: setup  ## set up, then run the embedded digits model (the HTTP/gRPC service comes with issue 5)
	$(BIN)/ditserve generate --prompt seven --seed 0 --num-images 4 --upscale 8 -o out/seven.png
	@echo "Wrote out/seven-*.png. The REST/gRPC service is issue 5; until it lands 'make serve' runs the engine once."

test: setup  ## set up, then run the test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-all: setup  ## every test, the slow measurements included
	$(BIN)/python -m pytest -q -m ""

lint: setup
	$(BIN)/ruff check plugin kernels tests benchmarks
	$(BIN)/ruff format --check plugin kernels tests benchmarks

format: setup
	$(BIN)/ruff format plugin kernels tests benchmarks
	$(BIN)/ruff check --fix plugin kernels tests benchmarks

bench: setup  ## the measurements behind benchmarks/results/
	$(BIN)/python benchmarks/quality_baseline.py

train: setup  ## retrain the embedded models (about 35 minutes on 2 cores)
	$(BIN)/python -m ditserve.quality.classifier
	$(BIN)/python -m ditserve.models.digits.train

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
