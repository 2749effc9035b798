"""Shared-prompt packing gives the same rewards, routing and gradients as plain rows."""

import pytest
import torch
from conftest import encode_pairs, plain_batch, randomize_head
from transformers import LlamaConfig, Phi3Config

from adajudge_hf import AdaJudgeConfig, AdaJudgeForRewardModeling
from adajudge_hf.packing import pack_responses, pad_packed, score_best_of_n
from adajudge_hf.testing import make_tiny_backbone_config
from adajudge_hf.tokenization import encode_prompt_response


def backbone_config(family: str, tokenizer):
    if family == "qwen3":
        return make_tiny_backbone_config(tokenizer)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaConfig(**common) if family == "llama" else Phi3Config(**common)


def make(tokenizer, family="qwen3", seed=0, **kwargs):
    kwargs.setdefault("head_hidden_size", 16)
    config = AdaJudgeConfig(text_config=backbone_config(family, tokenizer), **kwargs)
    torch.manual_seed(seed)
    model = AdaJudgeForRewardModeling._from_config(config, attn_implementation="sdpa")
    return randomize_head(model.eval(), seed=seed)


def bt_loss(logits):
    chosen, rejected = logits.squeeze(-1).chunk(2)
    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


@pytest.mark.parametrize("family", ["qwen3", "llama", "phi3"])
@pytest.mark.parametrize("num_refinement_blocks", [0, 2])
@pytest.mark.parametrize("pooling", ["adaptive", "last", "mean", "attention"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_packed_pairs_equal_plain_rows(tiny_tokenizer, family, num_refinement_blocks, pooling, padding_side):
    model = make(tiny_tokenizer, family, num_refinement_blocks=num_refinement_blocks, pooling=pooling)
    plain, packed = encode_pairs(tiny_tokenizer)
    with torch.no_grad():
        expected = model(**plain_batch(plain, tiny_tokenizer.pad_token_id))
        actual = model(**pad_packed(packed, tiny_tokenizer.pad_token_id, padding_side))
    for key in ("logits", "expert_scores", "routing_weights", "depth_weights"):
        if getattr(expected, key) is not None:
            torch.testing.assert_close(getattr(actual, key), getattr(expected, key), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["qwen3", "llama", "phi3"])
def test_packed_loss_and_gradients_equal_plain(tiny_tokenizer, family):
    plain, packed = encode_pairs(tiny_tokenizer)
    gradients = []
    for inputs in (plain_batch(plain, 0), pad_packed(packed, 0)):
        model = make(tiny_tokenizer, family, num_refinement_blocks=2).train()
        loss = bt_loss(model(**inputs).logits)
        loss.backward()
        gradients.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (plain_loss, plain_grads), (packed_loss, packed_grads) = gradients
    torch.testing.assert_close(packed_loss, plain_loss, atol=1e-5, rtol=1e-5)
    assert plain_grads.keys() == packed_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(packed_grads[name], plain_grads[name], atol=1e-4, rtol=1e-3, msg=name)


def test_packed_inputs_are_refused_where_they_do_not_apply(tiny_tokenizer):
    model = make(tiny_tokenizer, refinement_attention="bidirectional")
    assert not model.supports_packed_inputs
    _, packed = encode_pairs(tiny_tokenizer)
    with pytest.raises(ValueError, match="causal refinement"):
        model(**pad_packed(packed, 0))


def test_packed_rows_must_hold_every_response(tiny_tokenizer):
    model = make(tiny_tokenizer)
    batch = pad_packed([pack_responses([5, 6], [[7], [8]]), pack_responses([5, 6], [[7, 8]])], 0)
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        model(**batch)


@pytest.mark.parametrize("refinement_attention", ["causal", "bidirectional"])
def test_best_of_n_equals_independent_scoring(tiny_tokenizer, refinement_attention):
    model = make(tiny_tokenizer, num_refinement_blocks=2, refinement_attention=refinement_attention)
    prompt = [{"role": "user", "content": "Write a polite refusal."}]
    responses = [
        [{"role": "assistant", "content": text}]
        for text in ["No.", "I cannot help with that, sorry.", "Sure!", "no", "I am sorry, but no."]
    ]
    expected = []
    for response in responses:
        encoded = encode_prompt_response(tiny_tokenizer, prompt, response)
        with torch.no_grad():
            out = model(
                input_ids=torch.tensor([encoded.input_ids]), prompt_lengths=torch.tensor([encoded.prompt_length])
            )
        expected.append((out.logits[0, 0], out.routing_weights[0]))
    # A small row budget forces several packed rows (chunking).
    scored = score_best_of_n(model, tiny_tokenizer, prompt, responses, max_batch_tokens=40)
    torch.testing.assert_close(scored["rewards"], torch.stack([r for r, _ in expected]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scored["routing_weights"], torch.stack([p for _, p in expected]), atol=1e-4, rtol=1e-4)
    assert scored["rewards"].argsort().tolist() == torch.stack([r for r, _ in expected]).argsort().tolist()


@pytest.mark.parametrize("packed", [False, True])
def test_scoring_cached_backbone_states_equals_forward(tiny_tokenizer, packed):
    model = make(tiny_tokenizer, num_refinement_blocks=2)
    plain, packed_rows = encode_pairs(tiny_tokenizer)
    inputs = pad_packed(packed_rows, 0, "left") if packed else plain_batch(plain, 0)
    with torch.no_grad():
        expected = model(**inputs, output_hidden_states=True)
        cached = expected.hidden_states[-1]  # the backbone's final (normed) states, as a feature cache stores them
        scored = model.score_hidden_states(cached, **{k: v for k, v in inputs.items() if k != "input_ids"})
    torch.testing.assert_close(scored.logits, expected.logits)
    torch.testing.assert_close(scored.routing_weights, expected.routing_weights)
