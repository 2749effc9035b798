"""Preference pairs shipped inside the package, so the demo and examples train on real data with no download.

The pairs are the HH-RLHF harmless-base test split (Anthropic, MIT) in TRL's conversational explicit-prompt format;
`data/README.md` next to the file gives the source, licence, conversion and counts.
"""

from importlib.resources import as_file, files

import datasets


EMBEDDED_PREFERENCES = "hh_rlhf_harmless.jsonl.gz"
SPLITS = ("train", "test")


def load_embedded_preferences(split: str = "train", eval_size: int = 500, seed: int = 0) -> datasets.Dataset:
    """Load the embedded HH-RLHF harmless pairs: `split="train"`, or `"test"` for the `eval_size` held-out pairs.

    The split is a seeded shuffle, so the same `(eval_size, seed)` always gives the same disjoint train / test pairs.
    Each row has `prompt` (the conversation so far), `chosen` and `rejected` (one assistant message each), ready for
    TRL's `RewardTrainer`.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: use 'train' or 'test' (the {eval_size} held-out pairs).")
    with as_file(files("adajudge_hf") / "data" / EMBEDDED_PREFERENCES) as path:
        if not path.is_file():
            raise OSError(
                f"The embedded preference data is missing from the installed package ({path}). Reinstall adajudge-hf "
                "(`pip install -e .` in a checkout), or regenerate it in a checkout with "
                "`python scripts/make_embedded_data.py <hh-rlhf>/harmless-base/test.jsonl.gz`."
            )
        pairs = datasets.load_dataset("json", data_files=str(path), split="train")
    if not 0 < eval_size < len(pairs):
        raise ValueError(
            f"eval_size must be between 1 and {len(pairs) - 1} (the embedded set has {len(pairs)} pairs)."
        )
    return pairs.train_test_split(test_size=eval_size, shuffle=True, seed=seed)[split]
