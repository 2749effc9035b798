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
from adajudge_hf.testing import make_tiny_tokenizer
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


PROMPT, CHOSEN, REJECTED = "What is the capital of France?", "The capital of France is Paris.", "It is Lyon."


def trl_format(name: str, tokenizer) -> dict:
    """One pair in each format TRL's RewardTrainer accepts (integration-facts §1.4), plus the mixed ones."""
    chat_prompt, chat_chosen, chat_rejected = user(PROMPT), assistant(CHOSEN), assistant(REJECTED)
    if name.startswith("pretokenised"):
        chosen = encode_prompt_response(tokenizer, chat_prompt, chat_chosen)
        rejected = encode_prompt_response(tokenizer, chat_prompt, chat_rejected)
        row = {"chosen_ids": chosen.input_ids, "rejected_ids": rejected.input_ids}
        return row | ({"prompt_length": chosen.prompt_length} if name == "pretokenised_with_prompt_length" else {})
    return {
        "standard_implicit": {"chosen": f"{PROMPT} {CHOSEN}", "rejected": f"{PROMPT} {REJECTED}"},
        "standard_explicit": {"prompt": PROMPT, "chosen": f" {CHOSEN}", "rejected": f" {REJECTED}"},
        "conversational_implicit": {"chosen": chat_prompt + chat_chosen, "rejected": chat_prompt + chat_rejected},
        "conversational_explicit": {"prompt": chat_prompt, "chosen": chat_chosen, "rejected": chat_rejected},
        "chat_prompt_plain_responses": {"prompt": chat_prompt, "chosen": CHOSEN, "rejected": REJECTED},
        "plain_prompt_chat_responses": {"prompt": PROMPT, "chosen": chat_chosen, "rejected": chat_rejected},
        # TRL's own mixed case: a plain copy of the prompt beside conversations that hold it (it is ignored).
        "plain_prompt_column_beside_implicit_chats": {
            "prompt": PROMPT,
            "chosen": chat_prompt + chat_chosen,
            "rejected": chat_prompt + chat_rejected,
        },
    }[name]


TRL_FORMATS = [
    "standard_implicit",
    "standard_explicit",
    "conversational_implicit",
    "conversational_explicit",
    "chat_prompt_plain_responses",
    "plain_prompt_chat_responses",
    "plain_prompt_column_beside_implicit_chats",
    "pretokenised_with_prompt_length",
    "pretokenised_without_prompt_length",
]


@pytest.mark.parametrize("name", TRL_FORMATS)
def test_every_trl_format_brings_its_prompt_to_the_model(tiny_tokenizer, name, caplog):
    """Every TRL format reaches the model with its prompt, a chat prompt with plain responses (or the reverse) too."""
    with caplog.at_level(logging.INFO, logger="adajudge_hf.data"):
        dataset, stats = prepare([trl_format(name, tiny_tokenizer)], tiny_tokenizer)
    batch = DataCollatorForAdaJudge(pad_token_id=tiny_tokenizer.pad_token_id)(list(dataset))
    lengths = batch["prompt_lengths"].tolist()
    assert min(lengths) > 0, lengths  # the prompt mask the model gets is not empty
    for row, length in zip(batch["input_ids"].tolist(), lengths):
        prompt_text = tiny_tokenizer.decode(row[:length])
        assert PROMPT in prompt_text and "Paris" not in prompt_text and "Lyon" not in prompt_text
    assert stats.empty_prompts == 0 and stats.prompt_length_min > 0 and "0 with no prompt" in caplog.text
    if name in ("chat_prompt_plain_responses", "plain_prompt_chat_responses"):
        chat = prepare([trl_format("conversational_explicit", tiny_tokenizer)], tiny_tokenizer)[0]
        assert dataset[0] == chat[0]  # the plain side became a turn: the same tokens as the all-chat pair


def test_prompt_statistics_are_reported_and_an_all_empty_prompt_column_is_flagged(tiny_tokenizer, caplog):
    rows = [
        {"prompt": "Hi?", "chosen": " Yes.", "rejected": " No."},
        {"prompt": "", "chosen": " A.", "rejected": " B."},
    ]
    with caplog.at_level(logging.INFO, logger="adajudge_hf.data"):
        _, stats = prepare(rows, tiny_tokenizer)
    hi = len(tiny_tokenizer("Hi?")["input_ids"])
    assert (stats.prompt_length_min, stats.prompt_length_max, stats.empty_prompts) == (0, hi, 1)
    assert stats.prompt_length_mean == pytest.approx(hi / 2)
    assert f"min 0, mean {hi / 2:.1f}, max {hi}; 1 with no prompt" in caplog.text and "EVERY" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="adajudge_hf.data"):
        prepare([row | {"prompt": ""} for row in rows], tiny_tokenizer)
    assert "EVERY pair of the train dataset has an empty prompt although it has a `prompt` column" in caplog.text


def test_an_empty_dataset_is_refused_with_a_clear_message(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"The train dataset is empty \(0 rows\)"):
        prepare_preference_dataset(Dataset.from_dict({"chosen": [], "rejected": []}), tiny_tokenizer)
    with pytest.raises(ValueError, match=r"The eval dataset is empty"):
        prepare_preference_dataset(Dataset.from_dict({}), tiny_tokenizer, dataset_name="eval")


@pytest.mark.parametrize("template", ["chatml", "llama3", "phi3"])
def test_chat_encoding_equals_tokenising_the_rendered_conversation(template):
    """The ids are those of the whole rendered conversation, as TRL's GRPO reward path tokenises it."""
    tokenizer = make_tiny_tokenizer(template)
    prompt, response = user(PROMPT), assistant(CHOSEN)
    encoded = encode_prompt_response(tokenizer, prompt, response)
    rendered = tokenizer.apply_chat_template(prompt + response, tokenize=False)
    assert encoded.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    rendered_prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert (
        encoded.input_ids[: encoded.prompt_length] == tokenizer(rendered_prompt, add_special_tokens=False)["input_ids"]
    )


def test_plain_text_boundary_differs_from_the_whole_text_only_inside_a_split_word(tiny_tokenizer):
    """Plain prompt and response are tokenised separately; the whole text can merge tokens across the boundary."""
    eos = [tiny_tokenizer.eos_token_id]

    def whole(text):
        return tiny_tokenizer(text)["input_ids"] + eos

    # TRL's convention, the response carries its leading space: the same ids as the whole text (+ EOS).
    assert encode_prompt_response(tiny_tokenizer, "The capital of France is", " Paris.").input_ids == whole(
        "The capital of France is Paris."
    )
    # The space on the prompt's side: " Paris" is one token in the whole text, " ", "Par", "is" when split.
    split = encode_prompt_response(tiny_tokenizer, "The capital of France is ", "Paris.")
    together = whole("The capital of France is Paris.")
    assert split.input_ids != together
    assert tiny_tokenizer.decode(split.input_ids) == tiny_tokenizer.decode(together)  # same text
    before = tiny_tokenizer("The capital of France is")["input_ids"]
    assert split.input_ids[: len(before)] == together[: len(before)] == before  # differs only from the boundary on
    assert split.input_ids[-2:] == together[-2:]  # ... up to the end of the split word


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
    # The prompt is cut once, to the budget of the longer response: both rows read the same context.
    length = example["rejected_prompt_length"]
    assert length == example["chosen_prompt_length"]
    assert example["rejected_ids"][:length] == example["chosen_ids"][:length]
    assert len(example["rejected_ids"]) < 16


def test_a_pair_keeps_identical_prompt_tokens_under_truncation():
    """Under truncation both responses of a pair keep the same prompt tokens, however unequal their lengths."""
    tokenizer = make_tiny_tokenizer("llama3")  # a BOS template: the BOS stays in front of the cut prompt
    prompt = user("The quick brown fox jumps over the lazy dog. " * 8)
    long, short = assistant("A reward model scores how good a response is for a prompt. " * 3), assistant("No.")
    for max_length in (64, 40, 20):
        example = prepare([{"prompt": prompt, "chosen": long, "rejected": short}], tokenizer, max_length=max_length)
        example = example[0][0]
        chosen, rejected = example["chosen_ids"], example["rejected_ids"]
        length = example["chosen_prompt_length"]
        assert length == example["rejected_prompt_length"] and chosen[:length] == rejected[:length]
        assert chosen[0] == rejected[0] == tokenizer.bos_token_id
        assert len(chosen) <= max_length and len(rejected) <= max_length
        full = encode_prompt_response(tokenizer, prompt, long)
        assert chosen[length:] == full.input_ids[full.prompt_length :][-(len(chosen) - length) :]  # end kept
    assert length == 1  # at 20 the chosen response alone is too long: the BOS and its end are kept, in both rows


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
