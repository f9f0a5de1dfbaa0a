# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The first use creates .venv and installs everything into it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Without an NVIDIA driver, install the CPU build of torch first (the plain
# requirement would pull a multi-GB CUDA build). On a GPU machine requirements.txt
# alone gets a CUDA build.
TORCH_CPU ?= torch==2.13.0
HAVE_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
# Real pretrained weights for the tests that need them (skipped when absent).
WHISPER_CHECKPOINT ?= $(wildcard $(abspath ../shared/whisper/tiny.en.pt))
export WHISPER_CHECKPOINT
# Real speech for the tests that need it: RAVDESS in its published layout (skipped when absent).
RAVDESS_DIR ?= $(wildcard $(abspath ../shared/ravdess))
export RAVDESS_DIR
# ... and EmoDB (wav/SSTTTEv.wav).
EMODB_DIR ?= $(wildcard $(abspath ../shared/emodb))
export EMODB_DIR

.PHONY: help demo test test-fast gpu-check lint format synthetic bench strip clean

help:
	@echo "make demo       run both notebooks headless on the synthetic corpus (runs/demo/)"
	@echo "make test       the full test suite (and ruff): what CI runs"
	@echo "make test-fast  the tests without the end-to-end ones (notebooks, subprocesses, torchrun), ~1 min"
	@echo "make synthetic  build the synthetic corpus in data/synthetic"
	@echo "make bench      data-loader and encoder benchmarks (appends to BENCHMARKS.md)"
	@echo "make gpu-check  on an NVIDIA GPU: the cuda tests and the GPU benchmarks (appends to BENCHMARKS.md)"
	@echo "make lint       ruff; make strip removes notebook outputs"

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(HAVE_GPU),,$(PY) -m pip install --quiet $(TORCH_CPU))
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

demo: $(VENV)/.installed
	$(PY) demo.py --out runs/demo

test: $(VENV)/.installed lint
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed lint
	$(PY) -m pytest -q -m "not e2e"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .

synthetic: $(VENV)/.installed
	$(PY) prepare.py synthetic data/synthetic

bench: $(VENV)/.installed
	$(PY) bench/loader.py
	$(PY) bench/encoder.py

# The GPU path in one command: every step runs (one failing does not hide the others' figures), then the
# exit status says whether all passed. PY=python3 uses an environment that already holds requirements.txt
# (with a CUDA build of torch) instead of creating .venv.
GPU_CHECKS := "$(PY) -m pytest -q -m cuda tests/test_cuda.py" "$(PY) bench/loader.py --flac16k" \
	"$(PY) bench/encoder.py --models small,medium,large-v3" "$(PY) bench/throughput.py"
ifeq ($(HAVE_GPU),)
gpu-check:
	@printf 'make gpu-check would run:\n'; printf '  %s\n' $(GPU_CHECKS)
	@echo "make gpu-check: needs an NVIDIA GPU (nvidia-smi finds none here)" >&2; exit 1
else
gpu-check: $(if $(filter $(VENV)/bin/python,$(PY)),$(VENV)/.installed)
	@status=0; for cmd in $(GPU_CHECKS); do echo "== $$cmd"; $$cmd || status=1; done; exit $$status
endif

strip: $(VENV)/.installed
	$(VENV)/bin/nbstripout *.ipynb

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
