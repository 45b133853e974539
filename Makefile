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

.PHONY: setup serve serve-scenes serve-video test test-unit test-all lint format bench train clean proto browser bento

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed  ## create the venv and install ditserve with its extras

serve: setup  ## set up, then serve the embedded digits model: REST + playground on :3000, gRPC on :50051 (127.0.0.1)
	$(BIN)/ditserve serve --config bentos/digits/model.yaml --host 127.0.0.1 --port 3000 --grpc-port 50051

serve-scenes: setup  ## serve the embedded digit-scenes model (text → a 2×2 scene of digits) on the same ports
	$(BIN)/ditserve serve --config bentos/digits-scenes/model.yaml --host 127.0.0.1 --port 3000 --grpc-port 50051

serve-video: setup  ## serve the embedded video model digits-video (text → 8 frames of a moving digit) on the same ports
	$(BIN)/ditserve serve --config bentos/digits-video/model.yaml --host 127.0.0.1 --port 3000 --grpc-port 50051

proto: setup  ## regenerate the gRPC stubs in plugin/ditserve/v1/ from proto/ (a test fails when they are stale)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=plugin --pyi_out=plugin --grpc_python_out=plugin \
		proto/ditserve/v1/diffusion.proto

browser:  ## headless Chromium for the playground test (Debian packages; needs root, as in CI)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

BENTO ?= digits
bento: setup  ## build the deployable Bento bentos/$(BENTO) (BENTO=digits-scenes, digits-video: those models; bentoml locks its requirements with uv)
	$(BIN)/python -m pip wheel -q --no-deps -w dist .
	$(BIN)/bentoml build -f bentos/$(BENTO)/bentofile.yaml .

test: setup browser  ## set up (venv + test browser), then run the test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-unit: setup  ## the fast inner loop: unit tests and the strategy batteries (no servers, no ranks, no browser)
	$(BIN)/python -m pytest -q tests/unit tests/caching tests/sampling tests/quantization

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
	$(BIN)/python benchmarks/quantization.py
	$(BIN)/python benchmarks/serving.py

train: setup  ## retrain the embedded models (about four hours on 2 cores)
	$(BIN)/python -m ditserve.quality.classifier
	$(BIN)/python -m ditserve.models.digits.train
	$(BIN)/python -m ditserve.models.digits.train_lora  # digits-dit's "bold" adapter, on the weights just trained
	$(BIN)/python -m ditserve.models.digits.train_flow
	$(BIN)/python -m ditserve.models.digits.train_unet
	$(BIN)/python -m ditserve.models.digits.train_scenes
	$(BIN)/python -m ditserve.models.digits.train_video
	$(BIN)/python -m ditserve.models.digits.train_video_i2v  # digits-video-i2v, from the digits-video just trained
	for cache in teacache magcache smoothcache block-caching; do \
		$(BIN)/python -m ditserve.caching.calibration --config builtin:digits-video --cache $$cache; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
