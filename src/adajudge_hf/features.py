"""Frozen-backbone judges on cached features: encode every prompt group once, then train and score heads in seconds.

With the backbone frozen, its final states H0 do not change during training, so they are computed once per packed
row [prompt; response 1; ...; response N] (the prompt once per group, see `packing.py`) and stored. Heads then
train and score through `AdaJudgeForRewardModeling.score_hidden_states`, exactly as the full forward would. This is
the cheapest way to train, compare and ablate judges on a CPU; `AdaJudgeRewardTrainer(freeze_backbone=True)` is the
same objective through TRL when features do not fit in memory.
"""

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .batching import DEFAULT_BATCH_TOKENS, length_buckets, padding_id
from .loss import adajudge_loss
from .modeling import AdaJudgeForRewardModeling
from .packing import encode_packed, packed_inputs


@dataclass
class PackedFeatures:
    """Backbone states of one packed row: `hidden_states` (L, D) and `segment_ids` (L,) (0 = prompt, s = response s)."""

    hidden_states: torch.Tensor
    segment_ids: torch.Tensor
    truncated: bool = False


def extract_features(
    model: AdaJudgeForRewardModeling,
    tokenizer: PreTrainedTokenizerBase,
    groups: Sequence[tuple[Any, Sequence[Any]]],
    max_length: int | None = None,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    dtype: torch.dtype = torch.float16,
    show_progress: bool = True,
) -> list[PackedFeatures]:
    """Backbone states of each (prompt, [response, ...]) group, in input order.

    Groups are packed rows (the prompt is encoded once) and batched by length. States are stored in `dtype` (fp16
    halves the memory; heads compute in fp32).
    """
    rows = [encode_packed(tokenizer, prompt, responses, max_length) for prompt, responses in groups]
    return features_of_packed_rows(model, rows, padding_id(tokenizer), max_batch_tokens, dtype, show_progress)


@torch.inference_mode()
def features_of_packed_rows(
    model: AdaJudgeForRewardModeling,
    rows: Sequence[tuple[list[int], list[int], bool]],
    pad_token_id: int = 0,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    dtype: torch.dtype = torch.float16,
    show_progress: bool = True,
) -> list[PackedFeatures]:
    """Backbone states of already encoded packed rows `(input_ids, segment_ids, truncated)`, in input order."""
    device = next(model.parameters()).device
    features: list[PackedFeatures | None] = [None] * len(rows)
    lengths = [len(ids) for ids, _, _ in rows]
    progress = tqdm(total=sum(lengths), unit="tok", desc="backbone features", disable=not show_progress)
    for batch in length_buckets(lengths, max_batch_tokens):
        inputs, _ = packed_inputs([rows[index][:2] for index in batch], pad_token_id)  # (B, L) each
        segment_ids = inputs["segment_ids"]
        output = model(**{key: value.to(device) for key, value in inputs.items()}, output_hidden_states=True)
        hidden = output.hidden_states[-1]  # (B, L, D) final normed backbone states
        for row, index in enumerate(batch):
            features[index] = PackedFeatures(
                hidden[row, : lengths[index]].to("cpu", dtype).clone(),
                segment_ids[row, : lengths[index]].clone(),
                rows[index][2],
            )
        progress.update(sum(lengths[i] for i in batch))
    progress.close()
    return features


def _collate(features: Sequence[PackedFeatures], device: torch.device) -> dict[str, torch.Tensor]:
    width = max(f.hidden_states.shape[0] for f in features)
    hidden_size = features[0].hidden_states.shape[1]
    hidden = torch.zeros(len(features), width, hidden_size)
    segment_ids = torch.zeros(len(features), width, dtype=torch.long)
    attention_mask = torch.zeros(len(features), width, dtype=torch.long)
    for row, feature in enumerate(features):
        length = feature.hidden_states.shape[0]
        hidden[row, :length] = feature.hidden_states.float()
        segment_ids[row, :length] = feature.segment_ids
        attention_mask[row, :length] = 1
    return {
        "hidden_states": hidden.to(device),
        "segment_ids": segment_ids.to(device),
        "attention_mask": attention_mask.to(device),
    }


def score_features(
    model: AdaJudgeForRewardModeling, features: Sequence[PackedFeatures], batch_size: int = 32
) -> dict[str, torch.Tensor | None]:
    """Rewards (G, N), routing weights (G, N, E) and depth weights (G, N, C) or None of G groups of N responses."""
    model.eval()
    device = next(model.judge_head.parameters()).device
    outputs = {"rewards": [], "routing_weights": [], "depth_weights": []}
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            chunk = features[start : start + batch_size]
            out = model.score_hidden_states(**_collate(chunk, device))

            def by_group(
                tensor: torch.Tensor, groups: int = len(chunk)
            ) -> torch.Tensor:  # (N * G, ...) -> (G, N, ...)
                return tensor.view(-1, groups, *tensor.shape[1:]).transpose(0, 1).cpu()

            outputs["rewards"].append(by_group(out.logits[:, 0]))
            outputs["routing_weights"].append(by_group(out.routing_weights))
            if out.depth_weights is not None:
                outputs["depth_weights"].append(by_group(out.depth_weights))
    return {key: torch.cat(values) if values else None for key, values in outputs.items()}


@dataclass
class HeadTrainingResult:
    """What `train_heads` did: one record per step, one per validation check, and the checkpoint it kept.

    `best_step` / `best_epoch` name the validation check whose weights the head holds on return (None without
    validation features: the head keeps its last weights).
    """

    history: list[dict[str, float]]
    evaluations: list[dict[str, float]]
    best_step: int | None = None
    best_epoch: float | None = None


@torch.inference_mode()
def validation_metrics(model: AdaJudgeForRewardModeling, features: Sequence[PackedFeatures]) -> dict[str, float]:
    """Pairwise accuracy (ties count as wrong) and plain Bradley-Terry loss on (prompt; chosen; rejected) features.

    Both are independent of the training loss, so checkpoints of heads trained with different losses compare alike.
    """
    rewards = score_features(model, features)["rewards"]  # (G, 2)
    margin = rewards[:, 0].double() - rewards[:, 1].double()
    return {
        "accuracy": (margin > 0).double().mean().item(),
        "bt_loss": torch.nn.functional.softplus(-margin).mean().item(),
    }


def _is_better(candidate: dict[str, float], best: dict[str, float] | None) -> bool:
    """Higher validation accuracy wins; equal accuracy goes to the lower Bradley-Terry loss."""
    if best is None:
        return True
    if candidate["accuracy"] != best["accuracy"]:
        return candidate["accuracy"] > best["accuracy"]
    return candidate["bt_loss"] < best["bt_loss"]


def load_balancing_loss(routing_weights: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer style balance term E * sum_e f_e * P_e over (B, E) routing weights: 1 when balanced.

    f_e is the share of rows whose argmax is expert e (no gradient), P_e the mean weight of e; the product pushes the
    batch's routing mass away from an expert that takes every row.
    """
    experts = routing_weights.shape[-1]
    share = torch.nn.functional.one_hot(routing_weights.argmax(-1), experts).float().mean(0)  # (E,)
    return experts * (share * routing_weights.float().mean(0)).sum()


def train_heads(
    model: AdaJudgeForRewardModeling,
    train_features: Sequence[PackedFeatures],
    *,
    validation_features: Sequence[PackedFeatures] | None = None,
    evaluations_per_epoch: int = 1,
    patience: int | None = None,
    epochs: int = 2,
    batch_size: int = 16,
    learning_rate: float = 5e-4,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    router_learning_rate_multiplier: float = 1.0,
    router_warmup_fraction: float = 0.0,
    expert_aux_loss_coef: float = 0.0,
    load_balancing_coef: float = 0.0,
    router_temperature_start: float | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> HeadTrainingResult:
    """Train `model.judge_head` on cached (prompt; chosen; rejected) features with the AdaJudge loss of `model.config`.

    With `validation_features` (pairs carved from the training data), the head is checked `evaluations_per_epoch`
    times per epoch and ends holding the weights of the best check: highest validation accuracy, ties to the lower
    Bradley-Terry loss (`transformers`' `load_best_model_at_end` with `metric_for_best_model="accuracy"`). `patience`
    stops after that many checks without improvement. The held-out test data never enters the choice.

    Remedies for a router that locks in on the first competent expert (`shared/notes/routing-results.md`), all off
    by default: `router_learning_rate_multiplier` scales the pooling router's learning rate,
    `router_warmup_fraction` keeps the router frozen (pi uniform) for that fraction of the steps so every expert
    learns first, `expert_aux_loss_coef` adds each expert's own Bradley-Terry loss, `load_balancing_coef` adds
    `load_balancing_loss` of pi, and `router_temperature_start` anneals the router temperature linearly from that
    value to `config.router_temperature` over training (a soft router early, so no expert wins by default).

    Deterministic for a given seed.
    """
    if any(int(f.segment_ids.max()) != 2 for f in train_features):
        raise ValueError("Training features must be preference pairs: packed rows [prompt; chosen; rejected].")
    if validation_features is not None and any(int(f.segment_ids.max()) != 2 for f in validation_features):
        raise ValueError("Validation features must be preference pairs: packed rows [prompt; chosen; rejected].")
    if evaluations_per_epoch < 1:
        raise ValueError(f"`evaluations_per_epoch` must be >= 1, got {evaluations_per_epoch}.")
    config = model.config
    head = model.judge_head
    router_params = list(head.pooling_router.parameters()) if head.pooling_router else []
    router_ids = {id(p) for p in router_params}
    other_params = [p for p in head.parameters() if id(p) not in router_ids]
    groups = [{"params": other_params, "lr": learning_rate}]
    router_learning_rate = learning_rate * router_learning_rate_multiplier
    if router_params:
        groups.append({"params": router_params, "lr": 0.0 if router_warmup_fraction > 0 else router_learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    device = next(head.parameters()).device
    steps_per_epoch = math.ceil(len(train_features) / batch_size)
    total_steps = epochs * steps_per_epoch
    warmup_steps = round(router_warmup_fraction * total_steps)
    check_steps = {
        min(steps_per_epoch, math.ceil((i + 1) * steps_per_epoch / evaluations_per_epoch))
        for i in range(evaluations_per_epoch)
    }  # step numbers within an epoch (1-based) after which validation runs
    final_temperature = config.router_temperature
    history, evaluations = [], []
    best, best_state, checks_without_gain = None, None, 0
    rng = random.Random(seed)
    progress = tqdm(total=total_steps, desc="training heads", disable=not show_progress)
    head.train()
    try:
        for epoch in range(epochs):
            order = list(range(len(train_features)))
            rng.shuffle(order)
            for step in range(steps_per_epoch):
                global_step = epoch * steps_per_epoch + step
                if router_params and global_step == warmup_steps:
                    optimizer.param_groups[1]["lr"] = router_learning_rate  # warm-up over: the router starts to learn
                if router_temperature_start is not None:
                    share = global_step / max(1, total_steps - 1)
                    head.router_temperature = router_temperature_start + share * (
                        final_temperature - router_temperature_start
                    )
                chunk = [train_features[i] for i in order[step * batch_size : (step + 1) * batch_size]]
                out = model.score_hidden_states(**_collate(chunk, device))
                chosen, rejected = out.logits[:, 0].chunk(2)  # packed rows give responses-first order
                chosen_pi, rejected_pi = out.routing_weights.chunk(2)
                chosen_s, rejected_s = out.expert_scores.chunk(2)
                loss = adajudge_loss(
                    chosen,
                    rejected,
                    chosen_pi,
                    rejected_pi,
                    bt_temperature=config.bt_temperature,
                    focal_gamma=config.focal_gamma,
                    entropy_floor=config.entropy_floor,
                    entropy_floor_coef=config.entropy_floor_coef,
                    chosen_expert_scores=chosen_s,
                    rejected_expert_scores=rejected_s,
                    expert_aux_loss_coef=expert_aux_loss_coef,
                )
                total = loss.loss
                if load_balancing_coef and router_params:
                    total = total + load_balancing_coef * load_balancing_loss(out.routing_weights)
                if not torch.isfinite(total):
                    raise FloatingPointError(f"Non-finite loss at epoch {epoch} step {step}; lower the learning rate.")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(head.parameters(), max_grad_norm)
                optimizer.step()
                record = {
                    "step": global_step + 1,
                    "epoch": epoch + (step + 1) / steps_per_epoch,
                    "loss": total.item(),
                    "accuracy": (chosen > rejected).float().mean().item(),
                    "routing_entropy": loss.routing_entropy.mean().item(),
                    "floor_active": loss.floor_active.float().mean().item(),
                }
                history.append(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
                progress.update()
                if validation_features is None or step + 1 not in check_steps:
                    continue
                check = {"step": record["step"], "epoch": record["epoch"]}
                check.update(validation_metrics(model, validation_features))
                head.train()
                evaluations.append(check)
                if _is_better(check, best):
                    best, checks_without_gain = check, 0
                    best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                else:
                    checks_without_gain += 1
                if patience is not None and checks_without_gain >= patience:
                    break
            else:
                continue
            break  # early stop
    finally:
        head.router_temperature = final_temperature
        progress.close()
    if best_state is not None:
        head.load_state_dict(best_state)
    model.eval()
    return HeadTrainingResult(
        history,
        evaluations,
        best_step=None if best is None else int(best["step"]),
        best_epoch=None if best is None else best["epoch"],
    )
