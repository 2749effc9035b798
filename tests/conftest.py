"""Shared fixtures: tiny offline backbones and tokenizers, the benchmark slices in `tests/data`, and the optional
full benchmark files of `../shared/benchmarks` (`ADAJUDGE_SHARED_BENCHMARKS` points elsewhere, e.g. at nothing)."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.testing import make_tiny_judge_config, make_tiny_tokenizer


# The vLLM tests need vLLM, which pins an older transformers: `make test-vllm` runs them in their own environment
# (and sets ADAJUDGE_REQUIRE_VLLM=1, so a missing vLLM fails there instead of going unnoticed).
if importlib.util.find_spec("vllm") is None and os.environ.get("ADAJUDGE_REQUIRE_VLLM") != "1":
    collect_ignore = ["vllm_plugin"]


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_BENCHMARKS = Path(
    os.environ.get("ADAJUDGE_SHARED_BENCHMARKS", Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks")
)
BENCHMARK_SLICES = Path(__file__).resolve().parent / "data"


def pytest_report_header(config) -> str:
    found = "found" if SHARED_BENCHMARKS.is_dir() else "absent: the tests marked shared_data are deselected"
    return f"full benchmark files {SHARED_BENCHMARKS}: {found}"


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `shared_data` reproduce figures of the full benchmark files, which only the project's machines
    have; elsewhere they are deselected, not skipped: the slices in `tests/data` run the same code paths."""
    if SHARED_BENCHMARKS.is_dir():
        return
    deselected = [item for item in items if "shared_data" in item.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if "shared_data" not in item.keywords]


@pytest.fixture(scope="session")
def benchmark_slices() -> Path:
    """`tests/data`: a few items per domain / category of RM-Bench, JudgeBench and HH-RLHF in the official layouts."""
    return BENCHMARK_SLICES


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    """`../shared/benchmarks` next to the checkout (CI has it, users do not)."""
    if not SHARED_BENCHMARKS.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_BENCHMARKS} (only present in the project's CI/dev machines)")
    return SHARED_BENCHMARKS


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """ChatML byte-level BPE tokenizer; pad `<|endoftext|>` (0) differs from eos `<|im_end|>` (2)."""
    return make_tiny_tokenizer("chatml")


@pytest.fixture
def make_judge(tiny_tokenizer):
    """Factory of tiny random judges in eval mode: `make_judge(num_refinement_blocks=3, pooling="mean", seed=0)`."""

    def factory(seed: int = 0, **judge_kwargs) -> AdaJudgeForRewardModeling:
        torch.manual_seed(seed)
        return AdaJudgeForRewardModeling(make_tiny_judge_config(tiny_tokenizer, **judge_kwargs)).eval()

    return factory


def randomize_head(model: AdaJudgeForRewardModeling, seed: int = 0, std: float = 0.2) -> AdaJudgeForRewardModeling:
    """Give every head parameter random non-zero values, so zero-initialised paths are exercised too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.judge_head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def with_random_lora(judge: AdaJudgeForRewardModeling, seed: int = 1, rank: int = 4):
    """`judge` wrapped in LoRA adapters whose B matrices are random (they start at zero), as after LoRA training, so
    that dropping or double-applying an adapter changes the rewards."""
    from peft import LoraConfig, get_peft_model

    from adajudge_hf import adajudge_lora_config

    model = get_peft_model(judge, adajudge_lora_config(LoraConfig(r=rank, lora_alpha=2 * rank), judge))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()
