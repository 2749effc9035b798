"""The batching toolkit scoring, serving and features share: a packed pass's outputs come back per item, in order,
equal to scoring each item in its own row (also when rows hold different numbers of responses); plain passes; prompt
groups; padding id (the tokenizer's for AdaJudge, the config's for stock models); eval mode restored."""

import pytest
import torch
from conftest import randomize_head

from adajudge_hf.batching import (
    ItemScore,
    depth_candidate_names,
    eval_mode,
    item_scores,
    packed_output_order,
    padding_id,
    plain_inputs,
    prompt_groups,
)
from adajudge_hf.packing import pack_responses, packed_inputs
from adajudge_hf.tokenization import encode_prompt_response


def test_packed_output_order_lists_every_rows_responses_row_by_row():
    # Three rows with 2, 1 and 3 responses: outputs are responses-first, row b's response s at s * 3 + b.
    assert packed_output_order([2, 1, 3]) == [0, 3, 1, 2, 5, 8]
    assert packed_output_order([]) == []


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.03)])
def test_item_scores_of_a_packed_pass_equal_each_item_in_its_own_row(make_judge, tiny_tokenizer, dtype, atol):
    judge = randomize_head(make_judge(num_refinement_blocks=2)).to(dtype)
    groups = {
        "What is the capital of France?": ["Paris.", "Lyon, I think.", "The capital of France is Paris."],
        "Is 2+2 equal to 4?": ["Yes."],
        "How do I bake bread?": ["Mix flour, water, salt and yeast.", "No."],
    }
    rows, plain = [], []
    for question, answers in groups.items():
        encoded = [
            encode_prompt_response(
                tiny_tokenizer, [{"role": "user", "content": question}], [{"role": "assistant", "content": a}]
            )
            for a in answers
        ]
        prompt = encoded[0].input_ids[: encoded[0].prompt_length]
        responses = [e.input_ids[e.prompt_length :] for e in encoded]
        rows.append(pack_responses(prompt, responses))
        plain += encoded
    inputs, order = packed_inputs(rows, padding_id(tiny_tokenizer))  # rows of 3, 1 and 2 responses
    assert inputs["input_ids"].shape[0] == 3 and int(inputs["segment_ids"].max()) == 3
    assert order == packed_output_order([3, 1, 2])
    with torch.inference_mode():
        packed = item_scores(judge(**inputs), order)
        alone = [
            item_scores(judge(input_ids=torch.tensor([e.input_ids]), prompt_lengths=torch.tensor([e.prompt_length])))[
                0
            ]
            for e in plain
        ]
    assert len(packed) == len(alone) == 6 and all(isinstance(score, ItemScore) for score in packed)
    for name in ("reward", "routing_weights", "depth_weights"):
        torch.testing.assert_close(
            torch.tensor([getattr(s, name) for s in packed]),
            torch.tensor([getattr(s, name) for s in alone]),
            atol=atol,
            rtol=0,
        )
    assert len(packed[0].depth_weights) == len(depth_candidate_names(judge.config))


def test_item_scores_refuse_a_model_with_several_logits():
    class Outputs:
        logits = torch.zeros(2, 3)

    with pytest.raises(ValueError, match="num_labels=1"):
        item_scores(Outputs())


def test_item_scores_of_a_stock_reward_model_have_no_routing():
    class Outputs:
        logits = torch.tensor([[0.5], [-1.0]])

    assert item_scores(Outputs()) == [ItemScore(0.5), ItemScore(-1.0)]


def test_prompt_groups_are_runs_of_one_prompt():
    chat = [{"role": "user", "content": "Hi"}]
    assert prompt_groups(["a", "a", "b", "a", chat, chat]) == [[0, 1], [2], [3], [4, 5]]
    assert prompt_groups([]) == []


def test_padding_id_falls_back_to_zero(tiny_tokenizer, make_judge):
    assert padding_id(tiny_tokenizer) == padding_id(tiny_tokenizer, make_judge()) == tiny_tokenizer.pad_token_id

    class NoPad:
        pad_token_id = None

    assert padding_id(NoPad()) == 0


def test_plain_inputs_pad_right_and_give_prompt_lengths_when_asked(tiny_tokenizer):
    chat = [{"role": "user", "content": "2+2?"}]
    short, long = (
        encode_prompt_response(tiny_tokenizer, chat, [{"role": "assistant", "content": answer}])
        for answer in ("4", "It is 4, as 2 and 2 make 4.")
    )
    inputs = plain_inputs([short, long], pad_token_id=7)
    width = len(long.input_ids)
    assert inputs["input_ids"][0].tolist() == short.input_ids + [7] * (width - len(short.input_ids))
    assert inputs["attention_mask"].sum(1).tolist() == [len(short.input_ids), width]
    assert inputs["prompt_lengths"].tolist() == [short.prompt_length, long.prompt_length]
    assert "prompt_lengths" not in plain_inputs([short], 7, prompt_lengths=False)  # stock models take none


def test_eval_mode_gives_the_model_back_in_its_mode_even_after_an_error(make_judge):
    judge = make_judge().train()
    with eval_mode(judge):
        assert not judge.training
    assert judge.training
    with pytest.raises(RuntimeError), eval_mode(judge):
        raise RuntimeError("a failing pass")
    assert judge.training
    judge.eval()
    with eval_mode(judge):
        pass
    assert not judge.training
