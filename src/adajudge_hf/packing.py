"""Shared-prompt packing: compute each prompt once for preference pairs and best-of-N ranking.

A packed row is [prompt; response 1; ...; response N] with `segment_ids` 0 on the prompt and s on response s. The
model gives each response a block mask (it sees the prompt and itself) and positions that restart after the prompt,
so every reward equals the reward of the plain row [prompt; response s] while the prompt is encoded once.
"""

from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from .batching import DEFAULT_BATCH_TOKENS, item_scores, packed_output_order
from .tokenization import encode_prompt_response, truncate_shared_prompt


logger = logging.get_logger(__name__)


def pack_responses(prompt_ids: list[int], responses_ids: list[list[int]]) -> tuple[list[int], list[int]]:
    """One packed row: token ids and segment ids (0 = prompt, s = response s, counted from 1)."""
    if not responses_ids or any(len(ids) == 0 for ids in responses_ids):
        raise ValueError("Every packed response needs at least one token.")
    input_ids, segment_ids = list(prompt_ids), [0] * len(prompt_ids)
    for segment, ids in enumerate(responses_ids, start=1):
        input_ids += ids
        segment_ids += [segment] * len(ids)
    return input_ids, segment_ids


def encode_packed(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict[str, Any]] | None,
    responses: list[str] | list[list[dict[str, Any]]],
    max_length: int | None = None,
) -> tuple[list[int], list[int], bool]:
    """Encode one prompt with N responses as a packed row: (input_ids, segment_ids, truncated).

    Each response is encoded with `encode_prompt_response`, so the tokens equal those of the plain rows. With
    `max_length`, every plain-equivalent row [prompt; response] must fit: the shared prompt is cut from the left (a
    leading BOS is kept) by the largest excess, and a response that is too long on its own keeps its end
    (`truncate_shared_prompt`, as training cuts a pair).
    """
    encoded = [encode_prompt_response(tokenizer, prompt, response) for response in responses]
    prompt_ids = encoded[0].input_ids[: encoded[0].prompt_length]
    if any(e.input_ids[: e.prompt_length] != prompt_ids for e in encoded):
        raise ValueError(
            "The chat template renders the shared prompt differently for different responses, so they cannot share "
            "one encoded prompt. Score these responses unpacked."
        )
    rows = truncate_shared_prompt(
        [(e.input_ids, e.prompt_length) for e in encoded], max_length, tokenizer.bos_token_id
    )
    prompt_ids = rows[0].input_ids[: rows[0].prompt_length]
    responses_ids = [row.input_ids[row.prompt_length :] for row in rows]
    truncated = any(row.truncated for row in rows)
    input_ids, segment_ids = pack_responses(prompt_ids, responses_ids)
    return input_ids, segment_ids, truncated


def pad_packed(
    rows: list[tuple[list[int], list[int]]], pad_token_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad packed rows into `input_ids`, `attention_mask` and `segment_ids` tensors of shape (B, L)."""
    width = max(len(ids) for ids, _ in rows)
    batch = {"input_ids": [], "attention_mask": [], "segment_ids": []}
    for ids, segments in rows:
        pad = width - len(ids)
        parts = {"input_ids": (ids, pad_token_id), "attention_mask": ([1] * len(ids), 0), "segment_ids": (segments, 0)}
        for key, (values, fill) in parts.items():
            batch[key].append(values + [fill] * pad if padding_side == "right" else [fill] * pad + values)
    return {key: torch.tensor(values) for key, values in batch.items()}


def packed_inputs(
    rows: list[tuple[list[int], list[int]]], pad_token_id: int
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """One forward pass over packed rows `(input_ids, segment_ids)`: the padded inputs, and the output positions of
    the rows' responses, row by row (`packed_output_order`).

    A pass answers N responses per row, N the most in any row, so rows with fewer get one-token filler responses
    (`pad_token_id`) at their end; a response sees only the prompt and itself, so fillers change no other reward, and
    their outputs are not listed."""
    counts = [max(segments) for _, segments in rows]
    most = max(counts)
    filled = [
        (ids + [pad_token_id] * (most - count), segments + list(range(count + 1, most + 1)))
        for (ids, segments), count in zip(rows, counts)
    ]
    return pad_packed(filled, pad_token_id), packed_output_order(counts)


def score_best_of_n(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict[str, Any]],
    responses: list[str] | list[list[dict[str, Any]]],
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_length: int | None = None,
    show_progress: bool = False,
) -> dict[str, torch.Tensor | None]:
    """Rewards (N,), routing weights pi (N, E) and depth weights alpha (N, C) of N responses to one prompt.

    The responses are encoded like independent [prompt; response] rows (`encode_prompt_response`) and scored with the
    prompt shared (`score_packed_ids`), so the results equal independent scoring.
    """
    input_ids, segment_ids, _ = encode_packed(tokenizer, prompt, responses, max_length)
    prompt_ids = [token for token, segment in zip(input_ids, segment_ids) if segment == 0]
    responses_ids = [
        [token for token, segment in zip(input_ids, segment_ids) if segment == s] for s in range(1, len(responses) + 1)
    ]
    return score_packed_ids(model, prompt_ids, responses_ids, max_batch_tokens, show_progress)


@torch.inference_mode()
def score_packed_ids(
    model: PreTrainedModel,
    prompt_ids: list[int],
    responses_ids: list[list[int]],
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    show_progress: bool = False,
) -> dict[str, torch.Tensor | None]:
    """Score token-level responses to one prompt, packing them in order into rows of at most `max_batch_tokens`.

    Each row repeats the prompt once, so a prompt is encoded once per row rather than once per response. Models that
    cannot take packed inputs (bidirectional refinement, FlashAttention backbones) get one response per row, with a
    one-time notice.
    """
    packable = getattr(model, "supports_packed_inputs", False)
    if not packable:
        logger.warning_once(
            f"{type(model).__name__} cannot take packed inputs (needs causal refinement and an eager/SDPA backbone): "
            "scoring each response in its own row, which encodes the prompt once per response."
        )
    rows, current = [], []
    for ids in responses_ids:
        row_tokens = len(prompt_ids) + sum(map(len, current)) + len(ids)
        if current and (not packable or row_tokens > max_batch_tokens):
            rows.append(current)
            current = []
        current.append(ids)
    rows.append(current)

    device = next(model.parameters()).device
    scores = []
    for row in tqdm(rows, desc="best-of-n", disable=not show_progress):
        input_ids, segment_ids = pack_responses(prompt_ids, row)
        inputs = {"input_ids": torch.tensor([input_ids], device=device)}
        if packable:
            inputs["segment_ids"] = torch.tensor([segment_ids], device=device)
        else:
            inputs["prompt_lengths"] = torch.tensor([len(prompt_ids)], device=device)
        scores += item_scores(model(**inputs))  # one row: its responses in order
    columns = {"rewards": "reward", "routing_weights": "routing_weights", "depth_weights": "depth_weights"}
    return {
        key: None
        if any(getattr(s, name) is None for s in scores)
        else torch.tensor([getattr(s, name) for s in scores])
        for key, name in columns.items()
    }
