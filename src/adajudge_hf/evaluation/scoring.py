"""Turn (prompt, response) pairs into rewards, fast and in input order, on one process or many.

Examples are encoded with `encode_prompt_response` (the encoding the trainer uses, so a judge sees the same tokens),
sorted by length and cut into batches that fit a token budget, so padding stays minimal; the results come back in the
input order. Under `accelerate launch` each process scores every n-th example and the rewards are gathered back, so
one process and n processes give the same rewards.
"""

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from ..batching import (
    DEFAULT_BATCH_TOKENS,
    depth_candidate_names,
    eval_mode,
    item_scores,
    length_buckets,
    packed_output_order,
    padding_id,
    prompt_groups,
)
from ..modeling import AdaJudgeConfig
from ..packing import encode_packed, pad_packed
from ..tokenization import EncodedExample, Messages, encode_prompt_response
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
    batch_tokens: int | None = None

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
            "batch_tokens": self.batch_tokens,
        }


def distributed_state() -> PartialState:
    """Accelerate's process state, which tells how many processes share the work.

    On a machine without an accelerator, `accelerate launch` starts several processes, but `PartialState()` joins them
    into one process group (gloo) only when told it runs on CPU; without that every process would score everything.
    """
    return PartialState(cpu=not torch.accelerator.is_available())


def is_adajudge(model: torch.nn.Module) -> bool:
    """Whether `model` is an AdaJudge judge (also behind a PEFT wrapper or loaded as remote code)."""
    return getattr(getattr(model, "config", None), "model_type", None) == AdaJudgeConfig.model_type


def _padding_id(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, adajudge: bool) -> int:
    if adajudge:
        return padding_id(tokenizer)
    # A stock `*ForSequenceClassification` reads the reward at the last token that is not `config.pad_token_id`,
    # so padding must use exactly that id.
    pad_token_id = model.config.get_text_config().pad_token_id
    if pad_token_id is None:
        raise ValueError(
            "The model config has no `pad_token_id`, so a stock sequence-classification reward model cannot score "
            "batches (it finds the last token by the pad id). Set `model.config.pad_token_id` to a token that never "
            "ends a response, e.g. `tokenizer.pad_token_id`, or the EOS id as RewardBench does."
        )
    return pad_token_id


@torch.inference_mode()
def _score_batches(
    model: torch.nn.Module,
    encoded: dict[int, EncodedExample],
    batches: list[list[int]],
    pad_token_id: int,
    adajudge: bool,
    progress: tqdm,
    kept: ScoringProgress | None,
) -> list[tuple]:
    """Forward every batch not `kept` on disk (keeping each new one there); returns (index, reward, pi, alpha) per
    example."""
    device = model.device
    results = []
    for batch in batches:
        if kept is not None and (done := kept.kept(batch)) is not None:
            results.extend(done)
            progress.update(len(batch))
            continue
        rows = [torch.tensor(encoded[index].input_ids) for index in batch]
        input_ids = pad_sequence(rows, batch_first=True, padding_value=pad_token_id)  # (B, L), right padded
        attention_mask = pad_sequence([torch.ones_like(row) for row in rows], batch_first=True)  # (B, L)
        inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        if adajudge:
            inputs["prompt_lengths"] = torch.tensor([encoded[index].prompt_length for index in batch], device=device)
        scores = item_scores(model(**inputs))
        batch_results = [(index, s.reward, s.routing_weights, s.depth_weights) for index, s in zip(batch, scores)]
        if kept is not None:
            kept.append(batch_results)
        results.extend(batch_results)
        progress.update(len(batch))
    return results


@torch.inference_mode()
def _score_packed_batches(
    model: torch.nn.Module,
    packed: dict[int, tuple[list[int], list[int], bool]],
    members: dict[int, list[int]],
    batches: list[list[int]],
    pad_token_id: int,
    progress: tqdm,
    kept: ScoringProgress | None,
) -> list[tuple]:
    """Forward batches of packed groups (all with the same number of responses) not `kept` on disk; (index, reward,
    pi, alpha) each."""
    device = model.device
    results = []
    for batch in batches:
        indices = [index for group in batch for index in members[group]]
        if kept is not None and (done := kept.kept(indices)) is not None:
            results.extend(done)
            progress.update(len(indices))
            continue
        inputs = pad_packed([packed[group][:2] for group in batch], pad_token_id)
        outputs = model(**{key: value.to(device) for key, value in inputs.items()})
        scores = item_scores(outputs, packed_output_order([len(members[group]) for group in batch]))
        batch_results = [(index, s.reward, s.routing_weights, s.depth_weights) for index, s in zip(indices, scores)]
        if kept is not None:
            kept.append(batch_results)
        results.extend(batch_results)
        progress.update(len(indices))
    return results


def score_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | Messages | None],
    responses: Sequence[str | Messages],
    *,
    max_length: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
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
        batch_tokens: budget of padded tokens per forward pass; lower it on out-of-memory errors.
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
    try:
        if share_prompts:
            return _score_shared_prompts(
                model, tokenizer, prompts, responses, max_length, batch_tokens, show_progress, kept
            )
        return _score_plainly(model, tokenizer, prompts, responses, max_length, batch_tokens, show_progress, kept)
    except KeyboardInterrupt as interrupt:
        if kept is None or isinstance(interrupt, ScoringInterrupted):
            raise
        raise ScoringInterrupted(len(kept.done), len(prompts), kept.folder) from interrupt


def _score_plainly(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence,
    responses: Sequence,
    max_length: int | None,
    batch_tokens: int,
    show_progress: bool,
    kept: ScoringProgress | None,
) -> ScoringOutput:
    """`score_responses` with one row per response."""
    state = distributed_state()
    adajudge = is_adajudge(model)
    pad_token_id = _padding_id(model, tokenizer, adajudge)

    start = time.perf_counter()
    mine = range(state.process_index, len(prompts), state.num_processes)
    encoded = {
        index: encode_prompt_response(tokenizer, prompts[index], responses[index], max_length) for index in mine
    }
    encode_seconds = time.perf_counter() - start
    batches = length_buckets([len(encoded[index].input_ids) for index in mine], batch_tokens)
    batches = [[mine[position] for position in batch] for batch in batches]
    with (
        eval_mode(model),
        tqdm(
            total=len(encoded), desc="Scoring", unit="response", disable=not (show_progress and state.is_main_process)
        ) as progress,
    ):
        results = _score_batches(model, encoded, batches, pad_token_id, adajudge, progress, kept)
    local_stats = [
        (
            sum(len(example.input_ids) for example in encoded.values()),
            sum(len(batch) * len(encoded[batch[0]].input_ids) for batch in batches),
            sum(example.truncated for example in encoded.values()),
            time.perf_counter() - start,
            encode_seconds,
        )
    ]
    if state.num_processes > 1:
        results, local_stats = gather_object(results), gather_object(local_stats)
    results.sort(key=lambda result: result[0])
    num_truncated = sum(stats[2] for stats in local_stats)
    if num_truncated and state.is_main_process:
        logger.warning(
            f"{num_truncated} of {len(prompts)} examples were longer than max_length={max_length} and lost the start "
            "of their prompt (or response); raise `max_length` to score them whole."
        )

    config = model.config
    return ScoringOutput(
        rewards=torch.tensor([result[1] for result in results], dtype=torch.float32),
        routing_weights=torch.tensor([result[2] for result in results]) if adajudge and results else None,
        depth_weights=(
            torch.tensor([result[3] for result in results])
            if adajudge and results and config.num_refinement_blocks
            else None
        ),
        experts=tuple(config.experts) if adajudge else None,
        depth_candidates=depth_candidate_names(config) if adajudge and config.num_refinement_blocks else None,
        num_tokens=sum(stats[0] for stats in local_stats),
        num_padded_tokens=sum(stats[1] for stats in local_stats),
        num_truncated=num_truncated,
        num_processes=state.num_processes,
        seconds=max(stats[3] for stats in local_stats),
        encode_seconds=max(stats[4] for stats in local_stats),
        max_length=max_length,
        batch_tokens=batch_tokens,
    )


def _score_shared_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence,
    responses: Sequence,
    max_length: int | None,
    batch_tokens: int,
    show_progress: bool,
    kept: ScoringProgress | None,
) -> ScoringOutput:
    """`score_responses(share_prompts=True)`: packed rows per prompt group, split across processes by group."""
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
    for size in sorted({len(members[g]) for g in mine}):  # a packed batch needs the same response count per row
        same = [g for g in mine if len(members[g]) == size]
        batches += [
            [same[p] for p in batch] for batch in length_buckets([len(packed[g][0]) for g in same], batch_tokens)
        ]
    with (
        eval_mode(model),
        tqdm(
            total=sum(map(len, members.values())),
            desc="Scoring (shared prompts)",
            unit="response",
            disable=not (show_progress and state.is_main_process),
        ) as progress,
    ):
        results = _score_packed_batches(model, packed, members, batches, padding_id(tokenizer), progress, kept)
    local_stats = [
        (
            sum(len(ids) for ids, _, _ in packed.values()),
            sum(len(batch) * max(len(packed[g][0]) for g in batch) for batch in batches),
            sum(len(members[g]) for g in mine if packed[g][2]),
            time.perf_counter() - start,
            encode_seconds,
        )
    ]
    if state.num_processes > 1:
        results, local_stats = gather_object(results), gather_object(local_stats)
    results.sort(key=lambda result: result[0])
    config = model.config
    return ScoringOutput(
        rewards=torch.tensor([result[1] for result in results], dtype=torch.float32),
        routing_weights=torch.tensor([result[2] for result in results]),
        depth_weights=torch.tensor([result[3] for result in results]) if config.num_refinement_blocks else None,
        experts=tuple(config.experts),
        depth_candidates=depth_candidate_names(config) if config.num_refinement_blocks else None,
        num_tokens=sum(stats[0] for stats in local_stats),
        num_padded_tokens=sum(stats[1] for stats in local_stats),
        num_truncated=sum(stats[2] for stats in local_stats),
        num_processes=state.num_processes,
        seconds=max(stats[3] for stats in local_stats),
        encode_seconds=max(stats[4] for stats in local_stats),
        max_length=max_length,
        batch_tokens=batch_tokens,
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
