"""Turn (prompt, response) pairs into rewards, fast and in input order, on one process or many.

Examples are encoded with `encode_prompt_response` (the encoding the trainer uses, so a judge sees the same tokens),
sorted by length and cut into batches that fit a token budget, so padding stays minimal; the results come back in the
input order. Under `accelerate launch` each process scores every n-th example and the rewards are gathered back, so
one process and n processes give the same rewards.
"""

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from ..batching import (
    DEFAULT_BATCH_TOKENS,
    ItemScore,
    depth_candidate_names,
    eval_mode,
    is_adajudge,
    item_scores,
    length_buckets,
    padding_id,
    plain_inputs,
    prompt_groups,
)
from ..packing import encode_packed, packed_inputs
from ..tokenization import Messages, encode_prompt_response
from .progress import ScoringInterrupted, ScoringProgress, run_key


logger = logging.get_logger(__name__)


@dataclass
class ScoringOutput:
    """Rewards of N responses in input order, AdaJudge's routing, and what the scoring cost.

    `routing_weights` (N, E) are the pooling-router weights pi over `experts`, `depth_weights` (N, K) the depth-router
    weights alpha over `depth_candidates`; both are None for models that are not AdaJudge judges (and alpha when K = 0).
    `seconds` is the wall-clock time of the slowest process, of which `encode_seconds` went to tokenization.
    """

    rewards: torch.Tensor
    routing_weights: torch.Tensor | None = None
    depth_weights: torch.Tensor | None = None
    experts: tuple[str, ...] | None = None
    depth_candidates: tuple[str, ...] | None = None
    num_tokens: int = 0
    num_padded_tokens: int = 0
    num_truncated: int = 0
    num_processes: int = 1
    seconds: float = 0.0
    encode_seconds: float = 0.0
    max_length: int | None = None
    max_batch_tokens: int | None = None

    @property
    def padding_fraction(self) -> float:
        """Share of the forward-pass tokens that were padding."""
        return 1.0 - self.num_tokens / self.num_padded_tokens if self.num_padded_tokens else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Real (non-padding) tokens scored per second of wall-clock time, all processes together."""
        return self.num_tokens / self.seconds if self.seconds else 0.0

    def stats(self) -> dict:
        """The cost figures as a JSON-ready dict."""
        return {
            "num_responses": len(self.rewards),
            "num_tokens": self.num_tokens,
            "num_padded_tokens": self.num_padded_tokens,
            "padding_fraction": self.padding_fraction,
            "num_truncated": self.num_truncated,
            "num_processes": self.num_processes,
            "seconds": self.seconds,
            "encode_seconds": self.encode_seconds,
            "tokens_per_second": self.tokens_per_second,
            "max_length": self.max_length,
            "max_batch_tokens": self.max_batch_tokens,
        }


def distributed_state() -> PartialState:
    """Accelerate's process state, which tells how many processes share the work.

    On a machine without an accelerator, `accelerate launch` starts several processes, but `PartialState()` joins them
    into one process group (gloo) only when told it runs on CPU; without that every process would score everything.
    """
    return PartialState(cpu=not torch.accelerator.is_available())


@dataclass
class ProcessShare:
    """What one process scored: the `ItemScore` of each of its responses by input index, and what that cost."""

    scores: dict[int, ItemScore]
    num_tokens: int
    num_padded_tokens: int
    num_truncated: int
    seconds: float
    encode_seconds: float


Pass = tuple[list[int], Callable[[], tuple[dict[str, torch.Tensor], list[int] | None]]]
"""The input indices of a forward pass's responses, and what builds its inputs and the output order of those
responses (None: one row each, in order)."""


@torch.inference_mode()
def _score_passes(
    model: torch.nn.Module, passes: list[Pass], kept: ScoringProgress | None, show_progress: bool, desc: str
) -> dict[int, ItemScore]:
    """Run every pass not `kept` on disk (keeping each new one there) in eval mode; the score of every response by
    index."""
    scores = {}
    with (
        eval_mode(model),
        tqdm(
            total=sum(len(indices) for indices, _ in passes),
            desc=desc,
            unit="response",
            disable=not (show_progress and distributed_state().is_main_process),
        ) as progress,
    ):
        for indices, make_inputs in passes:
            done = kept.kept(indices) if kept is not None else None
            if done is None:
                inputs, order = make_inputs()
                done = item_scores(model(**{key: value.to(model.device) for key, value in inputs.items()}), order)
                if kept is not None:
                    kept.append(indices, done)
            scores.update(zip(indices, done))
            progress.update(len(indices))
    return scores


def score_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | Messages | None],
    responses: Sequence[str | Messages],
    *,
    max_length: int | None = None,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    show_progress: bool = True,
    share_prompts: bool = False,
    progress_dir: str | os.PathLike | None = None,
    model_id: str | None = None,
) -> ScoringOutput:
    """Reward of each (prompt, response), in input order, with AdaJudge's routing weights pi and alpha.

    Args:
        model: an AdaJudge judge or any reward model returning `logits` of shape (batch, 1), on its device.
        tokenizer: the model's tokenizer; lists of messages go through its chat template.
        prompts, responses: plain strings or lists of messages, as `encode_prompt_response` takes them.
        max_length: encode at most this many tokens, cutting the prompt from the left (the end of the response is
            where a reward model reads). None keeps everything.
        max_batch_tokens: budget of padded tokens per forward pass; lower it on out-of-memory errors.
        show_progress: show a progress bar (on the main process only).
        share_prompts: encode each prompt once for its consecutive responses (a benchmark item's responses), as one
            packed row [prompt; response 1; ...; response N]; same rewards, fewer tokens. AdaJudge judges with causal
            refinement and an eager/SDPA backbone only; others are scored plainly, with a notice. With `max_length`,
            a group's shared prompt is cut by the largest excess among its responses.
        progress_dir: keep every scored batch in this folder, and skip the batches kept there by an earlier,
            interrupted call with the same model, inputs and settings (`progress.ScoringProgress`). An interrupt then
            raises `ScoringInterrupted` (a `KeyboardInterrupt`) that says how much is kept.
        model_id: what identifies the model's weights for `progress_dir`, e.g. the fingerprint of its checkpoint
            (default: its name or path, dtype and config).

    Under `accelerate launch`, process p scores examples p, p + n, p + 2n, ... and every process returns all rewards.
    The model runs in eval mode under `torch.inference_mode()` (its training mode is restored afterwards).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"Got {len(prompts)} prompts but {len(responses)} responses; they must pair up.")
    if max_length is not None and max_length < 1:
        raise ValueError(f"`max_length` must be >= 1 or None, got {max_length}.")
    state = distributed_state()
    adajudge = is_adajudge(model)
    if share_prompts and not (adajudge and getattr(model, "supports_packed_inputs", False)):
        logger.warning_once(
            "`share_prompts` needs an AdaJudge judge with causal refinement and an eager/SDPA backbone; scoring "
            "every response in its own row instead."
        )
        share_prompts = False
    kept = None
    if progress_dir is not None:
        model_id = model_id or f"{getattr(model, 'name_or_path', '')} {model.dtype} {model.config.to_json_string()}"
        key = run_key(prompts, responses, model=model_id, max_length=max_length, share_prompts=share_prompts)
        kept = ScoringProgress(progress_dir, key, state.process_index)
    score_share = _score_shared_prompts if share_prompts else _score_plainly
    try:
        share = score_share(model, tokenizer, prompts, responses, max_length, max_batch_tokens, show_progress, kept)
    except KeyboardInterrupt as interrupt:
        if kept is None or isinstance(interrupt, ScoringInterrupted):
            raise
        raise ScoringInterrupted(len(kept.done), len(prompts), kept.folder) from interrupt
    shares = gather_object([share]) if state.num_processes > 1 else [share]
    num_truncated = sum(share.num_truncated for share in shares)
    if num_truncated and state.is_main_process:
        logger.warning(
            f"{num_truncated} of {len(prompts)} examples were longer than max_length={max_length} and lost the start "
            "of their prompt (or response); raise `max_length` to score them whole."
        )
    by_index = {index: score for share in shares for index, score in share.scores.items()}
    scores = [by_index[index] for index in sorted(by_index)]
    config = model.config
    depth = adajudge and bool(config.num_refinement_blocks)
    return ScoringOutput(
        rewards=torch.tensor([score.reward for score in scores], dtype=torch.float32),
        routing_weights=torch.tensor([score.routing_weights for score in scores]) if adajudge and scores else None,
        depth_weights=torch.tensor([score.depth_weights for score in scores]) if depth and scores else None,
        experts=tuple(config.experts) if adajudge else None,
        depth_candidates=depth_candidate_names(config) if depth else None,
        num_tokens=sum(share.num_tokens for share in shares),
        num_padded_tokens=sum(share.num_padded_tokens for share in shares),
        num_truncated=num_truncated,
        num_processes=state.num_processes,
        seconds=max(share.seconds for share in shares),
        encode_seconds=max(share.encode_seconds for share in shares),
        max_length=max_length,
        max_batch_tokens=max_batch_tokens,
    )


def _score_plainly(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence,
    responses: Sequence,
    max_length: int | None,
    max_batch_tokens: int,
    show_progress: bool,
    kept: ScoringProgress | None,
) -> ProcessShare:
    """This process's share of `score_responses`, one row per response."""
    state = distributed_state()
    adajudge = is_adajudge(model)
    pad_token_id = padding_id(tokenizer, model)
    start = time.perf_counter()
    mine = range(state.process_index, len(prompts), state.num_processes)
    encoded = {
        index: encode_prompt_response(tokenizer, prompts[index], responses[index], max_length) for index in mine
    }
    encode_seconds = time.perf_counter() - start
    batches = length_buckets([len(encoded[index].input_ids) for index in mine], max_batch_tokens)
    batches = [[mine[position] for position in batch] for batch in batches]

    def inputs_of(batch: list[int]) -> tuple[dict[str, torch.Tensor], None]:
        return plain_inputs([encoded[index] for index in batch], pad_token_id, prompt_lengths=adajudge), None

    passes = [(batch, partial(inputs_of, batch)) for batch in batches]
    scores = _score_passes(model, passes, kept, show_progress, "Scoring")
    return ProcessShare(
        scores,
        num_tokens=sum(len(example.input_ids) for example in encoded.values()),
        num_padded_tokens=sum(len(batch) * len(encoded[batch[0]].input_ids) for batch in batches),
        num_truncated=sum(example.truncated for example in encoded.values()),
        seconds=time.perf_counter() - start,
        encode_seconds=encode_seconds,
    )


def _score_shared_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence,
    responses: Sequence,
    max_length: int | None,
    max_batch_tokens: int,
    show_progress: bool,
    kept: ScoringProgress | None,
) -> ProcessShare:
    """This process's share of `score_responses(share_prompts=True)`: packed rows per prompt group, split across
    processes by group.

    Groups are batched by response count, so that no pass carries filler responses (`packed_inputs`): offline every
    group is known in advance, and a pass's head work grows with its rows times the most responses in a row."""
    state = distributed_state()
    start = time.perf_counter()
    groups = prompt_groups(prompts)
    mine = range(state.process_index, len(groups), state.num_processes)
    members = {g: groups[g] for g in mine}
    packed = {
        g: encode_packed(tokenizer, prompts[members[g][0]], [responses[i] for i in members[g]], max_length)
        for g in mine
    }
    encode_seconds = time.perf_counter() - start
    batches = []
    for size in sorted({len(members[g]) for g in mine}):
        same = [g for g in mine if len(members[g]) == size]
        lengths = [len(packed[g][0]) for g in same]
        batches += [[same[p] for p in batch] for batch in length_buckets(lengths, max_batch_tokens)]
    pad_token_id = padding_id(tokenizer)

    def inputs_of(batch: list[int]) -> tuple[dict[str, torch.Tensor], list[int]]:
        return packed_inputs([packed[g][:2] for g in batch], pad_token_id)

    passes = [([i for g in batch for i in members[g]], partial(inputs_of, batch)) for batch in batches]
    scores = _score_passes(model, passes, kept, show_progress, "Scoring (shared prompts)")
    return ProcessShare(
        scores,
        num_tokens=sum(len(ids) for ids, _, _ in packed.values()),
        num_padded_tokens=sum(len(batch) * max(len(packed[g][0]) for g in batch) for batch in batches),
        num_truncated=sum(len(members[g]) for g in mine if packed[g][2]),
        seconds=time.perf_counter() - start,
        encode_seconds=encode_seconds,
    )


def score_by_length(responses: Sequence[str | Messages]) -> ScoringOutput:
    """The length baseline: each response's reward is its length in characters, so the longer response wins.

    A sanity anchor: a reward model should beat it, and on RM-Bench it gets a low hard score (style bias).
    """
    lengths = [
        len(response) if isinstance(response, str) else sum(len(str(m.get("content", ""))) for m in response)
        for response in responses
    ]
    return ScoringOutput(rewards=torch.tensor(lengths, dtype=torch.float64))
