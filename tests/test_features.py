"""Cached backbone features: the same rewards as the full forward, and heads that learn from them."""

import random

import pytest
import torch
from conftest import randomize_head

from adajudge_hf.features import extract_features, load_balancing_loss, score_features, train_heads
from adajudge_hf.packing import encode_packed
from adajudge_hf.tokenization import encode_prompt_response


def chat(prompt, *responses):
    return [{"role": "user", "content": prompt}], [[{"role": "assistant", "content": r}] for r in responses]


def synthetic_pairs(n, seed=0):
    """Learnable preferences: the chosen answer ends with 'correct', the rejected with 'wrong'."""
    rng = random.Random(seed)
    words = "the quick brown fox jumps over lazy dog reward model scores how good response is".split()
    pairs = []
    for _ in range(n):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(3, 8)))
        pairs.append(chat(" ".join(rng.choice(words) for _ in range(4)), f"{body} correct", f"{body} wrong"))
    return pairs


def test_cached_features_score_like_the_full_forward(make_judge, tiny_tokenizer):
    model = randomize_head(make_judge(num_refinement_blocks=2))
    groups = [chat("2+2?", "4", "5", "four"), chat("Capital of France?", "Paris.", "Lyon, in the south.", "Nice")]
    features = extract_features(model, tiny_tokenizer, groups, dtype=torch.float32, show_progress=False)
    scored = score_features(model, features)
    assert scored["rewards"].shape == (2, 3) and scored["routing_weights"].shape == (2, 3, 3)
    for g, (prompt, responses) in enumerate(groups):
        for n, response in enumerate(responses):
            e = encode_prompt_response(tiny_tokenizer, prompt, response)
            with torch.no_grad():
                out = model(input_ids=torch.tensor([e.input_ids]), prompt_lengths=torch.tensor([e.prompt_length]))
            torch.testing.assert_close(scored["rewards"][g, n], out.logits[0, 0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(scored["depth_weights"][g, n], out.depth_weights[0], atol=1e-4, rtol=1e-4)


def test_groups_with_different_response_counts_share_a_batch(make_judge, tiny_tokenizer):
    """Groups of 3 and 1 responses in one forward pass get the states each group gets alone."""
    model = make_judge(num_refinement_blocks=2)
    groups = [chat("2+2?", "4", "5", "four"), chat("Capital of France?", "Paris.")]
    together = extract_features(model, tiny_tokenizer, groups, dtype=torch.float32, show_progress=False)
    for group, features in zip(groups, together):
        (alone,) = extract_features(model, tiny_tokenizer, [group], dtype=torch.float32, show_progress=False)
        assert torch.equal(features.segment_ids, alone.segment_ids)
        torch.testing.assert_close(features.hidden_states, alone.hidden_states, atol=1e-5, rtol=1e-5)


def test_packed_truncation_keeps_every_plain_row_within_max_length(tiny_tokenizer):
    prompt, responses = chat("word " * 40, "short answer", "a much longer answer " * 3)
    ids, segments, truncated = encode_packed(tiny_tokenizer, prompt, responses, max_length=30)
    prompt_length = segments.count(0)
    assert truncated and all(prompt_length + segments.count(s) <= 30 for s in (1, 2))
    full = [encode_prompt_response(tiny_tokenizer, prompt, r).input_ids for r in responses]
    assert ids[prompt_length:] == full[0][-segments.count(1) :] + full[1][-segments.count(2) :]  # response ends kept


@pytest.mark.parametrize("pooling", ["adaptive", "mean"])
def test_heads_learn_from_cached_features(make_judge, tiny_tokenizer, pooling):
    model = make_judge(num_refinement_blocks=2, pooling=pooling)
    train = extract_features(model, tiny_tokenizer, synthetic_pairs(96), show_progress=False)
    held_out = extract_features(model, tiny_tokenizer, synthetic_pairs(48, seed=1), show_progress=False)
    before = {n: p.clone() for n, p in model.judge_head.named_parameters()}
    history = train_heads(model, train, epochs=8, batch_size=16, learning_rate=3e-3, show_progress=False).history
    rewards = score_features(model, held_out)["rewards"]
    accuracy = (rewards[:, 0] > rewards[:, 1]).float().mean().item()
    assert accuracy >= 0.9, accuracy
    assert history[-1]["loss"] < history[0]["loss"]
    # Bradley-Terry is shift-invariant: a static head's output bias gets no gradient; everything else must move.
    shift_only = {f"expert_heads.{pooling}.2.bias"} if pooling != "adaptive" else set()
    unchanged = [n for n, p in model.judge_head.named_parameters() if torch.equal(before[n], p)]
    assert set(unchanged) <= shift_only, unchanged


def test_training_is_deterministic_for_a_seed(make_judge, tiny_tokenizer):
    losses = []
    for _ in range(2):
        model = make_judge(num_refinement_blocks=1)
        features = extract_features(model, tiny_tokenizer, synthetic_pairs(32), show_progress=False)
        result = train_heads(model, features, epochs=1, batch_size=8, show_progress=False)
        losses.append([r["loss"] for r in result.history])
    assert losses[0] == losses[1]


def test_training_needs_pairs(make_judge, tiny_tokenizer):
    model = make_judge()
    features = extract_features(model, tiny_tokenizer, [chat("q", "a", "b", "c")], show_progress=False)
    with pytest.raises(ValueError, match="preference pairs"):
        train_heads(model, features, show_progress=False)


def swapped(pairs):
    """The same pairs with chosen and rejected exchanged: a validation set on which learning makes things worse."""
    return [(prompt, [responses[1], responses[0]]) for prompt, responses in pairs]


def test_validation_keeps_the_best_check_and_never_a_later_one(make_judge, tiny_tokenizer):
    pairs = synthetic_pairs(32)
    features = extract_features(make_judge(), tiny_tokenizer, pairs, show_progress=False)
    validation = extract_features(
        make_judge(), tiny_tokenizer, swapped(synthetic_pairs(16, seed=1)), show_progress=False
    )
    model = make_judge(num_refinement_blocks=1)
    result = train_heads(
        model, features, validation_features=validation, epochs=3, batch_size=8, learning_rate=3e-3,
        show_progress=False,
    )  # fmt: skip
    # Every further epoch fits the training preference better, so it scores worse on the swapped pairs.
    assert [e["epoch"] for e in result.evaluations] == [1.0, 2.0, 3.0]
    assert result.best_step == 4 and result.best_epoch == 1.0
    assert result.evaluations[0]["bt_loss"] < result.evaluations[-1]["bt_loss"]
    # The head returned is the one of that check: the same as training one epoch only.
    one_epoch = make_judge(num_refinement_blocks=1)
    train_heads(one_epoch, features, epochs=1, batch_size=8, learning_rate=3e-3, show_progress=False)
    held_out = extract_features(model, tiny_tokenizer, synthetic_pairs(8, seed=2), show_progress=False)
    torch.testing.assert_close(
        score_features(model, held_out)["rewards"], score_features(one_epoch, held_out)["rewards"]
    )


def test_patience_stops_after_checks_without_gain(make_judge, tiny_tokenizer):
    features = extract_features(make_judge(), tiny_tokenizer, synthetic_pairs(32), show_progress=False)
    validation = extract_features(
        make_judge(), tiny_tokenizer, swapped(synthetic_pairs(16, seed=1)), show_progress=False
    )
    result = train_heads(
        make_judge(), features, validation_features=validation, evaluations_per_epoch=2, patience=2, epochs=5,
        batch_size=8, learning_rate=3e-3, show_progress=False,
    )  # fmt: skip
    assert [e["step"] for e in result.evaluations] == [2, 4, 6]  # best at the first check, then two without gain
    assert len(result.history) == 6 and result.best_step == 2


def test_load_balancing_loss_is_one_when_balanced_and_grows_with_collapse():
    balanced = torch.eye(3).repeat(4, 1)  # every expert takes a third of the rows
    collapsed = torch.tensor([[1.0, 0.0, 0.0]]).repeat(12, 1)
    assert load_balancing_loss(balanced).item() == pytest.approx(1.0)
    assert load_balancing_loss(collapsed).item() == pytest.approx(3.0)
