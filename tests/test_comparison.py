"""Study tools: the hierarchical bootstrap and its p-value, Holm, the fixed-mixture baseline, routing information."""

import math

import pytest
import torch

from adajudge_hf.comparison import (
    FixedMixtureRouter,
    bootstrap_difference,
    hierarchical_bootstrap,
    holm_adjust,
    routing_mutual_information,
    use_fixed_mixture,
)


def test_a_judge_right_everywhere_beats_one_wrong_everywhere_with_certainty():
    assert hierarchical_bootstrap([[1.0] * 8] * 3, [[0.0] * 8] * 3) == (1.0, 1.0, 1.0)


def test_seeds_that_disagree_widen_the_interval_to_their_spread():
    # Seed 0: a beats b on every item; seed 1: b beats a on every item. Items alone show no noise at all, so an
    # item-only bootstrap would report 0 [0, 0]; resampling seeds must show that the sign is not resolved.
    a = torch.tensor([[1.0] * 50, [0.0] * 50])
    b = 1 - a
    diff, low, high = hierarchical_bootstrap(a, b, resamples=4000)
    assert diff == 0.0
    assert low == pytest.approx(-1.0) and high == pytest.approx(1.0)


def test_one_seed_reduces_to_the_paired_item_bootstrap():
    # Half the items favour a by one, half are ties: mean 0.5, standard error sqrt(0.25 / 400) = 0.025.
    a = torch.tensor([[1.0, 0.0] * 200])
    b = torch.zeros_like(a)
    diff, low, high = hierarchical_bootstrap(a, b, resamples=4000)
    assert diff == 0.5
    assert low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01) and high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)


def test_the_draws_are_paired_across_judges():
    # Identical judges differ by exactly 0 in every resample, whatever the item and seed noise.
    a = (torch.rand(4, 100, generator=torch.Generator().manual_seed(0)) < 0.6).float()
    assert hierarchical_bootstrap(a, a.clone()) == (0.0, 0.0, 0.0)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        hierarchical_bootstrap([[1.0, 0.0]], [[1.0, 0.0, 1.0]])


def test_p_value_is_small_for_a_clear_difference_and_large_for_none():
    generator = torch.Generator().manual_seed(0)
    a = (torch.rand(5, 800, generator=generator) < 0.70).double()
    b = (torch.rand(5, 800, generator=generator) < 0.55).double()
    clear = bootstrap_difference(a, b, resamples=2000)
    assert clear.p_value == pytest.approx(2 / 2001)  # no draw at or below 0: the smallest p the draws can give
    same = bootstrap_difference(a, a.flip(0), resamples=2000)  # the same judge, seeds in another order
    assert same.p_value > 0.5
    assert (clear.difference, clear.low, clear.high) == hierarchical_bootstrap(a, b, resamples=2000)


def test_holm_adjusts_step_down_and_keeps_the_input_order():
    # Sorted 0.01, 0.02, 0.03, 0.04 -> 4 x 0.01, 3 x 0.02, 2 x 0.03 (raised to 0.06 by monotonicity), 1 x 0.04.
    assert holm_adjust([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_fixed_mixture_weights_are_learned_but_the_same_for_every_input():
    from adajudge_hf import AdaJudgeConfig, AdaJudgeForRewardModeling
    from adajudge_hf.testing import make_tiny_backbone_config, make_tiny_tokenizer

    config = AdaJudgeConfig(text_config=make_tiny_backbone_config(make_tiny_tokenizer()), num_refinement_blocks=0)
    model = use_fixed_mixture(AdaJudgeForRewardModeling(config))
    assert isinstance(model.judge_head.pooling_router, FixedMixtureRouter)
    hidden = torch.randn(3, 12, config.hidden_size)
    segments = torch.tensor([[0] * 4 + [1] * 4 + [2] * 4] * 3)
    with torch.no_grad():
        model.judge_head.pooling_router.logits.copy_(torch.tensor([1.0, -0.5, 0.2]))
    out = model.score_hidden_states(hidden, segment_ids=segments)
    expected = torch.tensor([1.0, -0.5, 0.2]).softmax(-1)
    assert torch.allclose(out.routing_weights, expected.expand_as(out.routing_weights), atol=1e-6)
    out.logits.sum().backward()
    assert model.judge_head.pooling_router.logits.grad.abs().sum() > 0  # trained with the heads
    static = AdaJudgeForRewardModeling(AdaJudgeConfig(text_config=config.text_config, pooling="mean"))
    with pytest.raises(ValueError, match="pooling='adaptive'"):
        use_fixed_mixture(static)


def test_routing_mutual_information_is_zero_without_adaptation_and_the_domain_entropy_with_perfect_routing():
    labels = torch.tensor([0] * 10 + [1] * 30)
    constant = torch.tensor([[0.2, 0.5, 0.3]]).expand(40, 3)
    assert routing_mutual_information(constant, labels) == pytest.approx(0.0, abs=1e-12)
    perfect = torch.nn.functional.one_hot(labels, 3).double()
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert routing_mutual_information(perfect, labels) == pytest.approx(entropy)
    half = 0.5 * perfect + 0.5 * constant  # softer routing carries less information about the domain
    assert 0 < routing_mutual_information(half, labels) < entropy
