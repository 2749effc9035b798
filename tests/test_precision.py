"""Half precision is a supported configuration: heads in fp32, bf16 or fp16 behind a backbone in any of the three.

A "precision" below is (backbone dtype, heads dtype): `bf16` is `judge.to(torch.bfloat16)` (or bf16 heads saved by
FSDP/ZeRO), `bf16-backbone` is what `from_pretrained(..., dtype=torch.bfloat16)` and `from_backbone` give (fp32 heads
whose matmuls run in bf16 under autocast). Each invariance (padding side, batch composition, packed == plain, save/load
round trip) must hold within a tolerance set by the least precise dtype, scaled by the reward scale
(`atol = TOLERANCE[dtype] * max(1, max |reward|)`; the tiny suite's rewards are of order 0.1 to 1):

- fp32, 1e-5: the same maths summed in another order (another padding, batch shape, attention mask or BLAS blocking)
  moves a reward by a few float32 ulps (eps 1.2e-7) per sum, over a few hundred sums.
- fp16, 5e-3: 11 significant bits (eps 4.9e-4); a reward passes through some ten rounded matmuls and norms.
- bf16, 3e-2: 8 significant bits (eps 3.9e-3), same path. Measured on this tiny suite (2-layer backbone, random heads,
  every pooling, K in {0, 2}): max |bf16 - fp32| reward difference 9.6e-3 (all bf16 and bf16 backbone alike), fp16
  7.3e-4. The tolerance leaves about 3x headroom for other CPUs' kernels.
"""

import asyncio
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import asgi_client, encode, encode_pairs, pad_batch, plain_batch, randomize_head, synthetic_pairs
from peft import LoraConfig
from transformers import TrainerCallback

from adajudge_hf import AdaJudgeForRewardModeling, load_judge, save_judge
from adajudge_hf import precision as precision_module
from adajudge_hf.cli import main as cli_main
from adajudge_hf.compat import CPU_BF16_FLAGS, cpu_capabilities
from adajudge_hf.demo import DemoArguments
from adajudge_hf.evaluation.cli import main as evaluate_main
from adajudge_hf.packing import pad_packed
from adajudge_hf.precision import Precision, load_for_inference, native_bf16, resolve_bf16_training, resolve_dtype
from adajudge_hf.testing import make_tiny_judge_config, save_tiny_causal_lm
from adajudge_hf.trainer import AdaJudgeRewardConfig, AdaJudgeRewardTrainer


PRECISIONS = {  # name: (backbone dtype, heads dtype)
    "fp32": (torch.float32, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "bf16-backbone": (torch.bfloat16, torch.float32),
    "fp16": (torch.float16, torch.float16),
    "fp16-backbone": (torch.float16, torch.float32),
}
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def invariance_cases():
    """(precision, K, pooling): every pooling and K in fp32 and bf16; the other precisions run "adaptive" (all three
    experts and the router) by default and their static poolings under `-m slow`."""
    for precision in PRECISIONS:
        for num_refinement_blocks in (0, 2):
            for pooling in ("adaptive", "last", "mean", "attention"):
                fast = precision in ("fp32", "bf16") or pooling == "adaptive"
                yield pytest.param(
                    precision,
                    num_refinement_blocks,
                    pooling,
                    marks=() if fast else pytest.mark.slow,
                    id=f"{precision}-K{num_refinement_blocks}-{pooling}",
                )


INVARIANCE_CASES = list(invariance_cases())


def in_precision(model: AdaJudgeForRewardModeling, precision: str) -> AdaJudgeForRewardModeling:
    backbone_dtype, heads_dtype = PRECISIONS[precision]
    model.model.to(backbone_dtype)
    model.judge_head.to(heads_dtype)
    return model


def assert_rewards_close(actual: torch.Tensor, expected: torch.Tensor, *dtypes: torch.dtype) -> None:
    """Equal within the tolerance of the least precise of `dtypes`, relative to the reward scale (module docstring)."""
    atol = max(TOLERANCE[dtype] for dtype in dtypes) * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def rewards(model, examples, pad_id, side="right"):
    input_ids, attention_mask, prompt_lengths = pad_batch(examples, pad_id, side)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths)
    assert out.logits.dtype == out.routing_weights.dtype == out.expert_scores.dtype == torch.float32
    assert out.depth_weights is None or out.depth_weights.dtype == torch.float32
    assert torch.isfinite(out.logits).all()
    return out.logits[:, 0]


@pytest.mark.parametrize("heads", DTYPES)
@pytest.mark.parametrize("backbone", DTYPES)
@pytest.mark.parametrize("num_refinement_blocks", [0, 2])
def test_every_backbone_and_heads_dtype_runs_and_tracks_fp32(
    make_judge, tiny_tokenizer, num_refinement_blocks, backbone, heads
):
    """Every backbone dtype with every heads dtype, with and without refinement blocks, runs (no dtype mismatch
    between states and head weights) and gives rewards within that precision's tolerance of fp32."""
    model = randomize_head(make_judge(num_refinement_blocks=num_refinement_blocks))
    examples, pad = encode(tiny_tokenizer), tiny_tokenizer.pad_token_id
    expected = rewards(model, examples, pad)
    model.model.to(DTYPES[backbone])
    model.judge_head.to(DTYPES[heads])
    assert_rewards_close(rewards(model, examples, pad), expected, DTYPES[backbone], DTYPES[heads])


@pytest.mark.parametrize("precision, num_refinement_blocks, pooling", INVARIANCE_CASES)
def test_rewards_do_not_depend_on_padding_or_batch_composition(
    make_judge, tiny_tokenizer, precision, num_refinement_blocks, pooling
):
    model = randomize_head(make_judge(pooling=pooling, num_refinement_blocks=num_refinement_blocks))
    examples, pad = encode(tiny_tokenizer), tiny_tokenizer.pad_token_id
    fp32 = rewards(model, examples, pad)
    model = in_precision(model, precision)
    dtypes = PRECISIONS[precision]
    one_by_one = torch.cat([rewards(model, [example], pad) for example in examples])
    assert_rewards_close(one_by_one, fp32, *dtypes)
    assert_rewards_close(rewards(model, examples, pad, "right"), one_by_one, *dtypes)
    assert_rewards_close(rewards(model, examples, pad, "left"), one_by_one, *dtypes)
    assert_rewards_close(rewards(model, [examples[2], examples[0]], pad), one_by_one[[2, 0]], *dtypes)
    # pad == eos: the padding id must not matter, only attention_mask does.
    assert_rewards_close(rewards(model, examples, tiny_tokenizer.eos_token_id), one_by_one, *dtypes)


@pytest.mark.parametrize("precision, num_refinement_blocks, pooling", INVARIANCE_CASES)
def test_packed_pairs_equal_plain_rows(make_judge, tiny_tokenizer, precision, num_refinement_blocks, pooling):
    model = in_precision(
        randomize_head(make_judge(pooling=pooling, num_refinement_blocks=num_refinement_blocks)), precision
    )
    plain, packed = encode_pairs(tiny_tokenizer)
    with torch.no_grad():
        expected = model(**plain_batch(plain, tiny_tokenizer.pad_token_id))
        actual = model(**pad_packed(packed, tiny_tokenizer.pad_token_id, "left"))
    for key in ("logits", "routing_weights", "depth_weights"):
        if getattr(expected, key) is not None:
            assert_rewards_close(getattr(actual, key), getattr(expected, key), *PRECISIONS[precision])


@pytest.mark.parametrize("precision, num_refinement_blocks, pooling", INVARIANCE_CASES)
def test_save_and_load_round_trip_in_every_precision(
    make_judge, tiny_tokenizer, tmp_path, precision, num_refinement_blocks, pooling
):
    """Loading keeps the saved backbone dtype ("auto") and puts the heads in fp32; rewards stay within tolerance."""
    model = in_precision(
        randomize_head(make_judge(pooling=pooling, num_refinement_blocks=num_refinement_blocks)), precision
    )
    examples, pad = encode(tiny_tokenizer), tiny_tokenizer.pad_token_id
    expected = rewards(model, examples, pad)
    model.save_pretrained(tmp_path)
    backbone_dtype, heads_dtype = PRECISIONS[precision]
    loaded = AdaJudgeForRewardModeling.from_pretrained(tmp_path, dtype="auto").eval()
    assert loaded.model.embed_tokens.weight.dtype == backbone_dtype
    assert {p.dtype for p in loaded.judge_head.parameters()} == {torch.float32}
    assert_rewards_close(rewards(loaded, examples, pad), expected, backbone_dtype, heads_dtype)
    for name, tensor in model.judge_head.state_dict().items():  # the heads' values survive exactly
        torch.testing.assert_close(loaded.judge_head.state_dict()[name], tensor.float(), atol=0, rtol=0)


@pytest.mark.parametrize("precision", ["fp16", "fp16-backbone", "bf16"])
def test_long_half_precision_inputs_do_not_overflow(make_judge, precision):
    """Masked means over 4,096 states around 20 stay finite in fp16 and bf16 (each state is weighted before the sum,
    which would overflow fp16), and rewards, pi and alpha track fp32."""
    model = randomize_head(make_judge(num_refinement_blocks=2), std=0.02)
    states = 20 + torch.randn(1, 4096, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    prompt_lengths = torch.tensor([1000])
    with torch.no_grad():
        expected = model.score_hidden_states(states, prompt_lengths=prompt_lengths)
        model = in_precision(model, precision)
        out = model.score_hidden_states(states.to(PRECISIONS[precision][0]), prompt_lengths=prompt_lengths)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.depth_weights).all()
    for key in ("logits", "routing_weights", "depth_weights"):
        assert_rewards_close(getattr(out, key), getattr(expected, key), *PRECISIONS[precision])


@pytest.mark.parametrize("dtype", [torch.bfloat16, "auto"])
def test_heads_form_of_a_bf16_judge_loads_and_scores_in_half_precision(tiny_tokenizer, tmp_path, dtype):
    """The GPU default path: `from_backbone(dtype=bf16)`, heads saved alone (as FSDP/ZeRO saves write them, in bf16),
    `load_judge(..., dtype=...)` with K >= 1 refinement blocks, scores with the rewards of the judge it saved."""
    backbone = save_tiny_causal_lm(tmp_path / "backbone")
    judge = AdaJudgeForRewardModeling.from_backbone(backbone, dtype=torch.bfloat16, num_refinement_blocks=2)
    judge = randomize_head(judge.eval()).to(torch.bfloat16)
    examples, pad = encode(tiny_tokenizer), tiny_tokenizer.pad_token_id
    expected = rewards(judge, examples, pad)
    save_judge(judge, tmp_path / "judge", form="heads")
    loaded = load_judge(tmp_path / "judge", dtype=dtype)
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert_rewards_close(rewards(loaded, examples, pad), expected, torch.bfloat16)
    assert_rewards_close(rewards(loaded.to(torch.bfloat16), examples, pad), expected, torch.bfloat16)


# --- Which dtype runs where: `adajudge_hf.precision` -------------------------------------------------------------


def cpu_with(monkeypatch, **flags):
    """Pretend the CPU reports these capability flags (an x86 CPU without bf16 units otherwise)."""
    capabilities = {"architecture": "x86_64", "cpu_name": "test CPU", "avx2": True, "amx_bf16": False}
    monkeypatch.setattr(precision_module, "cpu_capabilities", lambda: {**capabilities, "avx512_bf16": False, **flags})


def test_cpu_capabilities_come_from_proc_cpuinfo_where_torch_cannot_tell(monkeypatch):
    """torch 2.7, the floor, has no `torch.cpu.get_capabilities`; the bf16 unit flags are then read from /proc/cpuinfo,
    present or not, and agree with torch's where both exist."""
    if not Path("/proc/cpuinfo").exists():
        pytest.skip("needs Linux's /proc/cpuinfo")
    from_torch = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else None
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    capabilities = cpu_capabilities()
    bf16_flags = CPU_BF16_FLAGS.get(capabilities["architecture"], {})
    assert bf16_flags, f"no bf16 flags known for {capabilities['architecture']}"
    for flag in bf16_flags:
        assert isinstance(capabilities[flag], bool)
        if from_torch is not None and flag in from_torch:
            assert capabilities[flag] == from_torch[flag]
    assert native_bf16("cpu")[0] == any(capabilities[flag] for flag in bf16_flags)


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_auto_is_bf16_on_a_cpu_with_bf16_units_and_says_which(monkeypatch, flag):
    cpu_with(monkeypatch, **{flag: True})
    precision = resolve_dtype("auto", "cpu")
    assert precision.dtype == torch.bfloat16
    assert flag in precision.reason
    assert precision.as_record() == {"dtype": "bfloat16", "dtype_reason": precision.reason}


def test_auto_is_fp32_on_a_cpu_without_bf16_units(monkeypatch):
    cpu_with(monkeypatch)
    precision = resolve_dtype(None, "cpu")  # None: as "auto"
    assert precision.dtype == torch.float32
    assert "amx_bf16" in precision.reason and "emulated" in precision.reason


@pytest.mark.parametrize("major, expected", [(7, torch.float32), (8, torch.bfloat16), (9, torch.bfloat16)])
def test_auto_on_cuda_is_bf16_from_ampere_on(monkeypatch, major, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Test GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (major, 0))
    precision = resolve_dtype("auto", "cuda:0")
    assert precision.dtype == expected
    assert f"compute capability {major}.0" in precision.reason


def test_an_explicit_dtype_is_kept_and_bf16_without_units_is_warned_about(monkeypatch, caplog):
    cpu_with(monkeypatch)
    assert resolve_dtype("float16", "cpu").dtype == torch.float16
    assert resolve_dtype(torch.float32, "cpu") == Precision(torch.float32, "requested")
    with caplog.at_level(logging.WARNING, logger="adajudge_hf.precision"):
        assert resolve_dtype("bfloat16", "cpu").dtype == torch.bfloat16
    assert "emulated" in caplog.text and "--dtype auto" in caplog.text
    with pytest.raises(ValueError, match="float32, bfloat16"):
        resolve_dtype("fp32", "cpu")


def test_training_bf16_left_unset_follows_the_device_and_an_explicit_value_wins(monkeypatch, tmp_path):
    common = dict(use_cpu=True, report_to="none")
    cpu_with(monkeypatch, amx_bf16=True)
    assert AdaJudgeRewardConfig(str(tmp_path), **common).bf16 is True
    assert AdaJudgeRewardConfig(str(tmp_path), bf16=False, **common).bf16 is False
    cpu_with(monkeypatch)
    assert AdaJudgeRewardConfig(str(tmp_path), **common).bf16 is False  # TRL alone would turn it on
    assert AdaJudgeRewardConfig(str(tmp_path), bf16=True, **common).bf16 is True
    assert resolve_bf16_training(None, True, "cpu") == (False, "fp16 mixed precision requested")


def test_load_for_inference_loads_in_the_resolved_dtype_with_fp32_heads(make_judge, tiny_tokenizer, tmp_path):
    judge = randomize_head(make_judge(num_refinement_blocks=2))
    save_judge(judge, tmp_path / "judge", form="full", tokenizer=tiny_tokenizer)
    examples, pad = encode(tiny_tokenizer), tiny_tokenizer.pad_token_id
    expected = rewards(judge, examples, pad)
    for dtype in ("float32", "bfloat16"):
        model, tokenizer, precision = load_for_inference(tmp_path / "judge", "cpu", dtype)
        assert model.model.embed_tokens.weight.dtype == precision.dtype == getattr(torch, dtype)
        assert {p.dtype for p in model.judge_head.parameters()} == {torch.float32}
        assert not model.training and tokenizer.pad_token_id == pad
        assert_rewards_close(rewards(model, examples, pad), expected, precision.dtype)
    with pytest.raises(OSError, match="missing"):
        load_for_inference(tmp_path / "missing", "cpu")


# --- Training under bf16 autocast --------------------------------------------------------------------------------


class GradientsBeforeTheStep(TrainerCallback):
    """Keeps a copy of every trainable parameter's gradient just before the optimizer step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def one_training_step(tiny_tokenizer, output_dir, bf16: bool):
    """One LoRA training step of a tiny K=2 judge (same initial weights and batch whatever `bf16`): the loss, the
    gradients, the dtypes the backbone's matmuls produced, and the trained model."""
    torch.manual_seed(0)
    judge = randomize_head(AdaJudgeForRewardModeling(make_tiny_judge_config(tiny_tokenizer, num_refinement_blocks=2)))
    matmul_dtypes = set()
    judge.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, out: matmul_dtypes.add(out.dtype))
    gradients = GradientsBeforeTheStep()
    args = AdaJudgeRewardConfig(
        str(output_dir), bf16=bf16, use_cpu=True, max_steps=1, per_device_train_batch_size=8, learning_rate=1e-3,
        save_strategy="no", report_to="none", disable_tqdm=True, activation_checkpointing=False, seed=0,
    )  # fmt: skip
    trainer = AdaJudgeRewardTrainer(
        judge,
        args,
        train_dataset=synthetic_pairs(8),
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8),
        callbacks=[gradients],
    )
    loss = trainer.train().training_loss
    return loss, gradients.gradients, matmul_dtypes, trainer.model


def test_a_bf16_autocast_training_step_reaches_heads_and_lora_and_tracks_fp32(tiny_tokenizer, tmp_path):
    """`bf16=True` (TrainingArguments', `--bf16 true`) on a CPU: the backbone's matmuls run in bf16 under autocast
    while the weights, the heads' outputs and the loss stay fp32; the loss and every gradient are finite and reach
    both the heads and the LoRA adapters, and the loss and gradients track an fp32 step from the same weights."""
    loss32, grads32, dtypes32, _ = one_training_step(tiny_tokenizer, tmp_path / "fp32", bf16=False)
    loss16, grads16, dtypes16, model = one_training_step(tiny_tokenizer, tmp_path / "bf16", bf16=True)
    assert dtypes32 == {torch.float32} and dtypes16 == {torch.bfloat16}
    assert math.isfinite(loss16) and abs(loss16 - loss32) <= TOLERANCE[torch.bfloat16] * max(1.0, abs(loss32))
    assert grads16.keys() == grads32.keys()
    assert any("lora_A" in name for name in grads16) and any("judge_head" in name for name in grads16)
    for group in ("lora_", "judge_head"):
        bf16 = torch.cat([g.flatten() for name, g in grads16.items() if group in name])
        fp32 = torch.cat([g.flatten() for name, g in grads32.items() if group in name])
        assert torch.isfinite(bf16).all() and bf16.abs().sum() > 0, group
        assert torch.nn.functional.cosine_similarity(bf16, fp32, dim=0) > 0.999, group
    # The trained weights stay fp32 (autocast, not a bf16 cast); rewards under autocast track fp32 ones.
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    examples, pad = encode(tiny_tokenizer), tiny_tokenizer.pad_token_id
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = rewards(model, examples, pad)
    assert_rewards_close(autocast, rewards(model, examples, pad), torch.bfloat16)


@pytest.mark.parametrize("flag", [[], ["--dtype", "bfloat16"]], ids=["auto", "bfloat16"])
def test_evaluate_records_the_dtype_and_why_in_metrics_json(make_judge, tiny_tokenizer, tmp_path, capsys, flag):
    save_judge(randomize_head(make_judge()), tmp_path / "judge", form="full", tokenizer=tiny_tokenizer)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}\n' * 2)
    argv = ["--model", str(tmp_path / "judge"), "--benchmark", "pairs", "--data", str(pairs), "--output-dir"]
    assert evaluate_main([*argv, str(tmp_path / "out"), *flag]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    expected = resolve_dtype(flag[1] if flag else "auto", "cpu")
    assert metrics["dtype"] == expected.name and metrics["dtype_reason"] == expected.reason
    assert f"computing in {expected.name} ({expected.reason})" in capsys.readouterr().err


def test_serve_info_says_which_dtype_and_why(make_judge, tiny_tokenizer, tmp_path):
    from adajudge_hf.serve import create_app, load_for_serving

    save_judge(make_judge(), tmp_path / "judge", form="full", tokenizer=tiny_tokenizer)
    served = load_for_serving(str(tmp_path / "judge"), device="cpu")  # the CLI's default: auto

    async def info():
        async with asgi_client(create_app(served)) as client:
            return (await client.get("/info")).json()

    expected = resolve_dtype("auto", "cpu")
    answer = asyncio.run(info())
    assert answer["dtype"] == expected.name and answer["dtype_reason"] == expected.reason
    assert served.model.model.embed_tokens.weight.dtype == expected.dtype


def test_demo_refuses_an_unknown_dtype():
    with pytest.raises(ValueError, match="`dtype` must be one of auto, float32, bfloat16, float16"):
        DemoArguments(dtype="fp32")


@pytest.mark.slow
def test_demo_computes_features_in_the_chosen_dtype_and_records_it(tmp_path):
    output_dir = tmp_path / "demo"
    argv = ["demo", "--backbone", "tiny", "--train-pairs", "24", "--eval-pairs", "12", "--epochs", "1"]
    assert cli_main([*argv, "--dtype", "bfloat16", "--output-dir", str(output_dir)]) == 0
    expected = resolve_dtype("bfloat16", "cpu").as_record()
    assert {key: json.loads((output_dir / "summary.json").read_text())[key] for key in expected} == expected
    metrics = json.loads((output_dir / "eval" / "adajudge" / "pairs" / "metrics.json").read_text())
    assert {key: metrics[key] for key in expected} == expected
    packaged = load_judge(output_dir / "judge")
    assert packaged.model.embed_tokens.weight.dtype == torch.bfloat16
    assert {p.dtype for p in packaged.judge_head.parameters()} == {torch.float32}


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_adajudge_reward_loads_a_folder_in_the_resolved_dtype(make_judge, tiny_tokenizer, tmp_path, dtype):
    from adajudge_hf.serve import AdaJudgeReward

    judge = randomize_head(make_judge(num_refinement_blocks=2))
    save_judge(judge, tmp_path / "judge", form="full", tokenizer=tiny_tokenizer)
    prompts = [[{"role": "user", "content": "2 + 2?"}]] * 2
    completions = [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]]
    expected = torch.tensor(AdaJudgeReward(judge, tiny_tokenizer)(prompts=prompts, completions=completions))
    reward = AdaJudgeReward(tmp_path / "judge", dtype=dtype)
    precision = resolve_dtype(dtype, "cpu")
    assert reward.judge.model.embed_tokens.weight.dtype == precision.dtype
    assert {p.dtype for p in reward.judge.judge_head.parameters()} == {torch.float32}
    assert_rewards_close(torch.tensor(reward(prompts=prompts, completions=completions)), expected, precision.dtype)
