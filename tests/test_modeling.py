"""AdaJudgeForRewardModeling: invariances, initialisation, pooling, save/load, registration and bad inputs."""

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import randomize_head
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, pipeline
from transformers.utils import logging

from adajudge_hf import AdaJudgeConfig, AdaJudgeForRewardModeling
from adajudge_hf.modeling.modeling_adajudge import find_response_template
from adajudge_hf.testing import make_tiny_backbone_config, make_tiny_tokenizer, save_tiny_causal_lm
from adajudge_hf.tokenization import encode_prompt_response


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


def rewards(model, examples, pad_id, side="right"):
    input_ids, attention_mask, prompt_lengths = pad_batch(examples, pad_id, side)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths).logits[:, 0]


@pytest.mark.parametrize("pooling", ["adaptive", "last", "mean", "attention"])
@pytest.mark.parametrize("num_refinement_blocks", [0, 2])
def test_rewards_do_not_depend_on_padding_or_batch_composition(
    make_judge, tiny_tokenizer, pooling, num_refinement_blocks
):
    model = randomize_head(make_judge(pooling=pooling, num_refinement_blocks=num_refinement_blocks))
    examples = encode(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    one_by_one = torch.cat([rewards(model, [example], pad) for example in examples])
    torch.testing.assert_close(rewards(model, examples, pad, "right"), one_by_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(rewards(model, examples, pad, "left"), one_by_one, atol=1e-5, rtol=0)
    reordered = rewards(model, [examples[2], examples[0]], pad)
    torch.testing.assert_close(reordered, one_by_one[[2, 0]], atol=1e-5, rtol=0)
    # pad == eos: the padding id must not matter, only attention_mask does.
    torch.testing.assert_close(rewards(model, examples, tiny_tokenizer.eos_token_id), one_by_one, atol=1e-5, rtol=0)


def test_last_token_comes_from_the_mask_even_when_pad_equals_eos(make_judge, tiny_tokenizer):
    model = make_judge(pooling="last", num_refinement_blocks=0)
    eos = tiny_tokenizer.eos_token_id
    ids = torch.tensor([[5, 6, 7, eos, eos, eos]])  # the first eos is content, the rest padding
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = model.judge_head.expert_heads["last"](hidden[0, 3])
        reward = model(input_ids=ids, attention_mask=mask, prompt_lengths=torch.tensor([1])).logits
    torch.testing.assert_close(reward[0], expected)


def test_response_mask_and_prompt_lengths_agree(make_judge, tiny_tokenizer):
    model = randomize_head(make_judge())
    input_ids, attention_mask, prompt_lengths = pad_batch(encode(tiny_tokenizer), 0, "left")
    positions = attention_mask.cumsum(-1)
    response_mask = (positions > prompt_lengths[:, None]) & attention_mask.bool()
    with torch.no_grad():
        by_lengths = model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths)
        by_mask = model(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask)
    torch.testing.assert_close(by_lengths.logits, by_mask.logits)


def test_initialisation_is_identity_blocks_and_uniform_routers(make_judge, tiny_tokenizer):
    model = make_judge(num_refinement_blocks=3)
    input_ids, attention_mask, prompt_lengths = pad_batch(encode(tiny_tokenizer), 0)
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    for block in model.judge_head.refinement_blocks:
        torch.testing.assert_close(block(hidden), hidden)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths)
    torch.testing.assert_close(out.routing_weights, torch.full((3, 3), 1 / 3))
    torch.testing.assert_close(out.depth_weights, torch.full((3, 3), 1 / 3))
    assert out.logits.shape == (3, 1) and out.expert_scores.shape == (3, 3)


def test_depth_router_can_include_the_backbone_output(make_judge, tiny_tokenizer):
    model = make_judge(num_refinement_blocks=2, depth_router_include_input=True)
    input_ids, attention_mask, prompt_lengths = pad_batch(encode(tiny_tokenizer), 0)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths)
    torch.testing.assert_close(out.depth_weights, torch.full((3, 3), 1 / 3))


@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
@pytest.mark.parametrize("scope", ["all", "response"])
def test_static_pooling_matches_hand_computation_on_h0(make_judge, tiny_tokenizer, pooling, scope):
    model = randomize_head(make_judge(pooling=pooling, num_refinement_blocks=0, attention_pooling_scope=scope))
    ids, prompt_length = encode(tiny_tokenizer)[0]
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        h0 = model.model(input_ids=input_ids).last_hidden_state[0]  # (L, D)
        response = h0[prompt_length:]
        if pooling == "last":
            pooled = h0[-1]
        elif pooling == "mean":
            pooled = response.mean(0)
        else:
            attended = h0 if scope == "all" else response
            beta = model.judge_head.attention_pool(attended).squeeze(-1).softmax(0)
            pooled = (beta[:, None] * attended).sum(0)
        expected = model.judge_head.expert_heads[pooling](pooled)
        out = model(input_ids=input_ids, prompt_lengths=torch.tensor([prompt_length]))
    torch.testing.assert_close(out.logits[0], expected, atol=1e-6, rtol=1e-5)
    assert out.routing_weights.tolist() == [[1.0]]
    assert sorted(model.judge_head.expert_heads) == [pooling]  # a static baseline carries no unused experts


def test_reward_is_routed_mixture_of_expert_scores(make_judge, tiny_tokenizer):
    model = randomize_head(make_judge())
    input_ids, attention_mask, prompt_lengths = pad_batch(encode(tiny_tokenizer), 0)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths)
    torch.testing.assert_close(out.logits[:, 0], (out.routing_weights * out.expert_scores).sum(-1))
    torch.testing.assert_close(out.routing_weights.sum(-1), torch.ones(3))
    assert out.routing_weights.std(0).max() > 0  # randomised router: pi depends on the input


def test_gradients_reach_every_head_parameter(make_judge, tiny_tokenizer):
    model = randomize_head(make_judge(num_refinement_blocks=2)).train()
    input_ids, attention_mask, prompt_lengths = pad_batch(encode(tiny_tokenizer), 0)
    model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths).logits.sum().backward()
    for name, parameter in model.judge_head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_activation_checkpointing_gives_the_same_gradients(make_judge, tiny_tokenizer):
    input_ids, attention_mask, prompt_lengths = pad_batch(encode(tiny_tokenizer), 0)
    grads = []
    for checkpointing in (False, True):
        model = randomize_head(make_judge(num_refinement_blocks=2)).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(block.gradient_checkpointing for block in model.judge_head.refinement_blocks)
        model(
            input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths
        ).logits.sum().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_trainer_kwargs_are_accepted_and_not_forwarded(make_judge, tiny_tokenizer):
    model = make_judge()
    input_ids, attention_mask, prompt_lengths = pad_batch(encode(tiny_tokenizer), 0)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        prompt_lengths=prompt_lengths,
        use_cache=False,
        margin=torch.ones(3),
        output_attentions=False,
        labels=torch.zeros(3),
    )
    assert out.loss is not None and out.loss.ndim == 0


def test_save_and_load_round_trip_through_auto_classes(make_judge, tiny_tokenizer, tmp_path):
    model = randomize_head(make_judge())
    input_ids, attention_mask, prompt_lengths = pad_batch(encode(tiny_tokenizer), 0)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths)
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["config.json", "configuration_adajudge.py", "model.safetensors", "modeling_adajudge.py"]
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification"}
    for auto_class in (AutoModel, AutoModelForSequenceClassification):
        loaded, info = auto_class.from_pretrained(tmp_path, output_loading_info=True)
        assert type(loaded) is AdaJudgeForRewardModeling  # the installed package, no remote code
        assert not info["missing_keys"] and not info["unexpected_keys"]
        torch.testing.assert_close(loaded.eval()(**inputs).logits, expected, atol=1e-6, rtol=0)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), AdaJudgeConfig)


def test_remote_code_loads_without_the_package(make_judge, tiny_tokenizer, tmp_path):
    model = randomize_head(make_judge())
    input_ids, attention_mask, prompt_lengths = pad_batch(encode(tiny_tokenizer), 0)
    expected = model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths).logits
    model.save_pretrained(tmp_path / "judge")
    torch.save(
        {"input_ids": input_ids, "attention_mask": attention_mask, "prompt_lengths": prompt_lengths},
        tmp_path / "in.pt",
    )
    script = f"""
import sys
sys.modules["adajudge_hf"] = None  # make sure the installed package cannot be imported
import torch
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "judge")!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
inputs = torch.load({str(tmp_path / "in.pt")!r})
print(model.eval()(**inputs).logits[:, 0].tolist())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(remote, expected[:, 0], atol=1e-6, rtol=0)


def test_from_backbone_loads_backbone_weights_and_fresh_heads(tmp_path):
    backbone_dir = save_tiny_causal_lm(tmp_path / "backbone")
    judge = AdaJudgeForRewardModeling.from_backbone(backbone_dir, num_refinement_blocks=1, pooling="mean")
    backbone = AutoModel.from_pretrained(backbone_dir)
    for name, tensor in backbone.state_dict().items():
        torch.testing.assert_close(judge.model.state_dict()[name], tensor)
    assert judge.config.pooling == "mean" and judge.config.num_refinement_blocks == 1
    assert judge.config.pad_token_id == 0 and judge.config.response_template is not None
    assert judge.judge_head.refinement_blocks[0].attn_out.weight.abs().sum() == 0


def test_from_backbone_in_bf16_keeps_heads_in_fp32(tmp_path):
    judge = AdaJudgeForRewardModeling.from_backbone(save_tiny_causal_lm(tmp_path / "backbone"), dtype=torch.bfloat16)
    assert judge.model.embed_tokens.weight.dtype == torch.bfloat16
    assert {p.dtype for p in judge.judge_head.parameters()} == {torch.float32}


def test_bf16_loading_keeps_heads_in_fp32(make_judge, tiny_tokenizer, tmp_path):
    randomize_head(make_judge()).save_pretrained(tmp_path)
    model = AdaJudgeForRewardModeling.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.judge_head.parameters()} == {torch.float32}
    input_ids, attention_mask, prompt_lengths = pad_batch(encode(tiny_tokenizer), 0)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths)
    with torch.no_grad():
        out = model(**inputs)
        reference = AdaJudgeForRewardModeling.from_pretrained(tmp_path)(**inputs)
    # fp32 outputs; the heads' matmuls ran in bf16 (mixed precision), so agreement is to bf16 rounding.
    assert out.logits.dtype == torch.float32 and out.routing_weights.dtype == torch.float32
    torch.testing.assert_close(out.logits, reference.logits, atol=2e-2, rtol=2e-2)


def test_pipeline_returns_the_raw_reward(make_judge, tiny_tokenizer):
    model = randomize_head(make_judge(), std=1.0)
    text = "A reward model scores how good a response is."
    scorer = pipeline("text-classification", model=model, tokenizer=tiny_tokenizer, function_to_apply="none")
    with torch.no_grad():
        expected = model(**tiny_tokenizer(text, return_tensors="pt")).logits[0, 0].item()
    assert scorer(text)[0]["score"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("template", ["chatml", "llama3", "phi3"])
def test_response_template_detection_equals_explicit_mask(template):
    tokenizer = make_tiny_tokenizer(template)
    header = find_response_template(tokenizer)
    config = AdaJudgeConfig(
        text_config=make_tiny_backbone_config(tokenizer),
        num_refinement_blocks=1,
        head_hidden_size=16,
        response_template=header,
    )
    torch.manual_seed(0)
    model = randomize_head(AdaJudgeForRewardModeling(config).eval())
    multi_turn = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "Are you sure?"},
    ]
    chats = [([{"role": "user", "content": p}], [{"role": "assistant", "content": r}]) for p, r in CHATS] + [
        (multi_turn, [{"role": "assistant", "content": "Sorry, it is 4."}])
    ]
    examples = [encode_prompt_response(tokenizer, p, r) for p, r in chats]
    examples = [(e.input_ids, e.prompt_length) for e in examples]
    input_ids, attention_mask, prompt_lengths = pad_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        explicit = model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths).logits
        detected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(detected, explicit)


def test_template_without_assistant_header_fails_at_construction():
    tokenizer = make_tiny_tokenizer("chatml")
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError, match="assistant-turn header"):
        find_response_template(tokenizer)


@pytest.fixture
def fresh_warnings():
    """`logger.warning_once` remembers what it said in this process; forget it so the test sees the warning."""
    logging.get_logger("adajudge").warning_once.cache_clear()


def test_missing_template_in_a_row_warns_and_scores_whole_sequence(make_judge, caplog, fresh_warnings):
    model = make_judge(response_template=[1, 2, 3, 4])
    ids = torch.tensor([[10, 11, 12, 13]])
    with caplog.at_level("WARNING"):
        out = model(input_ids=ids)
    assert "was not found" in caplog.text
    assert torch.isfinite(out.logits).all()


def test_no_boundary_at_all_warns(make_judge, caplog, fresh_warnings):
    model = make_judge()
    with caplog.at_level("WARNING"):
        model(input_ids=torch.tensor([[10, 11, 12]]))
    assert "treated as response" in caplog.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_refinement_blocks": -1}, "num_refinement_blocks"),
        ({"pooling": "max"}, "pooling"),
        ({"entropy_floor": math.log(3)}, "entropy_floor"),
        ({"focal_gamma": -1.0}, "focal_gamma"),
        ({"refinement_num_heads": 3}, "refinement_num_heads"),
        ({"router_temperature": 0.0}, "router_temperature"),
        ({"refinement_attention": "sideways"}, "refinement_attention"),
        ({"response_template": []}, "response_template"),
    ],
)
def test_invalid_config_values_raise(tiny_tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaJudgeConfig(text_config=make_tiny_backbone_config(tiny_tokenizer), **kwargs)


def test_all_padding_row_and_empty_response_raise(make_judge):
    model = make_judge()
    ids = torch.tensor([[10, 11, 12], [10, 11, 12]])
    with pytest.raises(ValueError, match=r"Row\(s\) \[1\] of `attention_mask` are all padding"):
        model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"Row\(s\) \[0\] have an empty response"):
        model(input_ids=ids, prompt_lengths=torch.tensor([3, 1]))


def test_non_finite_weights_are_refused_on_load(make_judge, tmp_path):
    make_judge().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["judge_head.expert_heads.last.0.weight"][0, 0] = float("nan")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="NaN or Inf.*judge_head.expert_heads.last.0.weight"):
        AdaJudgeForRewardModeling.from_pretrained(tmp_path)


def test_pickle_checkpoints_are_refused_without_unpickling(make_judge, tmp_path):
    make_judge().config.save_pretrained(tmp_path)
    sentinel = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    torch.save({"weights": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle checkpoints"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert not sentinel.exists()


def test_missing_head_tensor_is_reported(make_judge, tmp_path):
    make_judge().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["judge_head.pooling_router.2.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _, info = AdaJudgeForRewardModeling.from_pretrained(tmp_path, output_loading_info=True)
    assert "judge_head.pooling_router.2.weight" in info["missing_keys"]
