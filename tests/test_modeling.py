"""AdaJudgeForRewardModeling: invariances, initialisation, pooling, save/load, registration and bad inputs."""

import importlib
import importlib.util
import json
import math
import subprocess
import sys
import threading
import time
import types

import pytest
import torch
from conftest import CHATS, encode, encode_pairs, pad_batch, randomize_head
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, pipeline
from transformers.utils import logging

from adajudge_hf import AdaJudgeConfig, AdaJudgeForRewardModeling
from adajudge_hf.compat import enable_activation_checkpointing
from adajudge_hf.modeling import REMOTE_CODE_FILES, find_response_template
from adajudge_hf.modeling.loading_adajudge import backbone_only_loading
from adajudge_hf.modeling.modeling_adajudge import AdaJudgeHead, AdaJudgeLayout
from adajudge_hf.packing import pad_packed
from adajudge_hf.testing import make_tiny_backbone_config, make_tiny_tokenizer, save_tiny_causal_lm
from adajudge_hf.tokenization import encode_prompt_response


def rewards(model, examples, pad_id, side="right"):
    input_ids, attention_mask, prompt_lengths = pad_batch(examples, pad_id, side)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths).logits[:, 0]


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


# --- An independent reference of the heads, written from METHOD.md (not from the module's helpers) -----------------


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference_block(x, weights, num_heads, causal, eps):
    """One refinement block on an unpadded row x (L, D): pre-RMSNorm multi-head attention, then a SwiGLU FFN."""
    seq_len, hidden_size = x.shape
    head_dim = hidden_size // num_heads
    q, k, v = (rms_norm(x, weights["attn_norm.weight"], eps) @ weights["attn_qkv.weight"].T).split(hidden_size, -1)
    future = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
    heads = []
    for h in range(num_heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[:, cols] @ k[:, cols].T / math.sqrt(head_dim)  # (L, L)
        if causal:
            scores = scores.masked_fill(future, float("-inf"))
        heads.append(scores.softmax(-1) @ v[:, cols])  # (L, hd)
    x = x + torch.cat(heads, -1) @ weights["attn_out.weight"].T
    gate, up = (rms_norm(x, weights["ffn_norm.weight"], eps) @ weights["ffn_in.weight"].T).chunk(2, -1)
    return x + (torch.nn.functional.silu(gate) * up) @ weights["ffn_out.weight"].T


def mlp(x, weights, prefix):
    """Linear -> GELU -> Linear with the parameters under `prefix`."""
    hidden = torch.nn.functional.gelu(x @ weights[f"{prefix}.0.weight"].T + weights[f"{prefix}.0.bias"])
    return hidden @ weights[f"{prefix}.2.weight"].T + weights[f"{prefix}.2.bias"]


def reference_heads(model, h0, prompt_length, prompt_context_length=None):
    """(reward, expert scores s, pi, alpha) of one unpadded row from its backbone states h0 (L, D), per METHOD.md.

    `prompt_context_length` overrides the tokens z_P averages (to show what a wrong prompt mask would give).
    """
    config = model.config
    weights = {name: p.detach() for name, p in model.judge_head.named_parameters()}
    seq_len = h0.shape[0]
    response = torch.arange(seq_len) >= prompt_length

    # Stage I: H(k) = T_k(H(k-1)); alpha = softmax(W_alpha meanpool(H0)); H~ = sum_k alpha_k H(k).
    states, causal = [h0], config.refinement_attention == "causal"
    for k in range(config.num_refinement_blocks):
        block = {name.split(".", 2)[2]: w for name, w in weights.items() if name.startswith(f"refinement_blocks.{k}.")}
        states.append(reference_block(states[-1], block, config.refinement_num_heads, causal, config.rms_norm_eps))
    candidates = states if config.depth_router_include_input or len(states) == 1 else states[1:]
    if config.num_refinement_blocks:
        alpha = (weights["depth_router.weight"] @ h0.mean(0) + weights["depth_router.bias"]).softmax(-1)
    else:
        alpha = torch.ones(1)
    mixed = sum(a * h for a, h in zip(alpha, candidates))  # (L, D)

    # Stage II: three views of H~, one MLP score per expert, a router over [z_L; z_M; z_A; z_P].
    views = {"last": mixed[-1], "mean": mixed[response].mean(0)}
    if "attention" in config.experts:
        scope = torch.ones(seq_len, dtype=torch.bool) if config.attention_pooling_scope == "all" else response
        beta = (mixed[scope] @ weights["attention_pool.weight"][0] + weights["attention_pool.bias"]).softmax(0)
        views["attention"] = beta @ mixed[scope]
    scores = torch.cat([mlp(views[name], weights, f"expert_heads.{name}") for name in config.experts])  # (E,)
    if len(config.experts) == 1:
        return scores[0], scores, torch.ones(1), alpha
    context_length = prompt_length if prompt_context_length is None else prompt_context_length
    z_prompt = h0[:context_length].mean(0) if context_length else torch.zeros_like(h0[0])
    router_input = torch.cat([views["last"], views["mean"], views["attention"], z_prompt])
    pi = (mlp(router_input, weights, "pooling_router") / config.router_temperature).softmax(-1)
    return (pi * scores).sum(), scores, pi, alpha


def model_and_reference(model, examples, pad_id, side="left"):
    """The model's outputs on a padded batch, and the reference's on each unpadded row (stacked)."""
    input_ids, attention_mask, prompt_lengths = pad_batch(examples, pad_id, side)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths)
        rows = [
            reference_heads(model, model.model(input_ids=torch.tensor([ids])).last_hidden_state[0], prompt_length)
            for ids, prompt_length in examples
        ]
    return out, [torch.stack(column) for column in zip(*rows)]


@pytest.mark.parametrize(
    "judge_kwargs",
    [
        {"num_refinement_blocks": k, "pooling": pooling}
        for k in (0, 2)
        for pooling in ("adaptive", "last", "mean", "attention")
    ]
    + [
        {"num_refinement_blocks": 2, "depth_router_include_input": True, "router_temperature": 0.5},
        {"num_refinement_blocks": 1, "refinement_attention": "bidirectional", "attention_pooling_scope": "response"},
    ],
    ids=lambda kwargs: "-".join(f"{key}={value}" for key, value in kwargs.items()),
)
def test_heads_match_an_independent_reference(make_judge, tiny_tokenizer, judge_kwargs):
    """Every weight random (the zero-initialised ones too), a left-padded batch against unpadded reference rows."""
    model = randomize_head(make_judge(**judge_kwargs), std=0.3)
    out, (reward, scores, pi, alpha) = model_and_reference(model, encode(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    torch.testing.assert_close(out.expert_scores, scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.routing_weights, pi, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits[:, 0], reward, atol=1e-5, rtol=1e-4)
    if judge_kwargs["num_refinement_blocks"]:
        torch.testing.assert_close(out.depth_weights, alpha, atol=1e-5, rtol=1e-4)
        if alpha.shape[-1] > 1:
            assert alpha.std(0).max() > 1e-3  # alpha varies by row: the depth mixture is tested, not a plain average
    else:
        assert out.depth_weights is None
    assert sorted(model.judge_head.expert_heads) == sorted(model.config.experts)  # no unused experts


def with_zero_attention_scorer(model):
    """`model` whose attention scorer has zero weights (any bias: softmax ignores it) and whose attention score head
    is a copy of the mean expert's, so equal views give equal expert scores."""
    head = model.judge_head
    with torch.no_grad():
        head.attention_pool.weight.zero_()
        head.expert_heads["attention"].load_state_dict(head.expert_heads["mean"].state_dict())
    return model


def expert_column(out, model, name):
    return out.expert_scores[..., model.config.experts.index(name)]


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_attention_expert_contains_the_mean_expert_over_the_response(make_judge, tiny_tokenizer, dtype, layout):
    """With `attention_pooling_scope="response"`, a zero scorer gives uniform weights over exactly the tokens the mean
    expert averages, so the attention view is the mean view: a task the mean expert solves, the attention expert can
    solve too (why the synthetic suite's SPREAD task has two right experts). Fails if the two experts' masks diverge
    (a prompt, padding or neighbouring-response token in one and not the other)."""
    model = randomize_head(make_judge(num_refinement_blocks=2, attention_pooling_scope="response"), std=0.3)
    model = with_zero_attention_scorer(model).to(dtype)
    if layout == "padded":  # left padding, rows of different prompt and response lengths
        input_ids, attention_mask, prompt_lengths = pad_batch(
            encode(tiny_tokenizer), tiny_tokenizer.pad_token_id, "left"
        )
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "prompt_lengths": prompt_lengths}
        assert not attention_mask.all()
    else:  # [prompt; chosen; rejected] rows sharing their prompt, padded to a common width
        inputs = pad_packed(encode_pairs(tiny_tokenizer)[1], tiny_tokenizer.pad_token_id, "left")
    with torch.no_grad():
        out = model(**inputs)
    mean, attention = expert_column(out, model, "mean"), expert_column(out, model, "attention")
    assert mean.std() > 1e-2  # the responses differ, so equal columns are not a constant
    torch.testing.assert_close(attention, mean, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_attention_expert_with_the_default_scope_averages_prompt_and_response(make_judge, tiny_tokenizer, dtype):
    """With the default `attention_pooling_scope="all"` (prompt included, METHOD.md) a zero scorer gives the mean over
    prompt + response, which is the mean expert of the same row read without a prompt, and not the mean expert."""
    model = with_zero_attention_scorer(randomize_head(make_judge(num_refinement_blocks=2), std=0.3)).to(dtype)
    input_ids, attention_mask, prompt_lengths = pad_batch(encode(tiny_tokenizer), tiny_tokenizer.pad_token_id, "left")
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths)
        no_prompt = model(
            input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=torch.zeros_like(prompt_lengths)
        )
    attention = expert_column(out, model, "attention")
    torch.testing.assert_close(attention, expert_column(no_prompt, model, "mean"), atol=1e-6, rtol=0)
    assert (attention - expert_column(out, model, "mean")).abs().max() > 1e-2


def test_prompt_mask_drives_the_router_as_the_reference_says(make_judge, tiny_tokenizer):
    """With random routers, z_P (the mean of H0 over the prompt) moves pi; at zero init a wrong mask is invisible."""
    model = randomize_head(make_judge(num_refinement_blocks=2), std=0.3)
    ids, prompt_length = encode(tiny_tokenizer)[2]
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        h0 = model.model(input_ids=input_ids).last_hidden_state[0]
        for length in (prompt_length, prompt_length - 3, 1):
            out = model(input_ids=input_ids, prompt_lengths=torch.tensor([length]))
            _, _, pi, _ = reference_heads(model, h0, length)
            torch.testing.assert_close(out.routing_weights[0], pi, atol=1e-5, rtol=1e-4)
            # Same response, z_P over one prompt token too few: the router must see the difference.
            _, _, wrong_pi, _ = reference_heads(model, h0, length, prompt_context_length=length - 1)
            assert (out.routing_weights[0] - wrong_pi).abs().max() > 1e-3
        by_mask = model(input_ids=input_ids, response_mask=torch.arange(len(ids))[None] >= prompt_length)
    _, _, pi, _ = reference_heads(model, h0, prompt_length)
    torch.testing.assert_close(by_mask.routing_weights[0], pi, atol=1e-5, rtol=1e-4)


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
            enable_activation_checkpointing(model)
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
    assert files == sorted(["config.json", "model.safetensors", *REMOTE_CODE_FILES])
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


def test_backbone_only_loading_is_scoped_to_its_thread(make_judge, tmp_path):
    """A full checkpoint missing its heads is refused in one thread while another thread loads a backbone into a
    judge (where missing heads are expected): the switch is a context variable, not state on the class."""
    full = tmp_path / "full"
    make_judge().save_pretrained(full)
    weights = load_file(full / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("judge_head.")}, full / "model.safetensors")
    inside, errors = threading.Event(), []

    def load_backbone_only():
        with backbone_only_loading():
            inside.set()
            AdaJudgeForRewardModeling.from_pretrained(full)  # missing heads ignored here
            time.sleep(0.2)

    thread = threading.Thread(target=lambda: errors.extend(_capture(load_backbone_only)))
    thread.start()
    inside.wait(timeout=30)
    with pytest.raises(ValueError, match="missing .* weight"):
        AdaJudgeForRewardModeling.from_pretrained(full)
    thread.join()
    assert errors == []
    assert AdaJudgeForRewardModeling._keys_to_ignore_on_load_missing is None


def _capture(function) -> list[BaseException]:
    try:
        function()
    except BaseException as error:  # reported by the main thread
        return [error]
    return []


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
        model(input_ids=ids, response_mask=torch.tensor([[0, 0, 0], [0, 1, 1]]))


IDS = torch.tensor([[10, 11, 12, 13], [10, 11, 12, 13]])


@pytest.mark.parametrize(
    "inputs, message",
    [
        (
            {"response_mask": torch.ones(2, 3)},
            r"`response_mask` has shape \(2, 3\), expected \(2, 4\) \(one 0/1 flag per token, like `input_ids`\)",
        ),
        (
            {"prompt_lengths": torch.tensor([1, 2, 3])},
            r"`prompt_lengths` has shape \(3,\), expected \(2,\) \(one prompt length per row\)",
        ),
        (
            {"segment_ids": torch.zeros(1, 4, dtype=torch.long)},
            r"`segment_ids` has shape \(1, 4\), expected \(2, 4\)",
        ),
        (
            {"prompt_lengths": torch.tensor([-1, 2])},
            r"`prompt_lengths` must be >= 0, got \[-1\] in row\(s\) \[0\]: a prompt length is the number of",
        ),
        (
            {"prompt_lengths": torch.tensor([1, 7]), "attention_mask": torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])},
            r"`prompt_lengths` \[7\] in row\(s\) \[1\] leave no response: those rows have only \[3\] valid token",
        ),
        (
            {"input_ids": torch.tensor([[10, 11, 12, 600]]), "prompt_lengths": torch.tensor([1])},
            r"`input_ids` hold token id 600, but the judge's embedding has \d+ rows.*"
            r"`model.resize_token_embeddings\(len\(tokenizer\)\)`",
        ),
    ],
    ids=["response_mask-shape", "prompt_lengths-shape", "segment_ids-shape", "negative", "too-long", "vocabulary"],
)
def test_bad_model_inputs_raise_one_clear_error(make_judge, inputs, message):
    model = make_judge()
    inputs = {"input_ids": IDS, **inputs}
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_tokenizer_larger_than_the_embedding_is_named(make_judge, tiny_tokenizer):
    """A tokenizer with added tokens meets an older judge: the error names the fix, and the fix works."""
    model = make_judge()
    tokenizer = make_tiny_tokenizer()
    tokenizer.add_tokens(["<new_token>"])
    ids = tokenizer("hello <new_token>", return_tensors="pt").input_ids
    with pytest.raises(ValueError, match=rf"embedding has {len(tiny_tokenizer)} rows.*resize_token_embeddings"):
        model(input_ids=ids)
    model.resize_token_embeddings(len(tokenizer))
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_inputs_beyond_max_position_embeddings_warn_once(make_judge, caplog, fresh_warnings):
    model = make_judge()
    limit = model.config.text_config.max_position_embeddings
    long_ids = torch.randint(10, 100, (1, limit + 1))
    with caplog.at_level("WARNING"):
        model(input_ids=long_ids[:, :limit], prompt_lengths=torch.tensor([1]))
        assert "max_position_embeddings" not in caplog.text  # exactly at the limit: no warning
        for _ in range(2):
            out = model(input_ids=long_ids, prompt_lengths=torch.tensor([1]))
    assert caplog.text.count(f"longer than the backbone's max_position_embeddings ({limit})") == 1
    assert "Truncate inputs" in caplog.text and torch.isfinite(out.logits).all()


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
    with pytest.raises(ValueError, match=r"missing 1 weight\(s\) of the judge, e.g. \['judge_head.pooling_router"):
        AdaJudgeForRewardModeling.from_pretrained(tmp_path, output_loading_info=True)


HEAD_SCORE, LAYOUT = AdaJudgeHead.score, AdaJudgeLayout.from_inputs
VLLM_MODULES = (
    "vllm",
    "vllm.config",
    "vllm.model_executor",
    "vllm.model_executor.layers",
    "vllm.model_executor.layers.logits_processor",
    "vllm.model_executor.layers.pooler",
    "vllm.model_executor.layers.pooler.seqwise",
    "vllm.model_executor.layers.vocab_parallel_embedding",
    "vllm.model_executor.models",
    "vllm.model_executor.models.interfaces_base",
    "vllm.model_executor.models.utils",
    "vllm.sequence",
    "vllm.v1",
    "vllm.v1.pool",
    "vllm.v1.pool.metadata",
)


class _VllmName:
    """Stands in for any name `adajudge_hf.vllm.model` imports from vLLM: a base class, a value, or a decorator."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, decorated=None, *args, **kwargs):
        return decorated


class _VllmModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _VllmName


def vllm_judge_class(monkeypatch):
    """`adajudge_hf.vllm.model.AdaJudgeForRewardModeling`, imported with vLLM's names stood in where vLLM is absent."""
    if importlib.util.find_spec("vllm") is None:
        for name in VLLM_MODULES:
            monkeypatch.setitem(sys.modules, name, _VllmModule(name))
        monkeypatch.setitem(sys.modules, "adajudge_hf.vllm.model", None)  # re-imported now, forgotten afterwards
        del sys.modules["adajudge_hf.vllm.model"]
    return importlib.import_module("adajudge_hf.vllm.model").AdaJudgeForRewardModeling


def test_the_vllm_model_scores_through_the_heads_public_interface(make_judge, tiny_tokenizer, monkeypatch):
    """The vLLM model keeps no copy of the layout or scoring code: its rewards of backbone states go through
    `AdaJudgeLayout.from_inputs` and `AdaJudgeHead.score`, the transformers model's own path, and equal its rewards."""
    vllm_class = vllm_judge_class(monkeypatch)
    copies = {"_layout", "_locate_response", "_response_after_template", "_score", "_packed_layout"}
    assert not copies & set(vars(vllm_class))
    judge = randomize_head(make_judge(response_template=find_response_template(tiny_tokenizer)))
    scored = []
    monkeypatch.setattr(AdaJudgeHead, "score", lambda head, *args: scored.append(args) or HEAD_SCORE(head, *args))
    layouts = []
    monkeypatch.setattr(
        AdaJudgeLayout, "from_inputs", classmethod(lambda cls, *a, **k: layouts.append(a) or LAYOUT(*a, **k))
    )
    vllm_judge = vllm_class.__new__(vllm_class)
    torch.nn.Module.__init__(vllm_judge)
    vllm_judge.config, vllm_judge.judge_head = judge.config, judge.judge_head

    sequences = [torch.tensor(ids) for ids, _ in encode(tiny_tokenizer)]
    with torch.no_grad():
        states = [judge.model(input_ids=ids[None]).last_hidden_state[0] for ids in sequences]
        rewards = vllm_judge.rewards(states, sequences)
        assert len(scored) == len(layouts) == 1
        input_ids, attention_mask, _ = pad_batch([(ids.tolist(), 0) for ids in sequences], 0)
        expected = judge(input_ids=input_ids, attention_mask=attention_mask).logits  # response after the template
    assert len(scored) == len(layouts) == 2
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=0)
