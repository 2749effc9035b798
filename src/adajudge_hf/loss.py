"""The AdaJudge training objective, as pure fp32 functions of rewards and routing weights.

L = -w_m (1 - p)^gamma log p + lambda * max(0, eta - H(pi))^2,  p = sigmoid((r+ - r- - margin) / tau_bt)

(`shared/spec/METHOD.md`). With gamma = 0, lambda = 0 and w_m = 1 this is exactly TRL's `RewardTrainer` loss
`-logsigmoid(r+ - r- - margin).mean()`. `log p` and `1 - p` both come from `logsigmoid`, so rewards far apart in
either direction give finite losses and gradients.

w_m is the square-root-scaled preference strength normalised to mean 1. METHOD.md says "over the batch"; the
normaliser here is the mean over the whole training set (`preference_strength_scale`), computed once: per device
micro-batch, the weights would all be 1 at one pair per device and would differ between one big batch, gradient
accumulation and data parallelism. A dataset-level constant weights every pair the same way in all of them.

Shapes: B pairs, E pooling experts.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


STRENGTH_SCALINGS = ("sqrt", "linear")


@dataclass
class AdaJudgeLossOutput:
    """The loss and the pieces a trainer logs.

    `routing_entropy` and `floor_active` have one entry per sequence: the B chosen rows, then the B rejected rows.
    """

    loss: torch.Tensor  # () total
    preference_loss: torch.Tensor  # () weighted focal Bradley-Terry term
    entropy_penalty: torch.Tensor  # () lambda * mean(max(0, eta - H)^2), before any aux term
    expert_aux_loss: torch.Tensor | None  # () mean per-expert BT loss (unscaled), when requested
    routing_entropy: torch.Tensor  # (2B,) H(pi) in nats
    floor_active: torch.Tensor  # (2B,) bool: H(pi) < eta, i.e. the floor pushes this row


def routing_entropy(routing_weights: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of (N, E) routing weights; 0 * log 0 counts as 0."""
    weights = routing_weights.float()
    return -torch.special.xlogy(weights, weights).sum(-1)  # (N,)


def _scaled_strength(strength: torch.Tensor, scaling: str) -> torch.Tensor:
    if scaling not in STRENGTH_SCALINGS:
        raise ValueError(f"`scaling` must be one of {STRENGTH_SCALINGS}, got {scaling!r}.")
    strength = strength.float()
    if not bool(torch.isfinite(strength).all()) or bool((strength < 0).any()):
        raise ValueError(
            f"Preference strengths must be finite and >= 0, got {strength.tolist()[:16]}. Use the magnitude of a "
            "signed preference (which response wins is already given by chosen/rejected)."
        )
    return strength.sqrt() if scaling == "sqrt" else strength


def preference_strength_scale(strengths: torch.Tensor, scaling: str = "sqrt") -> float:
    """The mean `scaling`-transformed strength of a whole training set: dividing by it gives w_m mean 1 over the set.

    One constant for the run, so a pair's weight does not depend on the pairs that share its batch (at one pair per
    device every per-batch normalised weight would be 1), and gradient accumulation and data parallelism weight the
    pairs exactly like one big batch.
    """
    scale = float(_scaled_strength(strengths, scaling).mean())
    if not scale > 0:
        raise ValueError(
            "Every preference strength is 0, so no pair carries a preference to learn from. Check the strength "
            "column, or train without `strength_column`."
        )
    return scale


def preference_strength_weights(
    strength: torch.Tensor, scaling: str = "sqrt", scale: float | None = None
) -> torch.Tensor:
    """Per-pair weights w_m from preference strengths (B,): `scaling`-transformed, then normalised to mean 1.

    `"sqrt"` (the paper's square-root scaling) damps large strengths; `"linear"` uses them as they are. `scale` is the
    dataset-level normaliser from `preference_strength_scale` (what the trainer uses); `None` normalises over these
    B pairs, and a batch whose strengths are all zero then carries no preference and gets zero weights.
    """
    weights = _scaled_strength(strength, scaling)  # (B,)
    if scale is None:
        return weights / weights.mean().clamp_min(torch.finfo(weights.dtype).tiny)
    return weights / scale


def _preference_logits(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, margin: torch.Tensor | None, bt_temperature: float
) -> torch.Tensor:
    """x = (s+ - s- - margin) / tau for (B,) rewards or (B, E) expert scores, in fp32."""
    logits = chosen_scores.float() - rejected_scores.float()
    if margin is not None:
        logits = logits - margin.float().view(-1, *([1] * (logits.dim() - 1)))
    if bt_temperature != 1.0:
        logits = logits / bt_temperature
    return logits


def adajudge_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_routing: torch.Tensor,
    rejected_routing: torch.Tensor,
    margin: torch.Tensor | None = None,
    pair_weights: torch.Tensor | None = None,
    *,
    bt_temperature: float,
    focal_gamma: float,
    entropy_floor: float,
    entropy_floor_coef: float,
    chosen_expert_scores: torch.Tensor | None = None,
    rejected_expert_scores: torch.Tensor | None = None,
    expert_aux_loss_coef: float = 0.0,
) -> AdaJudgeLossOutput:
    """Focal Bradley-Terry loss with an entropy floor on the pooling router, averaged over the B pairs.

    Args:
        chosen_rewards, rejected_rewards: (B,) rewards r+ and r-.
        chosen_routing, rejected_routing: (B, E) pooling-router weights pi of each row. The floor applies to both rows
            of a pair (mean over the 2B rows); it is skipped for a static pooling (E = 1), whose pi cannot move.
        margin: (B,) optional margin subtracted from r+ - r- (TRL's `margin` column).
        pair_weights: (B,) optional w_m (see `preference_strength_weights`); 1 when None.
        chosen_expert_scores, rejected_expert_scores: (B, E) expert scores s_v, needed when `expert_aux_loss_coef` > 0.
        expert_aux_loss_coef: weight of an auxiliary loss, the mean over experts of each expert's own (w_m-weighted)
            Bradley-Terry loss on s_v. Off by default; it keeps every expert competent so the router does not lock
            in on the first one that is (`shared/notes/routing-results.md`).
    """
    # Preference term: -w (1 - p)^gamma log p, with log p = logsigmoid(x) and 1 - p = exp(logsigmoid(-x)).
    logits = _preference_logits(chosen_rewards, rejected_rewards, margin, bt_temperature)  # (B,)
    per_pair = -F.logsigmoid(logits)  # (B,)
    if focal_gamma != 0:
        per_pair = torch.exp(focal_gamma * F.logsigmoid(-logits)) * per_pair
    if pair_weights is not None:
        per_pair = pair_weights.float() * per_pair
    preference_loss = per_pair.mean()

    # Entropy floor: lambda * max(0, eta - H(pi))^2 over the chosen and the rejected rows.
    routing = torch.cat([chosen_routing, rejected_routing]).float()  # (2B, E)
    entropy = routing_entropy(routing)  # (2B,)
    if routing.shape[-1] > 1:
        shortfall = (entropy_floor - entropy).clamp_min(0.0)  # (2B,)
        floor_active = shortfall > 0
    else:
        shortfall = torch.zeros_like(entropy)
        floor_active = torch.zeros_like(entropy, dtype=torch.bool)
    entropy_penalty = entropy_floor_coef * shortfall.square().mean()
    loss = preference_loss + entropy_penalty if entropy_floor_coef != 0 else preference_loss

    expert_aux_loss = None
    if expert_aux_loss_coef != 0:
        if chosen_expert_scores is None or rejected_expert_scores is None:
            raise ValueError("`expert_aux_loss_coef` > 0 needs `chosen_expert_scores` and `rejected_expert_scores`.")
        expert_logits = _preference_logits(chosen_expert_scores, rejected_expert_scores, margin, bt_temperature)
        per_expert = -F.logsigmoid(expert_logits)  # (B, E)
        if pair_weights is not None:
            per_expert = pair_weights.float().unsqueeze(-1) * per_expert
        expert_aux_loss = per_expert.mean()
        loss = loss + expert_aux_loss_coef * expert_aux_loss

    return AdaJudgeLossOutput(
        loss=loss,
        preference_loss=preference_loss,
        entropy_penalty=entropy_penalty,
        expert_aux_loss=expert_aux_loss,
        routing_entropy=entropy,
        floor_active=floor_active,
    )


__all__ = [
    "STRENGTH_SCALINGS",
    "AdaJudgeLossOutput",
    "adajudge_loss",
    "preference_strength_scale",
    "preference_strength_weights",
    "routing_entropy",
]
