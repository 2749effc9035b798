"""The batching toolkit that scoring, serving, features and best-of-N share.

Rows of similar length go into one forward pass (`length_buckets`); consecutive items with one prompt form a group
(`prompt_groups`) that a packed row [prompt; r1; ...; rN] computes once; a pass's outputs come back as one
`ItemScore` per item (`item_scores`, in the order `packed_output_order` gives for packed rows; `plain_inputs` and
`packing.packed_inputs` build a pass's inputs). `padding_id` and `eval_mode` are the two details every scoring loop
needs. `max_batch_tokens` is the one name of the budget of padded tokens (rows x longest row) per forward pass.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerBase

from .modeling import AdaJudgeConfig
from .tokenization import EncodedExample


DEFAULT_BATCH_TOKENS = 8192
"""Default budget of padded tokens (rows x longest row) per forward pass."""


@dataclass
class ItemScore:
    """Reward of one item with AdaJudge's pooling-router weights pi and depth-router weights alpha (None when the
    model has no such router)."""

    reward: float
    routing_weights: list[float] | None = None
    depth_weights: list[float] | None = None


def length_buckets(lengths: Sequence[int], max_batch_tokens: int, max_padding: float | None = None) -> list[list[int]]:
    """Group example indices into batches of similar length, longest first.

    Each batch holds as many examples as fit `max_batch_tokens` padded tokens (rows x longest row); an example longer than
    the budget gets a batch of its own. Longest first, so an out-of-memory error shows up at once, not at the end.
    `max_padding` (a fraction of the batch's padded tokens; None: no limit) starts a new batch rather than pad more:
    a few rows of very different lengths, as a server step holds, would otherwise spend much of a pass on padding,
    which on a CPU costs as much as real tokens while the larger batch buys little.
    """
    if max_batch_tokens < 1:
        raise ValueError(f"`max_batch_tokens` must be >= 1, got {max_batch_tokens}.")
    if max_padding is not None and not 0 <= max_padding < 1:
        raise ValueError(
            f"`max_padding` must be in [0, 1) (a fraction of a batch's tokens) or None, got {max_padding}."
        )
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    batches: list[list[int]] = []
    real_tokens = 0  # of the last batch
    for index in order:
        if batches:
            padded = (len(batches[-1]) + 1) * lengths[batches[-1][0]]
            padding = padded - real_tokens - lengths[index]
            if padded <= max_batch_tokens and (max_padding is None or padding <= max_padding * padded):
                batches[-1].append(index)
                real_tokens += lengths[index]
                continue
        batches.append([index])
        real_tokens = lengths[index]
    return batches


def prompt_groups(prompts: Sequence) -> list[list[int]]:
    """Runs of consecutive indices with the same prompt (a benchmark item's responses, TRL's G completions)."""
    groups: list[list[int]] = []
    for index, prompt in enumerate(prompts):
        if groups and prompts[groups[-1][0]] == prompt:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def packed_output_order(responses_per_row: Sequence[int]) -> list[int]:
    """Output positions of every row's responses, row by row.

    A pass of B packed rows answers responses-first, (N * B, ...) with N the most responses in a row: row b's response
    s sits at s * B + b. Rows with fewer responses are filled up (the fillers' outputs are not listed)."""
    batch_size = len(responses_per_row)
    return [s * batch_size + b for b, count in enumerate(responses_per_row) for s in range(count)]


def item_scores(outputs, order: Sequence[int] | None = None) -> list[ItemScore]:
    """One `ItemScore` per output row of a reward model's forward pass (those at `order`, in that order)."""
    logits = outputs.logits.float()
    if logits.ndim == 2 and logits.shape[1] != 1:
        raise ValueError(
            f"The model returns {logits.shape[1]} logits per sequence; a reward model returns one (num_labels=1)."
        )
    order = list(range(logits.shape[0])) if order is None else list(order)
    rewards = logits.reshape(logits.shape[0], -1)[order, 0].cpu().tolist()
    columns = []
    for name in ("routing_weights", "depth_weights"):
        weights = getattr(outputs, name, None)
        columns.append(weights.float()[order].cpu().tolist() if weights is not None else [None] * len(order))
    return [ItemScore(reward, pi, alpha) for reward, pi, alpha in zip(rewards, *columns)]


def depth_candidate_names(config) -> tuple[str, ...]:
    """Names of an AdaJudge depth router's candidates, in the order of `depth_weights`: H(0) (when enabled),
    H(1)..H(K)."""
    first = 0 if config.depth_router_include_input else 1
    return tuple(f"H({k})" for k in range(first, config.num_refinement_blocks + 1))


def is_adajudge(model: torch.nn.Module) -> bool:
    """Whether `model` is an AdaJudge judge (also behind a PEFT wrapper or loaded as remote code)."""
    return getattr(getattr(model, "config", None), "model_type", None) == AdaJudgeConfig.model_type


def padding_id(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module | None = None) -> int:
    """The id rows are padded with for `model` (default: an AdaJudge judge).

    AdaJudge judges read positions from the attention mask, so any id works: the tokenizer's, else 0. A stock
    `*ForSequenceClassification` reads its reward at the last token that is not `config.pad_token_id`, so padding must
    use exactly that id.
    """
    if model is None or is_adajudge(model):
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pad_token_id = model.config.get_text_config().pad_token_id
    if pad_token_id is None:
        raise ValueError(
            "The model config has no `pad_token_id`, so a stock sequence-classification reward model cannot score "
            "batches (it finds the last token by the pad id). Set `model.config.pad_token_id` to a token that never "
            "ends a response, e.g. `tokenizer.pad_token_id`, or the EOS id as RewardBench does."
        )
    return pad_token_id


def plain_inputs(
    examples: Sequence[EncodedExample], pad_token_id: int, prompt_lengths: bool = True
) -> dict[str, torch.Tensor]:
    """One forward pass over plain rows [prompt; response]: right-padded `input_ids` and `attention_mask` (B, L), and
    `prompt_lengths` (B,) when asked (AdaJudge judges with known boundaries; stock models take none)."""
    rows = [torch.tensor(example.input_ids) for example in examples]
    inputs = {
        "input_ids": pad_sequence(rows, batch_first=True, padding_value=pad_token_id),
        "attention_mask": pad_sequence([torch.ones_like(row) for row in rows], batch_first=True),
    }
    if prompt_lengths:
        inputs["prompt_lengths"] = torch.tensor([example.prompt_length for example in examples])
    return inputs


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run `model` in eval mode and give it back in the mode it had (a judge may be scoring between training steps)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
