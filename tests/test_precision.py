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

import pytest
import torch
from conftest import randomize_head
from test_modeling import encode, pad_batch
from test_packing import encode_pairs, plain_batch

from adajudge_hf import AdaJudgeForRewardModeling, load_judge, save_judge
from adajudge_hf.packing import pad_packed
from adajudge_hf.testing import save_tiny_causal_lm


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
    """bf16 heads used to crash for K >= 1 (`expected m1 and m2 to have the same dtype`)."""
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
    """Masked means of 4,096 states around 20 used to overflow fp16 (sum before dividing): NaN reward and alpha."""
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
    `load_judge(..., dtype=...)`; K >= 1 used to crash with bf16 heads."""
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
