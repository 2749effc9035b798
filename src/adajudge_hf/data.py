"""Preference data for AdaJudge: tokenised pairs that keep the prompt/response boundary, and their collator.

TRL's `RewardTrainer` tokenises prompt + response as one text and drops pairs longer than `max_length`. AdaJudge
needs to know where each prompt ends (for z_P and the response experts), and a reward model reads the end of the
response, so `prepare_preference_dataset` encodes every format TRL accepts through `encode_prompt_response`, truncates
over-long pairs from the left instead of dropping them (the prompt cut once per pair, so chosen and rejected are
compared on the same context), and reports what it truncated and dropped and how long the prompts are.
"""

import logging
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase
from trl.data_utils import common_prefix_length, get_dataset_column_names, is_conversational, maybe_extract_prompt
from trl.trainer.reward_trainer import DataCollatorForPreference

from .packing import pack_responses, pad_packed
from .tokenization import EncodedExample, align_formats, encode_prompt_response, truncate_shared_prompt


logger = logging.getLogger(__name__)

PREPARED_COLUMNS = ("chosen_ids", "rejected_ids", "chosen_prompt_length", "rejected_prompt_length")
"""Columns of a prepared dataset; `margin` and `strength` are kept when present."""
STRENGTH = "strength"
_DROP = "_adajudge_drop_reason"
_TRUNCATED = "_adajudge_truncated"
_HELPSTEER3_COLUMNS = ("context", "response1", "response2", "overall_preference")


@dataclass
class PreparationStats:
    """What `prepare_preference_dataset` did to a dataset: pairs kept, truncated and dropped (with the reason), and
    the prompt tokens of the kept pairs after truncation (what the judge's prompt context z_P reads)."""

    total: int
    truncated: int
    dropped_empty_response: int
    dropped_identical: int
    prompt_length_min: int = 0
    prompt_length_mean: float = 0.0
    prompt_length_max: int = 0
    empty_prompts: int = 0

    @property
    def kept(self) -> int:
        return self.total - self.dropped_empty_response - self.dropped_identical

    def summary(self, dataset_name: str, max_length: int | None) -> str:
        return (
            f"{dataset_name} dataset: kept {self.kept} of {self.total} pairs; {self.truncated} truncated to "
            f"max_length={max_length} (prompt cut from the left once per pair, end of the response kept); dropped "
            f"{self.dropped_empty_response} with an empty response and {self.dropped_identical} whose chosen and "
            f"rejected sequences are identical. Prompt tokens per kept pair: min {self.prompt_length_min}, mean "
            f"{self.prompt_length_mean:.1f}, max {self.prompt_length_max}; {self.empty_prompts} with no prompt."
        )


def _is_empty_response(response: Any) -> bool:
    if isinstance(response, str):
        return not response.strip()
    if isinstance(response, list):
        return not any(str(message.get("content") or "").strip() for message in response)
    return response is None


def _check_columns(column_names: list[str], strength_column: str | None) -> bool:
    """Validate the columns; return True for pre-tokenised data (`chosen_ids` / `rejected_ids`)."""
    columns = set(column_names)
    if strength_column is not None and strength_column not in columns:
        raise ValueError(
            f"`strength_column={strength_column!r}` is not a column of the dataset (columns: {sorted(columns)}). "
            "Set it to the column that holds the preference strength, or to None."
        )
    if {"chosen_ids", "rejected_ids"} <= columns:
        return True
    if {"chosen", "rejected"} <= columns:
        return False
    raise ValueError(
        f"The dataset has columns {sorted(columns)}, which is not a preference format. Expected `chosen` and "
        "`rejected` (plain text or lists of messages, with an optional explicit `prompt`), or pre-tokenised "
        "`chosen_ids` and `rejected_ids` (with an optional `prompt_length`). HelpSteer3-style data (`context`, "
        "`response1`, `response2`, `overall_preference`) converts with `helpsteer3_to_preference`."
    )


def _align_pair_formats(example: dict[str, Any]) -> dict[str, Any]:
    """Give an explicit prompt and the responses one format, before TRL's `maybe_extract_prompt` sees them.

    `maybe_extract_prompt` ignores an explicit prompt whose format differs from the responses' and takes the common
    start of the responses instead, which is empty for a conversational prompt with plain-text responses (or the
    reverse): the prompt would vanish without a word. Here the plain side becomes a turn (`align_formats`), unless
    conversational responses already hold the prompt turns themselves (TRL's implicit-prompt case, where an extra plain
    `prompt` column is a copy and is ignored as in TRL).
    """
    prompt, chosen, rejected = example.get("prompt"), example["chosen"], example["rejected"]
    if not prompt:
        return {key: value for key, value in example.items() if key != "prompt"}
    if isinstance(prompt, str) and isinstance(chosen, list) and chosen and chosen[0].get("role") != "assistant":
        return example
    aligned_prompt, aligned_chosen = align_formats(prompt, chosen)
    return {
        **example,
        "prompt": aligned_prompt,
        "chosen": aligned_chosen,
        "rejected": align_formats(prompt, rejected)[1],
    }


def _is_conversational_pair(example: dict[str, Any]) -> bool:
    return any(is_conversational({key: example[key]}) for key in ("prompt", "chosen", "rejected") if example.get(key))


def _warn_no_prompt(dataset_name: str, has_prompt_column: bool) -> None:
    where = (
        "although it has a `prompt` column: check that the prompts are not empty and that `max_length` leaves room "
        "for them"
        if has_prompt_column
        else "(no `prompt` column, and chosen and rejected share no start): add a `prompt` column"
    )
    logger.warning(
        f"EVERY pair of the {dataset_name} dataset has an empty prompt {where}. AdaJudge's router and prompt context "
        "z_P read the prompt; without one the judge scores responses out of context."
    )


def _encode_text_pair(
    example: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_length: int | None
) -> list[EncodedExample] | None:
    """(chosen, rejected) encodings of a text or chat pair, truncated together; None when a response is empty."""
    example = maybe_extract_prompt(_align_pair_formats(example))
    prompt, chosen, rejected = example.get("prompt"), example["chosen"], example["rejected"]
    if _is_empty_response(chosen) or _is_empty_response(rejected):
        return None
    rows = [encode_prompt_response(tokenizer, prompt, response) for response in (chosen, rejected)]
    return truncate_shared_prompt(
        [(row.input_ids, row.prompt_length) for row in rows], max_length, tokenizer.bos_token_id
    )


def _encode_tokenised_pair(
    example: dict[str, Any], index: int, max_length: int | None, bos_token_id: int | None, boundary: str
) -> list[EncodedExample] | None:
    """(chosen, rejected) of a pre-tokenised pair, prompt lengths from `boundary`, truncated together; None when a
    response is empty."""
    chosen_ids, rejected_ids = list(example["chosen_ids"]), list(example["rejected_ids"])
    if boundary == "per_row":
        lengths = (example["chosen_prompt_length"], example["rejected_prompt_length"])
    elif boundary == "shared":
        lengths = (example["prompt_length"], example["prompt_length"])
    else:
        # An upper bound on the prompt (shared leading response tokens count as prompt); keep >= 1 response token.
        shared = common_prefix_length(chosen_ids, rejected_ids)
        lengths = (min(shared, max(len(chosen_ids) - 1, 0)), min(shared, max(len(rejected_ids) - 1, 0)))
    for ids, length in zip((chosen_ids, rejected_ids), lengths):
        if not 0 <= length <= len(ids):
            raise ValueError(
                f"Row {index}: prompt length {length} is outside [0, {len(ids)}] for a sequence of {len(ids)} tokens. "
                "`prompt_length` must count the prompt tokens at the start of `chosen_ids` and `rejected_ids`."
            )
    if lengths[0] == len(chosen_ids) or lengths[1] == len(rejected_ids):
        return None
    return truncate_shared_prompt(list(zip((chosen_ids, rejected_ids), lengths)), max_length, bos_token_id)


def _prepare_example(
    example: dict[str, Any],
    index: int,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    boundary: str | None,
    strength_column: str | None,
) -> dict[str, Any]:
    if boundary is not None:
        encoded = _encode_tokenised_pair(example, index, max_length, tokenizer.bos_token_id, boundary)
    else:
        encoded = _encode_text_pair(example, tokenizer, max_length)
    output = {}
    if strength_column is not None:
        strength = example[strength_column]
        if strength is None or not float(strength) >= 0 or float(strength) == float("inf"):
            raise ValueError(
                f"Row {index}: preference strength {strength!r} in column {strength_column!r} must be a finite "
                "number >= 0 (the magnitude of the preference; chosen/rejected already say which side wins)."
            )
        output[STRENGTH] = float(strength)
    if encoded is None:
        output.update({name: [] if name.endswith("_ids") else 0 for name in PREPARED_COLUMNS})
        return {**output, _TRUNCATED: False, _DROP: "empty"}
    chosen, rejected = encoded
    return {
        **output,
        "chosen_ids": chosen.input_ids,
        "rejected_ids": rejected.input_ids,
        "chosen_prompt_length": chosen.prompt_length,
        "rejected_prompt_length": rejected.prompt_length,
        _TRUNCATED: chosen.truncated or rejected.truncated,
        _DROP: "identical" if chosen.input_ids == rejected.input_ids else "",
    }


def prepare_preference_dataset(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None = None,
    strength_column: str | None = None,
    dataset_name: str = "train",
    num_proc: int | None = None,
) -> tuple[Dataset | IterableDataset, PreparationStats | None]:
    """Tokenise preference pairs into `PREPARED_COLUMNS` (+ `margin`, + `strength` from `strength_column`).

    Accepts every format of TRL's `RewardTrainer`: explicit prompt (`prompt`, `chosen`, `rejected`), implicit prompt
    (split with `trl.data_utils.maybe_extract_prompt`), plain text or conversational (rendered with the chat
    template), and pre-tokenised `chosen_ids` / `rejected_ids`, with the boundary from `prompt_length` (or
    `chosen_prompt_length` / `rejected_prompt_length`) or, without it, from their common prefix (with a warning).
    A conversational prompt with plain-text responses (or the reverse) has its plain side made a turn, so the prompt
    is never dropped. Pairs longer than `max_length` are truncated: the prompt once per pair, from the left, to the
    budget of the longer response, so both rows keep the same prompt tokens; a response too long on its own keeps its
    end. Pairs with an empty response or that are identical are dropped. Returns the dataset and the counts, with the
    prompt-length statistics (None for an `IterableDataset`, which is processed lazily); a dataset whose every prompt
    is empty gets a warning. An already prepared dataset is returned unchanged.
    """
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise ValueError(
            f"The {dataset_name} dataset is empty (0 rows). Check the file or split: a preference dataset needs rows "
            "with `chosen` and `rejected` (and optionally `prompt`), or `chosen_ids` and `rejected_ids`."
        )
    column_names = get_dataset_column_names(dataset)
    if set(PREPARED_COLUMNS) <= set(column_names):
        if strength_column is not None and STRENGTH not in column_names:
            raise ValueError(
                f"The {dataset_name} dataset is already prepared but has no `{STRENGTH}` column, so "
                f"`strength_column={strength_column!r}` cannot be used. Prepare it from the raw data with the "
                "strength column, or set `strength_column=None`."
            )
        return dataset, None
    if {"chosen_input_ids", "rejected_input_ids"} <= set(column_names) and "chosen_ids" not in column_names:
        dataset = dataset.rename_columns({"chosen_input_ids": "chosen_ids", "rejected_input_ids": "rejected_ids"})
        column_names = get_dataset_column_names(dataset)
    pre_tokenised = _check_columns(column_names, strength_column)
    boundary = None  # text and chat data: exact, from encoding prompt and response separately
    if pre_tokenised:
        if {"chosen_prompt_length", "rejected_prompt_length"} <= set(column_names):
            boundary = "per_row"
        elif "prompt_length" in column_names:
            boundary = "shared"
        else:
            boundary = "common_prefix"
    if boundary == "common_prefix":
        logger.warning(
            f"The pre-tokenised {dataset_name} dataset has no `prompt_length` column: the prompt is taken to be the "
            "common prefix of `chosen_ids` and `rejected_ids`, which also counts any shared start of the responses. "
            "Add a `prompt_length` column for the exact boundary."
        )
    if not pre_tokenised and tokenizer.chat_template is None and _is_conversational_pair(next(iter(dataset), {})):
        raise ValueError(
            f"The {dataset_name} dataset is conversational (lists of messages) but the tokenizer has no chat "
            "template. Set `tokenizer.chat_template` (or `chat_template_path` in the config), or provide plain text."
        )

    keep = {"margin"} | ({strength_column} if strength_column is not None else set())
    map_kwargs = {}
    if isinstance(dataset, Dataset):
        map_kwargs = {"num_proc": num_proc, "desc": f"Tokenizing {dataset_name} dataset"}
    dataset = dataset.map(
        _prepare_example,
        with_indices=True,
        fn_kwargs={
            "tokenizer": tokenizer,
            "max_length": max_length,
            "boundary": boundary,
            "strength_column": strength_column,
        },
        remove_columns=[name for name in column_names if name not in keep and name not in PREPARED_COLUMNS],
        **map_kwargs,
    )
    if strength_column not in (None, STRENGTH):
        dataset = dataset.remove_columns(strength_column)

    stats = None
    if isinstance(dataset, Dataset):
        reasons = dataset[_DROP]
        prompt_lengths = [
            min(chosen, rejected)
            for chosen, rejected, reason in zip(
                dataset["chosen_prompt_length"], dataset["rejected_prompt_length"], reasons
            )
            if reason == ""
        ]
        stats = PreparationStats(
            total=len(dataset),
            truncated=sum(dataset[_TRUNCATED]),
            dropped_empty_response=reasons.count("empty"),
            dropped_identical=reasons.count("identical"),
            prompt_length_min=min(prompt_lengths, default=0),
            prompt_length_mean=sum(prompt_lengths) / max(len(prompt_lengths), 1),
            prompt_length_max=max(prompt_lengths, default=0),
            empty_prompts=prompt_lengths.count(0),
        )
        message = stats.summary(dataset_name, max_length)
        if stats.truncated or stats.kept < stats.total or stats.empty_prompts:
            logger.warning(message)
        else:
            logger.info(message)
        if stats.kept == 0:
            raise ValueError(f"No pair is left to train on. {message}")
        if stats.empty_prompts == stats.kept:
            _warn_no_prompt(dataset_name, has_prompt_column="prompt" in column_names)
        map_kwargs["desc"] = f"Dropping empty and identical pairs of the {dataset_name} dataset"
    else:
        logger.info(
            f"{dataset_name} dataset is streamed: over-long pairs are truncated and empty or identical pairs dropped "
            "as they are read, without an up-front count."
        )
    dataset = dataset.filter(lambda reason: reason == "", input_columns=_DROP, **map_kwargs)
    return dataset.remove_columns([_DROP, _TRUNCATED]), stats


def helpsteer3_to_preference(dataset: Dataset | IterableDataset) -> Dataset | IterableDataset:
    """Turn HelpSteer3 preference rows into TRL's conversational explicit-prompt format with a `strength` column.

    `overall_preference` in {-3..3} is < 0 when `response1` wins; its magnitude becomes `strength`. Ties (0) carry no
    preference and are dropped, with a log line.
    """
    missing = [name for name in _HELPSTEER3_COLUMNS if name not in get_dataset_column_names(dataset)]
    if missing:
        raise ValueError(
            f"Not a HelpSteer3 preference dataset: columns {missing} are missing. Expected {list(_HELPSTEER3_COLUMNS)}."
        )

    def convert(example: dict[str, Any]) -> dict[str, Any]:
        first_wins = example["overall_preference"] < 0
        winner, loser = (
            (example["response1"], example["response2"])
            if first_wins
            else (example["response2"], example["response1"])
        )
        return {
            "prompt": example["context"],
            "chosen": [{"role": "assistant", "content": winner}],
            "rejected": [{"role": "assistant", "content": loser}],
            STRENGTH: float(abs(example["overall_preference"])),
        }

    total = len(dataset) if isinstance(dataset, Dataset) else None
    dataset = dataset.filter(lambda preference: preference != 0, input_columns="overall_preference")
    if total is not None:
        logger.info(f"HelpSteer3: dropped {total - len(dataset)} ties of {total} rows.")
    return dataset.map(convert, remove_columns=get_dataset_column_names(dataset))


@dataclass
class DataCollatorForAdaJudge(DataCollatorForPreference):
    """TRL's preference collator plus the prompt/response boundary and the preference strength.

    Adds `prompt_lengths` (2B,), the number of prompt tokens of each row in TRL's order (B chosen rows, then B
    rejected rows), and `strength` (B,) when the examples have one. Rows are right-padded as in TRL.

    With `packed=True` each pair becomes one row [prompt; chosen; rejected] with `segment_ids` (0 prompt, 1 chosen,
    2 rejected): the prompt is encoded once and the model returns the same chosen-then-rejected rewards.
    `prepare_preference_dataset` cuts a pair's prompt once, so both rows carry the same prompt tokens; pre-tokenised
    rows whose own prompt lengths differ share the shorter prompt.
    """

    packed: bool = False

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if "chosen_prompt_length" not in examples[0] or "rejected_prompt_length" not in examples[0]:
            raise ValueError(
                "Examples lack `chosen_prompt_length` / `rejected_prompt_length`: prepare the dataset with "
                "`adajudge_hf.data.prepare_preference_dataset` (AdaJudgeRewardTrainer does it for you)."
            )
        if self.packed:
            output = pad_packed([self._pack(example) for example in examples], self.pad_token_id)
            if "margin" in examples[0]:
                output["margin"] = torch.tensor([example["margin"] for example in examples], dtype=torch.float)
        else:
            output = super().torch_call(examples)
            output["prompt_lengths"] = torch.tensor(
                [example["chosen_prompt_length"] for example in examples]
                + [example["rejected_prompt_length"] for example in examples]
            )  # (2B,)
        if STRENGTH in examples[0]:
            output[STRENGTH] = torch.tensor([example[STRENGTH] for example in examples], dtype=torch.float)  # (B,)
        return output

    @staticmethod
    def _pack(example: dict[str, Any]) -> tuple[list[int], list[int]]:
        chosen, rejected = example["chosen_ids"], example["rejected_ids"]
        chosen_prompt, rejected_prompt = example["chosen_prompt_length"], example["rejected_prompt_length"]
        shared = min(chosen_prompt, rejected_prompt)
        prompt = (chosen if chosen_prompt == shared else rejected)[:shared]
        longer = chosen[:chosen_prompt] if chosen_prompt > shared else rejected[:rejected_prompt]
        # Left truncation keeps a suffix of the prompt, after a leading BOS when there is one.
        suffix = longer[len(longer) - shared :] == prompt
        bos_and_suffix = longer[:1] == prompt[:1] and longer[len(longer) - shared + 1 :] == prompt[1:]
        if shared and not (suffix or bos_and_suffix):
            raise ValueError(
                "A pair's chosen and rejected rows do not share their prompt tokens, so it cannot be packed into one "
                "row. Use the plain layout (`packed=False`) for this dataset."
            )
        return pack_responses(prompt, [chosen[chosen_prompt:], rejected[rejected_prompt:]])


__all__ = [
    "PREPARED_COLUMNS",
    "DataCollatorForAdaJudge",
    "PreparationStats",
    "helpsteer3_to_preference",
    "prepare_preference_dataset",
]
