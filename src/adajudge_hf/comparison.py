"""Comparing judges honestly: leak-free splits, intervals that count both the test items and the training seeds,
multiplicity-corrected p-values, and the baseline that separates adapting from averaging.

A difference between two judges trained over several seeds varies for two reasons: which held-out items were drawn,
and how each training run happened to go (initialisation, shuffling). A bootstrap over items alone ignores the
second, which at small scale is often the larger. `hierarchical_bootstrap` resamples both: seeds with replacement,
then items with replacement, the same draws for both judges (paired).

A held-out pair whose conversation also opens a training pair is not held out: `split_by_opening` keeps every
conversation opening in one split and drops exact duplicates first. `FixedMixtureRouter` gives AdaJudge's three
pooling experts learned but input-independent weights, so "a prompt-conditioned mixture" can be told apart from "a
mixture". `routing_mutual_information` measures how much the routing weights depend on the input's domain.
"""

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class BootstrapResult:
    """A paired difference a - b with its percentile interval and two-sided bootstrap p-value (against 0)."""

    difference: float
    low: float
    high: float
    p_value: float
    draws: torch.Tensor  # (R,) resampled mean differences: any other interval comes from these


def bootstrap_difference(
    correct_a: Sequence[Sequence[float]] | torch.Tensor,
    correct_b: Sequence[Sequence[float]] | torch.Tensor,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 250,
) -> BootstrapResult:
    """Mean difference a - b, resampling seeds and items (see `hierarchical_bootstrap`), with a p-value.

    The p-value is the two-sided bootstrap one, 2 * min(share of draws <= 0, share >= 0) with the observed draw
    counted in, so it is never below 2 / (resamples + 1). Draws are made `chunk` resamples at a time, which bounds
    memory at S * chunk * N values whatever `resamples` is.
    """
    a = torch.as_tensor(correct_a, dtype=torch.float64)
    b = torch.as_tensor(correct_b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 2 or a.numel() == 0:
        raise ValueError(
            f"Both judges need (seeds, items) scores of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}.")
    difference = a - b  # (S, N)
    num_seeds, num_items = difference.shape
    generator = torch.Generator().manual_seed(seed)
    seed_draws = torch.randint(num_seeds, (resamples, num_seeds), generator=generator)  # (R, S)
    item_draws = torch.randint(num_items, (resamples, num_items), generator=generator)  # (R, N)
    means = []
    for start in range(0, resamples, chunk):
        per_seed = difference[:, item_draws[start : start + chunk]].mean(-1)  # (S, r): each seed over its items
        means.append(per_seed.gather(0, seed_draws[start : start + chunk].T).mean(0))  # (r,): over the seeds
    draws = torch.cat(means)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(draws, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    below, above = (draws <= 0).sum().item(), (draws >= 0).sum().item()
    p_value = min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))
    return BootstrapResult(difference.mean().item(), low, high, p_value, draws)


def hierarchical_bootstrap(
    correct_a: Sequence[Sequence[float]] | torch.Tensor,
    correct_b: Sequence[Sequence[float]] | torch.Tensor,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean difference a - b and its percentile interval, resampling seeds and items.

    Args:
        correct_a, correct_b: (S, N) per-item correctness (or any per-item score) of judges a and b, one row per
            training seed, the same seeds and items in the same order for both (paired).
        resamples: bootstrap draws.
        confidence: coverage of the interval.
        seed: seed of the bootstrap's own random draws.

    Returns:
        `(difference, low, high)` in the units of the inputs (multiply by 100 for percentage points).
    """
    result = bootstrap_difference(correct_a, correct_b, resamples, confidence, seed)
    return result.difference, result.low, result.high


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: reject where adjusted p <= alpha (family-wise)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def conversation_opening(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    """The first user turn of a conversation, case-folded with whitespace collapsed: the key that keeps a
    conversation (and every continuation of it) in one split."""
    if not isinstance(prompt, str):
        prompt = next((m["content"] for m in prompt if m["role"] == "user"), "")
    return re.sub(r"\s+", " ", prompt).strip().casefold()


def pair_key(pair: Mapping[str, Any]) -> str:
    """Exact identity of a preference pair (prompt, chosen, rejected)."""
    return json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], sort_keys=True)


def split_by_opening(
    pairs: Sequence[Mapping[str, Any]],
    sources: Sequence[str],
    quotas: Mapping[str, Mapping[str, int]],
    salt: str = "",
    default_split: str = "train",
) -> tuple[dict[str, list[int]], int]:
    """Assign pairs to splits so that no conversation opening and no exact pair is in two splits.

    Exact duplicates are dropped (the first occurrence stays). Pairs are grouped by `conversation_opening`; groups
    are visited in the order of a salted hash of their opening (deterministic, independent of input order) and each
    goes to the first split in `quotas` (split -> source -> pairs) that still has room for all its pairs, else to
    `default_split`.

    Returns:
        `({split: sorted pair indices}, number of duplicates dropped)`.
    """
    seen, groups = set(), {}
    for index, pair in enumerate(pairs):
        key = pair_key(pair)
        if key in seen:
            continue
        seen.add(key)
        groups.setdefault(conversation_opening(pair["prompt"]), []).append(index)
    room = {split: dict(per_source) for split, per_source in quotas.items()}
    splits = {split: [] for split in [*quotas, default_split]}
    order = sorted(groups, key=lambda opening: hashlib.sha256((salt + opening).encode()).hexdigest())
    for opening in order:
        members = groups[opening]
        need: dict[str, int] = {}
        for index in members:
            need[sources[index]] = need.get(sources[index], 0) + 1
        target = next(
            (s for s in quotas if all(room[s].get(src, 0) >= count for src, count in need.items())), default_split
        )
        if target in room:
            for src, count in need.items():
                room[target][src] -= count
        splits[target].extend(members)
    return {split: sorted(indices) for split, indices in splits.items()}, len(pairs) - len(seen)


class FixedMixtureRouter(nn.Module):
    """Input-independent routing: learned logits over the experts, the same for every input.

    Drop-in for `AdaJudgeHead.pooling_router` (it takes the router input only for its shape), so the head keeps the
    same three experts and the same loss, and only the router's access to the input is taken away. Zero logits at
    init give uniform weights, as AdaJudge's zero-initialised router does.
    """

    def __init__(self, num_experts: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_experts))

    def forward(self, router_input: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*router_input.shape[:-1], -1)


def use_fixed_mixture(model: nn.Module) -> nn.Module:
    """Replace an adaptive AdaJudge head's pooling router with a `FixedMixtureRouter` (in place; returns the model)."""
    head = model.judge_head
    if head.pooling_router is None:
        raise ValueError("A fixed mixture needs the three pooling experts: build the model with pooling='adaptive'.")
    head.pooling_router = FixedMixtureRouter(len(head.experts)).to(next(head.parameters()).device)
    return model


def routing_mutual_information(routing_weights: torch.Tensor, labels: Sequence[int]) -> float:
    """I(label; expert) in nats, where the expert of an input is drawn from its routing weights pi.

    `routing_weights` (M, E) are per-input pi, `labels` (M,) the input's domain. The joint p(d, e) is the mean pi of
    domain d times the share of d, so an input-independent router gives exactly 0 and a router that sends each domain
    to its own expert with certainty gives H(domain). Bounded by min(log E, H(domain)).
    """
    pi = torch.as_tensor(routing_weights, dtype=torch.float64)
    labels = torch.as_tensor(labels)
    domains = labels.unique()
    share = torch.stack([(labels == d).double().mean() for d in domains])  # (D,)
    per_domain = torch.stack([pi[labels == d].mean(0) for d in domains])  # (D, E)
    marginal = (share[:, None] * per_domain).sum(0)  # (E,)
    terms = per_domain * (per_domain.clamp_min(1e-300).log() - marginal.clamp_min(1e-300).log())
    return max(0.0, (share[:, None] * terms).sum().item())  # >= 0; rounding can leave -1e-17 for a constant pi


__all__ = [
    "BootstrapResult",
    "FixedMixtureRouter",
    "bootstrap_difference",
    "conversation_opening",
    "hierarchical_bootstrap",
    "holm_adjust",
    "pair_key",
    "routing_mutual_information",
    "split_by_opening",
    "use_fixed_mixture",
]
