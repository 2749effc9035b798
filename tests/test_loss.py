"""The AdaJudge objective: hand-computed values, TRL equivalence, numerical stability, pair weights, aux loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from adajudge_hf.loss import adajudge_loss, preference_strength_scale, preference_strength_weights, routing_entropy


CHOSEN = [1.5, -0.3, 0.2, 2.0]
REJECTED = [0.5, 0.4, 0.2, -1.0]
MARGIN = [0.0, 0.5, -0.25, 1.0]
# Routing weights of the chosen rows, then of the rejected rows: confident rows fall below eta, flat rows do not.
PI_CHOSEN = [[0.90, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1], [0.98, 0.01, 0.01]]
PI_REJECTED = [[0.5, 0.25, 0.25], [0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.2, 0.2, 0.6]]


def hand_loss(gamma, lam, eta, tau=1.0, weights=None, margin=None):
    """The METHOD.md formula, term by term, in float64 Python arithmetic."""
    terms = []
    for i, (rc, rr) in enumerate(zip(CHOSEN, REJECTED)):
        x = (rc - rr - (margin[i] if margin else 0.0)) / tau
        p = 1 / (1 + math.exp(-x))
        terms.append(-(weights[i] if weights else 1.0) * (1 - p) ** gamma * math.log(p))
    entropies = [-sum(w * math.log(w) for w in row) for row in PI_CHOSEN + PI_REJECTED]
    floor = sum(max(0.0, eta - h) ** 2 for h in entropies) / len(entropies)
    return sum(terms) / len(terms) + lam * floor


def torch_loss(**kwargs):
    margin = kwargs.pop("margin", None)
    weights = kwargs.pop("weights", None)
    return adajudge_loss(
        torch.tensor(CHOSEN),
        torch.tensor(REJECTED),
        torch.tensor(PI_CHOSEN),
        torch.tensor(PI_REJECTED),
        margin=None if margin is None else torch.tensor(margin),
        pair_weights=None if weights is None else torch.tensor(weights),
        **kwargs,
    )


@pytest.mark.parametrize(
    "gamma, lam, eta, tau, weights, margin",
    [
        (0.0, 0.0, 0.5, 1.0, None, None),
        (2.0, 0.0, 0.5, 1.0, None, None),
        (2.0, 0.1, 0.5, 1.0, None, None),
        (1.0, 1.0, 1.0, 2.0, [0.5, 1.5, 1.0, 1.0], MARGIN),
        (0.5, 0.3, 0.8, 0.7, [2.0, 0.0, 1.0, 1.0], None),
    ],
)
def test_loss_matches_hand_computation(gamma, lam, eta, tau, weights, margin):
    result = torch_loss(
        bt_temperature=tau,
        focal_gamma=gamma,
        entropy_floor=eta,
        entropy_floor_coef=lam,
        weights=weights,
        margin=margin,
    )
    assert result.loss.dtype == torch.float32
    assert result.loss.item() == pytest.approx(hand_loss(gamma, lam, eta, tau, weights, margin), rel=1e-5)
    entropies = [-sum(w * math.log(w) for w in row) for row in PI_CHOSEN + PI_REJECTED]
    torch.testing.assert_close(result.routing_entropy, torch.tensor(entropies), rtol=1e-5, atol=1e-6)
    assert result.floor_active.tolist() == [h < eta for h in entropies]


@pytest.mark.parametrize("margin", [None, MARGIN])
def test_gamma_zero_lambda_zero_is_exactly_trls_loss(margin):
    rewards_chosen, rewards_rejected = torch.randn(16, generator=torch.Generator().manual_seed(0)).chunk(2)
    routing = torch.softmax(torch.randn(16, 3), -1)
    margin_tensor = None if margin is None else torch.tensor(margin * 2)
    result = adajudge_loss(
        rewards_chosen,
        rewards_rejected,
        *routing.chunk(2),
        margin=margin_tensor,
        bt_temperature=1.0,
        focal_gamma=0.0,
        entropy_floor=0.5,
        entropy_floor_coef=0.0,
    )
    # trl/trainer/reward_trainer.py, RewardTrainer.compute_loss
    if margin_tensor is None:
        trl_loss = -F.logsigmoid(rewards_chosen - rewards_rejected).mean()
    else:
        trl_loss = -F.logsigmoid(rewards_chosen - rewards_rejected - margin_tensor).mean()
    assert torch.equal(result.loss, trl_loss)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_extreme_reward_gaps_give_finite_losses_and_gradients(dtype, gamma):
    gaps = [-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4]
    chosen = torch.tensor(gaps, dtype=dtype, requires_grad=True)
    rejected = torch.zeros(len(gaps), dtype=dtype)
    logits = torch.zeros(2 * len(gaps), 3, requires_grad=True)
    routing = logits.softmax(-1)
    kwargs = dict(bt_temperature=1.0, focal_gamma=gamma, entropy_floor=0.5, entropy_floor_coef=0.1)
    result = adajudge_loss(chosen, rejected, *routing.chunk(2), **kwargs)
    result.loss.backward()
    assert torch.isfinite(result.loss) and torch.isfinite(chosen.grad).all() and torch.isfinite(logits.grad).all()

    # Per pair, against a float64 reference: -(1 - p)^gamma log p.
    no_floor = {**kwargs, "entropy_floor_coef": 0.0}
    pair_routing = torch.full((1, 3), 1 / 3)
    per_pair = [
        adajudge_loss(
            chosen[i : i + 1].detach(), rejected[i : i + 1], pair_routing, pair_routing, **no_floor
        ).loss.item()
        for i in range(len(gaps))
    ]
    x = torch.tensor(gaps, dtype=torch.float64).to(dtype).double()
    reference = -torch.exp(gamma * F.logsigmoid(-x)) * F.logsigmoid(x)
    torch.testing.assert_close(torch.tensor(per_pair, dtype=torch.float64), reference, rtol=1e-6, atol=1e-6)
    assert all(a >= b for a, b in zip(per_pair, per_pair[1:])), "the loss must not increase with the reward gap"


def test_pair_weights_are_sqrt_scaled_and_normalised_to_mean_one():
    weights = preference_strength_weights(torch.tensor([1.0, 4.0, 9.0, 0.0]))
    torch.testing.assert_close(weights, torch.tensor([1.0, 2.0, 3.0, 0.0]) / 1.5)
    assert weights.mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(
        preference_strength_weights(torch.tensor([1.0, 3.0]), "linear"), torch.tensor([0.5, 1.5])
    )
    assert preference_strength_weights(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]  # no preference, no gradient
    with pytest.raises(ValueError, match=">= 0"):
        preference_strength_weights(torch.tensor([1.0, -2.0]))
    with pytest.raises(ValueError, match="scaling"):
        preference_strength_weights(torch.tensor([1.0]), "log")


def test_a_dataset_level_scale_makes_a_pairs_weight_independent_of_its_batch():
    strengths = torch.tensor([1.0, 9.0, 4.0, 16.0])  # sqrt: 1, 3, 2, 4
    scale = preference_strength_scale(strengths)
    assert scale == pytest.approx(2.5) and preference_strength_scale(strengths, "linear") == pytest.approx(7.5)
    whole = preference_strength_weights(strengths, scale=scale)
    torch.testing.assert_close(whole, torch.tensor([0.4, 1.2, 0.8, 1.6]))
    assert whole.mean().item() == pytest.approx(1.0)  # mean 1 over the set, as METHOD.md asks
    one_at_a_time = torch.cat([preference_strength_weights(s[None], scale=scale) for s in strengths])
    torch.testing.assert_close(one_at_a_time, whole)  # per-batch normalisation would give 1, 1, 1, 1
    with pytest.raises(ValueError, match="Every preference strength is 0"):
        preference_strength_scale(torch.zeros(3))


def test_uniform_pair_weights_leave_the_loss_unchanged():
    kwargs = dict(bt_temperature=1.0, focal_gamma=2.0, entropy_floor=0.5, entropy_floor_coef=0.1)
    unweighted = torch_loss(**kwargs).loss
    weighted = torch_loss(weights=preference_strength_weights(torch.full((4,), 2.0)).tolist(), **kwargs).loss
    torch.testing.assert_close(weighted, unweighted)


def test_entropy_floor_gradient_raises_the_entropy_of_a_collapsing_router():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)  # one confident row, one uniform
    routing = logits.softmax(-1)
    result = adajudge_loss(
        torch.zeros(1),
        torch.zeros(1),
        routing[:1],
        routing[1:],
        bt_temperature=1.0,
        focal_gamma=0.0,
        entropy_floor=0.9,
        entropy_floor_coef=1.0,
    )
    result.loss.backward()
    assert result.floor_active.tolist() == [True, False]
    stepped = (logits - 0.1 * logits.grad).softmax(-1)
    assert routing_entropy(stepped)[0] > routing_entropy(routing.detach())[0]
    assert logits.grad[1].abs().max() == 0  # rows above the floor are not pushed


def test_static_pooling_has_no_entropy_floor():
    result = adajudge_loss(
        torch.tensor([1.0, 0.0]),
        torch.tensor([0.0, 1.0]),
        torch.ones(2, 1),
        torch.ones(2, 1),
        bt_temperature=1.0,
        focal_gamma=0.0,
        entropy_floor=0.5,
        entropy_floor_coef=1.0,
    )
    assert not result.floor_active.any()
    torch.testing.assert_close(result.loss, -F.logsigmoid(torch.tensor([1.0, -1.0])).mean())


def test_expert_aux_loss_is_the_mean_per_expert_bradley_terry_loss():
    scores_chosen = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.5, 0.0]])
    scores_rejected = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    kwargs = dict(bt_temperature=1.0, focal_gamma=0.0, entropy_floor=0.5, entropy_floor_coef=0.0)
    routing = torch.full((2, 3), 1 / 3)
    base = adajudge_loss(torch.zeros(2), torch.zeros(2), routing, routing, **kwargs)
    assert base.expert_aux_loss is None
    with_aux = adajudge_loss(
        torch.zeros(2),
        torch.zeros(2),
        routing,
        routing,
        **kwargs,
        chosen_expert_scores=scores_chosen,
        rejected_expert_scores=scores_rejected,
        expert_aux_loss_coef=0.5,
    )
    deltas = (scores_chosen - scores_rejected).flatten().tolist()
    expected = sum(math.log1p(math.exp(-d)) for d in deltas) / len(deltas)
    assert with_aux.expert_aux_loss.item() == pytest.approx(expected, rel=1e-6)
    assert with_aux.loss.item() == pytest.approx(base.loss.item() + 0.5 * expected, rel=1e-6)
    with pytest.raises(ValueError, match="expert_scores"):
        adajudge_loss(torch.zeros(2), torch.zeros(2), routing, routing, **kwargs, expert_aux_loss_coef=0.5)
