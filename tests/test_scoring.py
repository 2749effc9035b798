"""The length-bucketed scorer gives the rewards of one-at-a-time scoring, in input order, for AdaJudge and stock RMs."""

import pytest
import torch
from conftest import randomize_head
from transformers import AutoModelForSequenceClassification

from adajudge_hf.evaluation import length_buckets, score_by_length, score_responses
from adajudge_hf.evaluation.progress import ScoringInterrupted
from adajudge_hf.testing import make_tiny_backbone_config
from adajudge_hf.tokenization import encode_prompt_response


PROMPTS = [
    "What is the capital of France?",
    "Write a function that adds two numbers.",
    None,
    "How do I bake bread?",
    "Say something rude.",
    "2 + 2 = ?",
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "?"}],
]
RESPONSES = [
    "The capital of France is Paris.",
    "def add(a, b):\n    return a + b\n" * 3,
    "A response without a prompt.",
    "Mix flour, water, salt and yeast, then knead and bake. " * 5,
    "I cannot help with that request, but here is a safer alternative.",
    "4",
    [{"role": "assistant", "content": "Ask me anything: a question, a task, a number."}],
]


@pytest.fixture
def judge(make_judge):
    return randomize_head(make_judge(seed=0), seed=1)


def test_length_buckets_fit_the_token_budget_and_cover_every_example():
    lengths = [5, 40, 7, 7, 100, 3, 39, 41]
    batches = length_buckets(lengths, max_batch_tokens=90)
    assert sorted(index for batch in batches for index in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[index] for index in batch)
        assert len(batch) == 1 or len(batch) * longest <= 90  # an over-long example gets a batch of its own
        assert [lengths[index] for index in batch] == sorted((lengths[index] for index in batch), reverse=True)
    assert batches[0] == [4]  # longest first: out-of-memory shows up at once
    padded = sum(len(batch) * lengths[batch[0]] for batch in batches)
    input_order_padded = sum(2 * max(lengths[start : start + 2]) for start in range(0, len(lengths), 2))
    assert padded - sum(lengths) < (input_order_padded - sum(lengths)) / 3


@pytest.mark.parametrize("max_padding", [0.0, 0.2, 0.5])
def test_length_buckets_keep_padding_under_max_padding(max_padding):
    lengths = [300, 64, 250, 70, 310, 20, 66, 500, 65]
    batches = length_buckets(lengths, max_batch_tokens=8192, max_padding=max_padding)
    assert sorted(index for batch in batches for index in batch) == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * max(lengths[index] for index in batch)
        assert padded - sum(lengths[index] for index in batch) <= max_padding * padded
    unlimited = length_buckets(lengths, max_batch_tokens=8192)
    assert len(unlimited) == 1  # the token budget alone puts every row in one pass, padded to 500
    assert len(batches) > 1


def test_length_buckets_max_padding_zero_batches_only_equal_lengths():
    batches = length_buckets([8, 5, 8, 5, 3], max_batch_tokens=100, max_padding=0.0)
    assert sorted(map(sorted, batches)) == [[0, 2], [1, 3], [4]]


@pytest.mark.parametrize("max_padding", [-0.1, 1.0])
def test_length_buckets_refuse_a_max_padding_outside_0_1(max_padding):
    with pytest.raises(ValueError, match="max_padding"):
        length_buckets([4, 2], max_batch_tokens=10, max_padding=max_padding)


def test_bucketed_rewards_equal_one_at_a_time_in_input_order(judge, tiny_tokenizer):
    output = score_responses(judge, tiny_tokenizer, PROMPTS, RESPONSES, max_batch_tokens=256, show_progress=False)
    assert output.num_padded_tokens > output.num_tokens  # several examples did share padded batches
    for index, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        encoded = encode_prompt_response(tiny_tokenizer, prompt, response)
        with torch.no_grad():
            expected = judge(torch.tensor([encoded.input_ids]), prompt_lengths=torch.tensor([encoded.prompt_length]))
        torch.testing.assert_close(output.rewards[index], expected.logits[0, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(output.routing_weights[index], expected.routing_weights[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(output.depth_weights[index], expected.depth_weights[0], atol=1e-5, rtol=1e-5)


def test_results_follow_the_input_order(judge, tiny_tokenizer):
    forward = score_responses(judge, tiny_tokenizer, PROMPTS, RESPONSES, show_progress=False)
    backward = score_responses(judge, tiny_tokenizer, PROMPTS[::-1], RESPONSES[::-1], show_progress=False)
    torch.testing.assert_close(backward.rewards, forward.rewards.flip(0), atol=1e-5, rtol=1e-5)


def test_adajudge_outputs_name_the_experts_and_depths(make_judge, tiny_tokenizer):
    output = score_responses(make_judge(num_refinement_blocks=3), tiny_tokenizer, PROMPTS, RESPONSES)
    assert output.experts == ("last", "mean", "attention")
    assert output.depth_candidates == ("H(1)", "H(2)", "H(3)")
    assert output.routing_weights.shape == (len(PROMPTS), 3) and output.depth_weights.shape == (len(PROMPTS), 3)
    torch.testing.assert_close(output.routing_weights.sum(-1), torch.ones(len(PROMPTS)))

    static = score_responses(make_judge(num_refinement_blocks=0, pooling="mean"), tiny_tokenizer, PROMPTS, RESPONSES)
    assert static.experts == ("mean",) and static.depth_weights is None and static.depth_candidates is None


def test_stock_reward_model_is_scored_at_its_last_token(tiny_tokenizer):
    torch.manual_seed(0)
    config = make_tiny_backbone_config(tiny_tokenizer)
    config.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(config).eval()
    output = score_responses(model, tiny_tokenizer, PROMPTS, RESPONSES, max_batch_tokens=256, show_progress=False)
    assert output.routing_weights is None and output.depth_weights is None and output.experts is None
    for index, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        encoded = encode_prompt_response(tiny_tokenizer, prompt, response)
        with torch.no_grad():
            expected = model(torch.tensor([encoded.input_ids])).logits[0, 0]
        torch.testing.assert_close(output.rewards[index], expected, atol=1e-5, rtol=1e-5)

    # The model finds its last token by `config.pad_token_id`, so padding must use that id, not the tokenizer's.
    used = {i for p, r in zip(PROMPTS, RESPONSES) for i in encode_prompt_response(tiny_tokenizer, p, r).input_ids}
    model.config.pad_token_id = min(set(range(len(tiny_tokenizer))) - used)
    repadded = score_responses(model, tiny_tokenizer, PROMPTS, RESPONSES, max_batch_tokens=256, show_progress=False)
    torch.testing.assert_close(repadded.rewards, output.rewards, atol=1e-5, rtol=1e-5)

    model.config.pad_token_id = None
    with pytest.raises(ValueError, match="no `pad_token_id`"):
        score_responses(model, tiny_tokenizer, PROMPTS, RESPONSES)


def test_scoring_runs_in_eval_mode_and_restores_training_mode(judge, tiny_tokenizer):
    judge.train()
    modes = []
    judge.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    score_responses(judge, tiny_tokenizer, PROMPTS[:2], RESPONSES[:2], show_progress=False)
    assert modes and not any(modes)
    assert judge.training


def test_max_length_keeps_the_end_of_the_response_and_counts_truncations(judge, tiny_tokenizer):
    output = score_responses(judge, tiny_tokenizer, PROMPTS, RESPONSES, max_length=24, show_progress=False)
    lengths = [len(encode_prompt_response(tiny_tokenizer, p, r).input_ids) for p, r in zip(PROMPTS, RESPONSES)]
    assert output.num_truncated == sum(length > 24 for length in lengths) > 0
    assert output.num_tokens == sum(min(length, 24) for length in lengths)
    assert output.stats()["max_length"] == 24
    assert 0 < output.stats()["encode_seconds"] <= output.stats()["seconds"]


def test_bad_arguments_are_rejected(judge, tiny_tokenizer):
    with pytest.raises(ValueError, match="must pair up"):
        score_responses(judge, tiny_tokenizer, PROMPTS, RESPONSES[:-1])
    with pytest.raises(ValueError, match="max_batch_tokens"):
        score_responses(judge, tiny_tokenizer, PROMPTS, RESPONSES, max_batch_tokens=0)


def test_length_baseline_rewards_are_character_counts():
    output = score_by_length(["abc", "", [{"role": "assistant", "content": "hello"}]])
    assert output.rewards.tolist() == [3.0, 0.0, 5.0]


@pytest.mark.parametrize("responses_per_prompt", [2, 6])
def test_shared_prompt_scoring_equals_plain_scoring(make_judge, tiny_tokenizer, responses_per_prompt):
    """Each prompt encoded once for its responses gives the same rewards, pi and alpha, with fewer tokens."""
    model = randomize_head(make_judge(num_refinement_blocks=2))
    words = "the quick brown fox jumps over the lazy dog again and again".split()
    prompts, responses = [], []
    for item in range(5):
        prompt = [{"role": "user", "content": " ".join(words[item : item + 4 + item])}]
        for r in range(responses_per_prompt):
            prompts.append(prompt)
            responses.append([{"role": "assistant", "content": " ".join(words[r : r + 2 + (item * r) % 5])}])
    plain = score_responses(model, tiny_tokenizer, prompts, responses, max_batch_tokens=64, show_progress=False)
    shared = score_responses(
        model, tiny_tokenizer, prompts, responses, max_batch_tokens=64, show_progress=False, share_prompts=True
    )
    torch.testing.assert_close(shared.rewards, plain.rewards, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(shared.routing_weights, plain.routing_weights, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(shared.depth_weights, plain.depth_weights, atol=1e-4, rtol=1e-4)
    assert shared.num_tokens < plain.num_tokens


@pytest.mark.parametrize("share_prompts", [False, True])
def test_interrupted_scoring_resumes_from_the_kept_batches(
    judge, tiny_tokenizer, tmp_path, monkeypatch, share_prompts
):
    """Ctrl-C after 2 batches keeps them in `progress_dir`; the rerun scores only the rest and returns exactly the
    rewards, pi and alpha of an uninterrupted run (same batches), in plain and packed (shared-prompt) layouts."""
    prompts = [prompt for prompt in PROMPTS for _ in range(2)]
    responses = [response for response in RESPONSES for _ in range(2)]
    kwargs = dict(max_batch_tokens=64, show_progress=False, share_prompts=share_prompts)
    reference = score_responses(judge, tiny_tokenizer, prompts, responses, **kwargs)

    forward, rows = type(judge).forward, []

    def counted_forward(model, *args, interrupt_at=None, **inputs):
        if len(rows) + 1 == interrupt_at:
            raise KeyboardInterrupt
        rows.append(inputs["input_ids"].shape[0])
        return forward(model, *args, **inputs)

    monkeypatch.setattr(type(judge), "forward", lambda *a, **k: counted_forward(*a, interrupt_at=3, **k))
    with pytest.raises(ScoringInterrupted, match=f"interrupted; \\d+ of the {len(prompts)} responses are scored"):
        score_responses(judge, tiny_tokenizer, prompts, responses, progress_dir=tmp_path, **kwargs)
    kept = len((tmp_path / "scored-0.jsonl").read_text().splitlines()) - 1
    assert kept > 0

    rows.clear()
    monkeypatch.setattr(type(judge), "forward", counted_forward)
    resumed = score_responses(judge, tiny_tokenizer, prompts, responses, progress_dir=tmp_path, **kwargs)
    assert 0 < sum(rows) < len(prompts)  # only what was missing
    for name in ("rewards", "routing_weights", "depth_weights"):
        assert torch.equal(getattr(resumed, name), getattr(reference, name)), name
