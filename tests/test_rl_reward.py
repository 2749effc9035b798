"""A judge as `reward_funcs` of TRL's GRPOTrainer: no response mask reaches it, the rewards must still match."""

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.testing import save_tiny_causal_lm
from adajudge_hf.tokenization import encode_prompt_response


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "grpo_with_adajudge_reward.py"


def load_example():
    spec = importlib.util.spec_from_file_location("grpo_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("trainer_name, reward", [("grpo", "model"), ("rloo", "model"), ("grpo", "packed")])
def test_online_rl_rewards_equal_the_judge_with_explicit_masks(tmp_path, trainer_name, reward):
    args = ["--max-steps", "1", "--output-dir", str(tmp_path), "--trainer", trainer_name, "--reward", reward]
    trainer = load_example().main(args)
    reward_func = trainer.reward_funcs[0]
    judge = getattr(reward_func, "judge", reward_func)  # AdaJudgeReward keeps the judge it packs for
    tokenizer = getattr(reward_func, "tokenizer", None) or trainer.reward_processing_classes[0]
    prompts, completions = list(trainer._logs["prompt"]), list(trainer._logs["completion"])
    logged = torch.tensor(list(next(iter(trainer._logs["rewards"].values()))))
    assert len(prompts) == len(completions) == len(logged) > 0

    checked = 0
    for prompt, completion, reward in zip(prompts, completions, logged):
        if not completion[0]["content"].strip():
            continue  # an empty completion is not a scoreable response for the explicit-mask path
        encoded = encode_prompt_response(tokenizer, prompt, completion)
        with torch.no_grad():
            expected = judge(
                input_ids=torch.tensor([encoded.input_ids]), prompt_lengths=torch.tensor([encoded.prompt_length])
            ).logits[0, 0]
        torch.testing.assert_close(reward, expected, atol=1e-5, rtol=0)
        checked += 1
    assert checked > 0


def test_judge_construction_fails_when_the_template_has_no_assistant_header(tmp_path):
    backbone = save_tiny_causal_lm(tmp_path / "backbone")
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError, match="assistant-turn header"):
        AdaJudgeForRewardModeling.from_backbone(backbone, tokenizer=tokenizer)
    # An explicit template is the documented way out.
    judge = AdaJudgeForRewardModeling.from_backbone(backbone, tokenizer=tokenizer, response_template=[1, 2])
    assert judge.config.response_template == [1, 2]


def test_online_rl_rewards_from_a_served_judge_equal_the_judge(tmp_path):
    """`--reward URL`: `AdaJudgeReward(url)` posts each prompt group to `adajudge serve`; the rewards TRL logs equal
    the judge's on the same conversations."""
    import threading
    import time

    import httpx
    import uvicorn

    from adajudge_hf import save_judge
    from adajudge_hf.serve import create_app, load_for_serving

    backbone = save_tiny_causal_lm(tmp_path / "backbone", seed=2)
    judge = AdaJudgeForRewardModeling.from_backbone(backbone, num_refinement_blocks=1)
    folder = save_judge(judge, tmp_path / "judge", form="full", tokenizer=AutoTokenizer.from_pretrained(backbone))
    served = load_for_serving(str(folder), device="cpu")
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (server.started and server.servers):
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        while httpx.get(f"{url}/health").status_code != 200:
            assert time.monotonic() < deadline, "the server did not warm up"
            time.sleep(0.05)
        trainer = load_example().main(["--max-steps", "1", "--output-dir", str(tmp_path / "out"), "--reward", url])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    prompts, completions = list(trainer._logs["prompt"]), list(trainer._logs["completion"])
    logged = list(next(iter(trainer._logs["rewards"].values())))
    checked = 0
    for prompt, completion, reward in zip(prompts, completions, logged):
        if not completion[0]["content"].strip():
            continue  # an empty completion gets None (NaN in TRL's logs)
        encoded = encode_prompt_response(served.tokenizer, prompt, completion)
        with torch.no_grad():
            expected = served.model(
                input_ids=torch.tensor([encoded.input_ids]), prompt_lengths=torch.tensor([encoded.prompt_length])
            ).logits[0, 0]
        torch.testing.assert_close(torch.tensor(reward), expected, atol=1e-5, rtol=0)
        checked += 1
    assert checked > 0
