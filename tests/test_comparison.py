"""The hierarchical bootstrap: intervals that widen with seed-to-seed disagreement, not only with item noise."""

import pytest
import torch

from adajudge_hf.comparison import hierarchical_bootstrap


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
