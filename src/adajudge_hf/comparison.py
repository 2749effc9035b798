"""Comparing judges honestly: intervals that count both the test items and the training seeds.

A difference between two judges trained over several seeds varies for two reasons: which held-out items were drawn,
and how each training run happened to go (initialisation, shuffling, the validation split). A bootstrap over items
alone ignores the second, which at small scale is often the larger. `hierarchical_bootstrap` resamples both: seeds
with replacement, then items with replacement, the same draws for both judges (paired).
"""

from collections.abc import Sequence

import torch


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
    per_seed = difference[:, item_draws].mean(-1)  # (S, R): each seed's mean over the resampled items
    means = per_seed.gather(0, seed_draws.T).mean(0)  # (R,): over the resampled seeds
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return difference.mean().item(), low, high


__all__ = ["hierarchical_bootstrap"]
