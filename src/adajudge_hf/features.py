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

from .loss import adajudge_loss
from .modeling import AdaJudgeForRewardModeling
from .packing import encode_packed


@dataclass
class PackedFeatures:
    """Backbone states of one packed row: `hidden_states` (L, D) and `segment_ids` (L,) (0 = prompt, s = response s)."""

    hidden_states: torch.Tensor
    segment_ids: torch.Tensor
    truncated: bool = False


def _length_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size stays within `max_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for index in order:
        if current and lengths[index] * (len(current) + 1) > max_tokens:
            batches.append(current)
            current = []
        current.append(index)
    return batches + [current] if current else batches


def extract_features(
    model: AdaJudgeForRewardModeling,
    tokenizer: PreTrainedTokenizerBase,
    groups: Sequence[tuple[Any, Sequence[Any]]],
    max_length: int | None = None,
    max_tokens_per_batch: int = 8192,
    dtype: torch.dtype = torch.float16,
    show_progress: bool = True,
) -> list[PackedFeatures]:
    """Backbone states of each (prompt, [response, ...]) group, in input order.

    Groups are packed rows (the prompt is encoded once) and batched by length. States are stored in `dtype` (fp16
    halves the memory; heads compute in fp32).
    """
    rows = [encode_packed(tokenizer, prompt, responses, max_length) for prompt, responses in groups]
    return features_of_packed_rows(
        model, rows, tokenizer.pad_token_id or 0, max_tokens_per_batch, dtype, show_progress
    )


@torch.inference_mode()
def features_of_packed_rows(
    model: AdaJudgeForRewardModeling,
    rows: Sequence[tuple[list[int], list[int], bool]],
    pad_token_id: int = 0,
    max_tokens_per_batch: int = 8192,
    dtype: torch.dtype = torch.float16,
    show_progress: bool = True,
) -> list[PackedFeatures]:
    """Backbone states of already encoded packed rows `(input_ids, segment_ids, truncated)`, in input order."""
    device = next(model.parameters()).device
    features: list[PackedFeatures | None] = [None] * len(rows)
    lengths = [len(ids) for ids, _, _ in rows]
    progress = tqdm(total=sum(lengths), unit="tok", desc="backbone features", disable=not show_progress)
    for batch in _length_batches(lengths, max_tokens_per_batch):
        width = max(lengths[i] for i in batch)
        input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        segment_ids = torch.zeros_like(input_ids)
        attention_mask = torch.zeros_like(input_ids)
        for row, index in enumerate(batch):
            ids, segments, _ = rows[index]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            segment_ids[row, : len(ids)] = torch.tensor(segments)
            attention_mask[row, : len(ids)] = 1
        output = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            segment_ids=segment_ids.to(device),
            output_hidden_states=True,
        )
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


def train_heads(
    model: AdaJudgeForRewardModeling,
    train_features: Sequence[PackedFeatures],
    *,
    epochs: int = 2,
    batch_size: int = 16,
    learning_rate: float = 5e-4,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    router_learning_rate_multiplier: float = 1.0,
    router_warmup_fraction: float = 0.0,
    expert_aux_loss_coef: float = 0.0,
    seed: int = 0,
    show_progress: bool = True,
) -> list[dict[str, float]]:
    """Train `model.judge_head` on cached (prompt; chosen; rejected) features with the AdaJudge loss of `model.config`.

    Remedies for a router that locks in on the first competent expert (`shared/notes/routing-results.md`), all off
    by default: `router_learning_rate_multiplier` scales the pooling router's learning rate,
    `router_warmup_fraction` keeps the router frozen (pi uniform) for that fraction of the steps so every expert
    learns first, and `expert_aux_loss_coef` adds each expert's own Bradley-Terry loss.

    Returns one record per step (loss, accuracy, routing entropy). Deterministic for a given seed.
    """
    if any(int(f.segment_ids.max()) != 2 for f in train_features):
        raise ValueError("Training features must be preference pairs: packed rows [prompt; chosen; rejected].")
    config = model.config
    router_params = list(model.judge_head.pooling_router.parameters()) if model.judge_head.pooling_router else []
    router_ids = {id(p) for p in router_params}
    other_params = [p for p in model.judge_head.parameters() if id(p) not in router_ids]
    groups = [{"params": other_params, "lr": learning_rate}]
    router_learning_rate = learning_rate * router_learning_rate_multiplier
    if router_params:
        groups.append({"params": router_params, "lr": 0.0 if router_warmup_fraction > 0 else router_learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    device = next(model.judge_head.parameters()).device
    steps_per_epoch = math.ceil(len(train_features) / batch_size)
    warmup_steps = round(router_warmup_fraction * epochs * steps_per_epoch)
    history = []
    model.judge_head.train()
    rng = random.Random(seed)
    progress = tqdm(total=epochs * steps_per_epoch, desc="training heads", disable=not show_progress)
    for epoch in range(epochs):
        order = list(range(len(train_features)))
        rng.shuffle(order)
        for step in range(steps_per_epoch):
            if router_params and epoch * steps_per_epoch + step == warmup_steps:
                optimizer.param_groups[1]["lr"] = router_learning_rate  # warm-up over: the router starts to learn
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
            if not torch.isfinite(loss.loss):
                raise FloatingPointError(f"Non-finite loss at epoch {epoch} step {step}; lower the learning rate.")
            optimizer.zero_grad(set_to_none=True)
            loss.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.judge_head.parameters(), max_grad_norm)
            optimizer.step()
            record = {
                "epoch": epoch + (step + 1) / steps_per_epoch,
                "loss": loss.loss.item(),
                "accuracy": (chosen > rejected).float().mean().item(),
                "routing_entropy": loss.routing_entropy.mean().item(),
                "floor_active": loss.floor_active.float().mean().item(),
            }
            history.append(record)
            progress.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
            progress.update()
    progress.close()
    model.eval()
    return history
