"""Preference data preparation: every TRL format keeps the exact prompt boundary; truncation, drops and the collator."""

import copy
import logging

import pytest
import torch
from datasets import Dataset, IterableDataset

from adajudge_hf.data import (
    PREPARED_COLUMNS,
    DataCollatorForAdaJudge,
    helpsteer3_to_preference,
    prepare_preference_dataset,
)
from adajudge_hf.tokenization import encode_prompt_response


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def prepare(rows, tokenizer, **kwargs):
    return prepare_preference_dataset(Dataset.from_list(rows), tokenizer, **kwargs)


def test_explicit_text_prompt_has_the_exact_boundary(tiny_tokenizer):
    row = {"prompt": "What is the capital of France?", "chosen": " Paris.", "rejected": " Lyon."}
    dataset, stats = prepare([row], tiny_tokenizer)
    example = dataset[0]
    expected = encode_prompt_response(tiny_tokenizer, row["prompt"], row["chosen"])
    assert example["chosen_ids"] == expected.input_ids
    assert example["chosen_prompt_length"] == example["rejected_prompt_length"] == expected.prompt_length
    assert example["chosen_ids"][-1] == tiny_tokenizer.eos_token_id  # TRL adds EOS to plain text too
    assert stats.kept == stats.total == 1 and stats.truncated == 0


def test_implicit_text_prompt_is_extracted_like_trl(tiny_tokenizer):
    implicit = {"chosen": "Question: is the sky blue? Yes.", "rejected": "Question: is the sky blue? No."}
    explicit = {"prompt": "Question: is the sky blue?", "chosen": " Yes.", "rejected": " No."}
    dataset, _ = prepare([implicit], tiny_tokenizer)
    assert dataset[0] == prepare([explicit], tiny_tokenizer)[0][0]


@pytest.mark.parametrize("implicit", [False, True])
def test_conversational_prompt_ends_with_the_assistant_header(tiny_tokenizer, implicit):
    if implicit:
        row = {"chosen": user("2+2?") + assistant("4"), "rejected": user("2+2?") + assistant("5")}
    else:
        row = {"prompt": user("2+2?"), "chosen": assistant("4"), "rejected": assistant("5")}
    example = prepare([row], tiny_tokenizer)[0][0]
    length = example["chosen_prompt_length"]
    assert length == example["rejected_prompt_length"]
    assert tiny_tokenizer.decode(example["chosen_ids"][:length]).endswith("<|im_start|>assistant\n")
    assert tiny_tokenizer.decode(example["chosen_ids"][length:]).startswith("4<|im_end|>")
    full = tiny_tokenizer.apply_chat_template(user("2+2?") + assistant("4"), tokenize=True, return_dict=True)
    assert example["chosen_ids"] == list(full["input_ids"])  # the same tokens TRL would train on


def test_pretokenised_data_uses_the_prompt_length_column(tiny_tokenizer):
    rows = [{"chosen_ids": [5, 6, 7, 8], "rejected_ids": [5, 6, 7, 9, 10], "prompt_length": 2, "margin": 0.5}]
    example = prepare(rows, tiny_tokenizer)[0][0]
    assert example == {
        "chosen_ids": [5, 6, 7, 8],
        "rejected_ids": [5, 6, 7, 9, 10],
        "chosen_prompt_length": 2,
        "rejected_prompt_length": 2,
        "margin": 0.5,
    }
    with pytest.raises(ValueError, match="prompt length 9"):
        prepare([{**rows[0], "prompt_length": 9}], tiny_tokenizer)


def test_pretokenised_data_without_prompt_length_falls_back_to_the_common_prefix(tiny_tokenizer, caplog):
    rows = [{"chosen_ids": [5, 6, 7, 8], "rejected_ids": [5, 6, 9]}, {"chosen_ids": [5, 6], "rejected_ids": [5, 6, 7]}]
    with caplog.at_level(logging.WARNING, logger="adajudge_hf.data"):
        dataset, stats = prepare(rows, tiny_tokenizer)
    assert "common prefix" in caplog.text
    assert [(e["chosen_prompt_length"], e["rejected_prompt_length"]) for e in dataset] == [(2, 2), (1, 2)]
    assert stats.kept == 2  # a chosen that is a prefix of the rejected keeps its last token as response


def test_over_long_pairs_are_truncated_from_the_left_and_reported(tiny_tokenizer, caplog):
    prompt = "The quick brown fox jumps over the lazy dog. " * 4
    rows = [
        {"prompt": prompt, "chosen": " The capital of France is Paris.", "rejected": " No."},
        {"prompt": "Hi?", "chosen": " Yes.", "rejected": " No."},
    ]
    with caplog.at_level(logging.WARNING, logger="adajudge_hf.data"):
        dataset, stats = prepare(rows, tiny_tokenizer, max_length=16)
    assert stats.truncated == 1 and stats.kept == 2
    assert "1 truncated to max_length=16" in caplog.text
    example = dataset[0]
    full = encode_prompt_response(tiny_tokenizer, prompt, " The capital of France is Paris.")
    assert len(example["chosen_ids"]) == 16
    response_length = len(full.input_ids) - full.prompt_length
    assert example["chosen_ids"][-response_length:] == full.input_ids[-response_length:]  # whole response + EOS kept
    assert example["chosen_prompt_length"] == 16 - response_length
    assert example["rejected_prompt_length"] != example["chosen_prompt_length"]  # cut differently: kept per row


def test_empty_responses_and_identical_pairs_are_dropped_and_counted(tiny_tokenizer, caplog):
    rows = [
        {"prompt": "Hi?", "chosen": " Yes.", "rejected": " No."},
        {"prompt": "Hi?", "chosen": "  ", "rejected": " No."},
        {"prompt": "Hi?", "chosen": " Same.", "rejected": " Same."},
        {"prompt": user("Hi?"), "chosen": assistant(""), "rejected": assistant("No.")},
    ]
    with caplog.at_level(logging.WARNING, logger="adajudge_hf.data"):
        dataset, stats = prepare(rows[:3], tiny_tokenizer)
        conversational, conversational_stats = prepare(
            rows[3:] + [rows[3] | {"chosen": assistant("Yes.")}], tiny_tokenizer
        )
    assert len(dataset) == 1 and stats.dropped_empty_response == 1 and stats.dropped_identical == 1
    assert "dropped 1 with an empty response and 1 whose chosen and rejected sequences are identical" in caplog.text
    assert len(conversational) == 1 and conversational_stats.dropped_empty_response == 1
    with pytest.raises(ValueError, match="No pair is left"):
        prepare(rows[1:3], tiny_tokenizer)


def test_truncation_that_makes_a_pair_identical_drops_it(tiny_tokenizer):
    rows = [
        {"chosen_ids": [1, 2, 3, 4, 5], "rejected_ids": [1, 9, 3, 4, 5], "prompt_length": 1},  # differ only early
        {"chosen_ids": [1, 2, 3], "rejected_ids": [1, 2, 4], "prompt_length": 1},
    ]
    dataset, stats = prepare(rows, tiny_tokenizer, max_length=3)
    assert (stats.truncated, stats.dropped_identical, stats.kept) == (1, 1, 1)
    assert dataset["chosen_ids"] == [[1, 2, 3]]


def test_bad_inputs_raise_clear_errors(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"columns \['answer', 'question'\].*not a preference format"):
        prepare([{"question": "q", "answer": "a"}], tiny_tokenizer)
    with pytest.raises(ValueError, match="`strength_column='score'` is not a column"):
        prepare([{"chosen": "a", "rejected": "b"}], tiny_tokenizer, strength_column="score")
    signed = [{"chosen": "a", "rejected": "b", "s": 1}, {"chosen": "a", "rejected": "c", "s": -1}]
    with pytest.raises(ValueError, match="Row 1: preference strength -1"):
        prepare(signed, tiny_tokenizer, strength_column="s")
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="conversational .* no chat template"):
        prepare([{"prompt": user("Hi?"), "chosen": assistant("Yes."), "rejected": assistant("No.")}], tokenizer)


def test_strength_column_becomes_strength_and_margin_is_kept(tiny_tokenizer):
    rows = [{"prompt": "Hi?", "chosen": " Yes.", "rejected": " No.", "overall": 3, "margin": 1.0, "extra": "x"}]
    dataset, _ = prepare(rows, tiny_tokenizer, strength_column="overall")
    assert set(dataset.column_names) == set(PREPARED_COLUMNS) | {"margin", "strength"}
    assert dataset[0]["strength"] == 3.0 and dataset[0]["margin"] == 1.0
    again, stats = prepare_preference_dataset(dataset, tiny_tokenizer, strength_column="strength")
    assert again is dataset and stats is None  # already prepared
    with pytest.raises(ValueError, match="already prepared but has no `strength`"):
        prepare_preference_dataset(dataset.remove_columns("strength"), tiny_tokenizer, strength_column="overall")


def test_streamed_datasets_are_prepared_lazily(tiny_tokenizer):
    rows = [
        {"prompt": "Hi?", "chosen": " Yes.", "rejected": " No."},
        {"prompt": "Hi?", "chosen": " ", "rejected": "x"},
    ]
    streamed = IterableDataset.from_generator(lambda: iter(rows))
    dataset, stats = prepare_preference_dataset(streamed, tiny_tokenizer)
    assert stats is None
    examples = list(dataset)
    assert len(examples) == 1 and examples[0] == prepare(rows[:1], tiny_tokenizer)[0][0]


def test_helpsteer3_rows_become_weighted_preference_pairs():
    rows = [
        {"context": user("a?"), "response1": "r1", "response2": "r2", "overall_preference": -2, "domain": "general"},
        {"context": user("b?"), "response1": "r1", "response2": "r2", "overall_preference": 3, "domain": "code"},
        {"context": user("c?"), "response1": "r1", "response2": "r2", "overall_preference": 0, "domain": "stem"},
    ]
    converted = helpsteer3_to_preference(Dataset.from_list(rows))
    assert len(converted) == 2 and set(converted.column_names) == {"prompt", "chosen", "rejected", "strength"}
    assert converted[0]["chosen"] == assistant("r1") and converted[0]["strength"] == 2.0
    assert converted[1]["chosen"] == assistant("r2") and converted[1]["rejected"] == assistant("r1")
    with pytest.raises(ValueError, match="Not a HelpSteer3"):
        helpsteer3_to_preference(Dataset.from_list([{"chosen": "a", "rejected": "b"}]))


def test_collator_adds_prompt_lengths_in_trl_row_order_and_strength():
    collator = DataCollatorForAdaJudge(pad_token_id=0)
    columns = ("chosen_ids", "rejected_ids", "chosen_prompt_length", "rejected_prompt_length", "margin", "strength")
    examples = [
        dict(zip(columns, ([1, 2, 3], [1, 4], 1, 1, 0.5, 2.0))),
        dict(zip(columns, ([5, 6], [5, 7, 8, 9], 1, 2, 0.0, 1.0))),
    ]
    batch = collator(examples)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [5, 6, 0, 0], [1, 4, 0, 0], [5, 7, 8, 9]]
    assert batch["prompt_lengths"].tolist() == [1, 1, 1, 2]  # chosen rows, then rejected rows
    assert batch["strength"].tolist() == [2.0, 1.0] and batch["margin"].tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match="prepare_preference_dataset"):
        collator([{"chosen_ids": [1], "rejected_ids": [2]}])


def test_collated_boundary_gives_the_same_rewards_as_explicit_masks(make_judge, tiny_tokenizer):
    rows = [{"prompt": user("2+2?"), "chosen": assistant("4"), "rejected": assistant("five, I think")}]
    dataset, _ = prepare(rows, tiny_tokenizer)
    batch = DataCollatorForAdaJudge(pad_token_id=tiny_tokenizer.pad_token_id)(list(dataset))
    judge = make_judge()
    with torch.no_grad():
        rewards = judge(**batch).logits[:, 0]
        lengths = batch["prompt_lengths"]
        positions = torch.arange(batch["input_ids"].shape[1])
        response_mask = (positions[None] >= lengths[:, None]) & batch["attention_mask"].bool()
        explicit = judge(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], response_mask=response_mask
        )
    torch.testing.assert_close(rewards, explicit.logits[:, 0])
