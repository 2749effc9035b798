"""Shared fixtures: tiny offline backbones and tokenizers, a few encoded chats and preference pairs (plain and packed),
a learnable synthetic preference dataset, the benchmark slices in `tests/data`, the optional full benchmark files of
`../shared/benchmarks` (`ADAJUDGE_SHARED_BENCHMARKS` points elsewhere, e.g. at nothing), a stand-in Hub (`hub`), an
in-process client of the reward server (`asgi_client`) and a runner for scripts under `accelerate launch`."""

import asyncio
import functools
import importlib.util
import json
import os
import random
import subprocess
import time
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from datasets import Dataset
from hub_stand_in import HubStandIn
from huggingface_hub import constants, get_session

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.packing import pack_responses
from adajudge_hf.testing import make_tiny_judge, make_tiny_tokenizer, randomize_head  # noqa: F401  (shared)
from adajudge_hf.tokenization import encode_prompt_response


# The vLLM tests need vLLM, which pins an older transformers: `make test-vllm` runs them in their own environment
# (and sets ADAJUDGE_REQUIRE_VLLM=1, so a missing vLLM fails there instead of going unnoticed).
collect_ignore = []
if importlib.util.find_spec("vllm") is None and os.environ.get("ADAJUDGE_REQUIRE_VLLM") != "1":
    collect_ignore.append("vllm_plugin")
# The released RL clients' tests need their packages in .clients/ and start servers for minutes: only
# `make test-clients` runs them (it installs the clients and sets ADAJUDGE_REQUIRE_CLIENTS=1, so a missing client fails).
if os.environ.get("ADAJUDGE_REQUIRE_CLIENTS") != "1":
    collect_ignore.append("clients")


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
    """`adajudge_hf.testing.make_tiny_judge` with the tiny tokenizer: `make_judge(num_refinement_blocks=3, seed=0)`."""
    return functools.partial(make_tiny_judge, tiny_tokenizer)


@pytest.fixture(scope="session")
def judge_folder(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny judge with random heads saved in the full form with its tokenizer, as `adajudge evaluate` reads it."""
    folder = tmp_path_factory.mktemp("judge")
    randomize_head(make_tiny_judge(tiny_tokenizer), seed=1).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


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


CHATS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("2+2?", "4"),
    ("How do I bake bread?", "Mix flour, water, salt and yeast, then knead and bake it for a long time."),
]


def encode(tokenizer, chats=CHATS):
    """Unpadded examples: (input_ids, prompt_length) per chat, through the chat template."""
    encoded = [
        encode_prompt_response(tokenizer, [{"role": "user", "content": p}], [{"role": "assistant", "content": r}])
        for p, r in chats
    ]
    return [(e.input_ids, e.prompt_length) for e in encoded]


def pad_batch(examples, pad_id, side="right"):
    """(input_ids, attention_mask, prompt_lengths) padded on `side`; pads carry `pad_id`."""
    width = max(len(ids) for ids, _ in examples)
    rows, masks = [], []
    for ids, _ in examples:
        pad = [pad_id] * (width - len(ids))
        rows.append(ids + pad if side == "right" else pad + ids)
        masks.append([1] * len(ids) + [0] * len(pad) if side == "right" else [0] * len(pad) + [1] * len(ids))
    lengths = torch.tensor([n for _, n in examples])
    return torch.tensor(rows), torch.tensor(masks), lengths


# (prompt, chosen, rejected); the last pair's responses share a prefix beyond the prompt.
PAIRS = [
    ("What is the capital of France?", "Paris.", "It is Lyon, a city in the south."),
    ("How do I bake bread?", "Mix flour, water, salt and yeast, then knead and bake.", "Buy it."),
    ("Is 2+2 equal to 4?", "Yes, 2+2 is 4.", "Yes, 2+2 is 5."),
]


def encode_pairs(tokenizer):
    plain, packed = [], []
    for prompt, chosen, rejected in PAIRS:
        messages = [{"role": "user", "content": prompt}]
        c, r = (
            encode_prompt_response(tokenizer, messages, [{"role": "assistant", "content": t}])
            for t in (chosen, rejected)
        )
        assert c.prompt_length == r.prompt_length
        plain.append((c, r))
        packed.append(
            pack_responses(
                c.input_ids[: c.prompt_length], [c.input_ids[c.prompt_length :], r.input_ids[r.prompt_length :]]
            )
        )
    return plain, packed


def plain_batch(plain, pad_id):
    rows = [c for c, _ in plain] + [r for _, r in plain]  # TRL's order: chosen rows, then rejected rows
    width = max(len(e.input_ids) for e in rows)
    return {
        "input_ids": torch.tensor([e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in rows]),
        "attention_mask": torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in rows]),
        "prompt_lengths": torch.tensor([e.prompt_length for e in rows]),
    }


WORDS = "the quick brown fox jumps over lazy dog reward model scores how response prompt capital France Paris".split()


def synthetic_pairs(n: int, seed: int = 0, **extra_columns) -> Dataset:
    """A learnable task: the same random answer, ending in "good" (chosen) or "bad" (rejected)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        body = " ".join(rng.choices(WORDS, k=rng.randint(2, 6)))
        rows.append(
            {
                "prompt": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=4)) + "?"}],
                "chosen": [{"role": "assistant", "content": body + " good"}],
                "rejected": [{"role": "assistant", "content": body + " bad"}],
            }
        )
    dataset = Dataset.from_list(rows)
    for name, values in extra_columns.items():
        dataset = dataset.add_column(name, values)
    return dataset


BACKBONE_REPO = "org/tiny-qwen3"
"""The Hub id tests upload the tiny backbone to, so that adapter and heads checkpoints name a Hub backbone."""


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A stand-in Hub at HF_ENDPOINT, an empty HF cache, no token anywhere, and uploads without Xet."""
    home = tmp_path / "hf_home"
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    # huggingface_hub >= 2 records agent harnesses under HF_HOME; older releases have no such file
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / "agent_harnesses.json"), raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    # hf_xet uploads go to a CAS server the stand-in does not implement; without it the client uses git LFS.
    monkeypatch.setattr("huggingface_hub.hf_api.is_xet_available", lambda: False, raising=False)  # hub >= 2
    monkeypatch.setattr("huggingface_hub._commit_api.is_xet_available", lambda: False)
    with HubStandIn() as server:
        # huggingface_hub reads HF_ENDPOINT at import, so the already-imported module is pointed at it as well.
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        template = server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        # huggingface_hub < 2 posts card validation to https://huggingface.co itself rather than to the endpoint.
        session = get_session()
        to_stand_in = SimpleNamespace(
            post=lambda url, **kw: session.post(url.replace("https://huggingface.co", server.endpoint), **kw)
        )
        monkeypatch.setattr("huggingface_hub.repocard.get_session", lambda: to_stand_in)
        yield server


def go_offline(hub: HubStandIn, monkeypatch) -> None:
    """Stop the stand-in and switch on HF_HUB_OFFLINE: from here on, only the local cache can serve files."""
    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@asynccontextmanager
async def asgi_client(app):
    """The app with its lifespan running, once it reports healthy."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://judge", timeout=30) as client:
            deadline = time.monotonic() + 60
            while (await client.get("/health")).status_code != 200:
                assert time.monotonic() < deadline, "the server did not warm up within 60 s"
                await asyncio.sleep(0.01)
            yield client


def run_script(command: list[str], timeout: float = 600, **env: str) -> None:
    """Run a test script (often under `accelerate launch`) offline with one thread per process; when it fails, the
    assertion shows the end of its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", **env}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


def loss_logs(output_dir: Path) -> list[dict]:
    """The logged training steps (those with a loss) of a training script's `log_history.json`."""
    return [log for log in json.loads((output_dir / "log_history.json").read_text()) if "loss" in log]
