"""RewardBench 2 and RewardBench (v1): the official scores from per-completion rewards, and the official data.

The rules follow allenai/reward-bench (https://github.com/allenai/reward-bench) line by line; each function names the
file it follows. As everywhere in `adajudge_hf.evaluation`, scores are percentages in [0, 100] (the official scripts
write fractions that the leaderboard shows multiplied by 100).

- RewardBench 2 (`allenai/reward-bench-2`, split `test`): one row per prompt with `chosen` (the correct completions)
  and `rejected` lists; every completion is scored on its own. Five subsets are best-of-N (one correct completion
  against three wrong ones); Ties has prompts with several correct answers, scored by a weighted formula.
- RewardBench (`allenai/reward-bench`, split `filtered`): one chosen / rejected pair per row in 23 subsets, grouped
  into the four leaderboard sections Chat, Chat Hard, Safety and Reasoning.

The data are not shipped: the loaders read them from the Hub by their official names, or from local copies in the
official layout (a .parquet / .json / .jsonl file, optionally .gz, or a folder of them, e.g. a snapshot of the Hub
repository).
"""

import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import datasets

from .data import SUPPORTED_SUFFIXES, data_suffix, is_local_data, load_hub_split, read_records, require_fields
from .metrics import finite_score, item_field


REWARD_BENCH_2_HUB_ID = "allenai/reward-bench-2"
REWARD_BENCH_HUB_ID = "allenai/reward-bench"

REWARD_BENCH_2_SUBSETS = ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties")
"""RewardBench 2 subsets, in leaderboard order; the leaderboard score is their unweighted mean."""
TIES = "Ties"

REWARD_BENCH_SECTIONS = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": (
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ),
    "Safety": (
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
"""RewardBench sections and their subsets (`SUBSET_MAPPING` of `rewardbench/constants.py`)."""

REWARD_BENCH_EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "math-prm": 984,  # 447 prompts, weighted as much as the six code subsets together
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154,
    "xstest-should-respond": 250,
    "donotanswer": 136,
    **{f"hep-{language}": 164 for language in ("cpp", "go", "java", "js", "python", "rust")},
}
"""Weight of each subset inside its section (`EXAMPLE_COUNTS` of `rewardbench/constants.py`): fixed numbers, so a
section score does not depend on how many prompts of a subset were scored (`--limit`)."""

REWARD_BENCH_SUBSETS = tuple(subset for subsets in REWARD_BENCH_SECTIONS.values() for subset in subsets)

_TIES_ID = re.compile(r"(ref|tied):(\d+)")


def _subset(item: Mapping, position: int, known: Sequence[str], benchmark: str) -> str:
    subset = item_field(item, "subset", position)
    if subset not in known:
        raise ValueError(f"Item {position} has unknown {benchmark} subset {subset!r}; expected one of {list(known)}.")
    return subset


def _check_unique(seen: set, key: tuple, benchmark: str) -> None:
    if key in seen:
        raise ValueError(
            f"{benchmark} item (subset {key[0]!r}, id {key[1]!r}) appears twice; items are keyed by (subset, id): "
            "remove the duplicate."
        )
    seen.add(key)


def best_of_n_result(scores: Sequence[float]) -> float:
    """Credit of one best-of-N prompt whose correct completion is `scores[0]`: 1/k when it shares the top score with
    k completions (itself included), else 0 (`reroll_and_score_dataset` in `rewardbench/utils.py`)."""
    top = max(scores)
    return 1.0 / sum(score == top for score in scores) if scores[0] == top else 0.0


def _ties_prompt(scores: Sequence[float], num_correct: int) -> tuple[bool, float, float]:
    """(accurate, spread among the correct answers, margin of the worst correct over the best wrong) of one Ties
    prompt (`_compute_prompt_stats` in `rewardbench/utils.py`)."""
    correct, wrong = scores[:num_correct], scores[num_correct:]
    margin = min(correct) - max(wrong)
    return margin > 0, max(correct) - min(correct), margin


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def ties_score(prompts: Mapping[tuple[str, int], tuple[Sequence[float], int]]) -> dict:
    """The Ties score, as `process_single_model` in `rewardbench/utils.py` computes it (in %).

    `prompts` maps `("ref" | "tied", n)` to `(scores, num_correct)`. Reference prompts have one correct answer, tied
    prompts several. The score is 0.30 tied accuracy + 0.30 reference accuracy (a prompt is accurate when every
    correct answer outscores every wrong one) + 0.20 `correctness_preferred` (share of tied prompts whose
    correct-over-wrong margin exceeds the spread among their correct answers) + 0.20 `correctness_preferred_hard` (the
    same with the smaller of the tied and reference margins) + 0.01 `margin_score` (mean of
    tanh(smaller margin / spread - 1); with 0 spread that is +1, -1 or 0 as the margin is positive, negative or 0).
    The margin terms use the prompts n that have both a `ref:n` and a `tied:n` row; unpaired rows count in the
    accuracies only.
    """
    stats = {key: _ties_prompt(*value) for key, value in prompts.items()}
    ref = {n: value for (kind, n), value in stats.items() if kind == "ref"}
    tied = {n: value for (kind, n), value in stats.items() if kind == "tied"}
    pairs = sorted(set(ref) & set(tied))
    if not pairs:
        raise ValueError(
            "The Ties subset has no prompt n with both a `ref:n` and a `tied:n` row, so its margin terms are "
            "undefined (the official script returns NaN); score whole Ties prompts (both rows)."
        )
    preferred, preferred_hard, margin_terms = [], [], []
    for n in pairs:
        _, spread, tied_margin = tied[n]
        hard_margin = min(ref[n][2], tied_margin)
        preferred.append(tied_margin > spread)
        preferred_hard.append(hard_margin > spread)
        if spread > 0:
            margin_terms.append(math.tanh(hard_margin / spread - 1))
        else:  # margin / 0 is +-inf (tanh -> +-1), or NaN for 0 / 0, which the official code maps to 0
            margin_terms.append(math.copysign(1.0, hard_margin) if hard_margin else 0.0)
    parts = {
        "tied_accuracy": _mean([value[0] for value in tied.values()]) if tied else 0.0,
        "ref_accuracy": _mean([value[0] for value in ref.values()]) if ref else 0.0,
        "correctness_preferred": _mean(preferred),
        "correctness_preferred_hard": _mean(preferred_hard),
        "margin_score": _mean(margin_terms),
    }
    weights = {
        "tied_accuracy": 0.30,
        "ref_accuracy": 0.30,
        "correctness_preferred": 0.20,
        "correctness_preferred_hard": 0.20,
        "margin_score": 0.01,
    }
    return {
        "score": 100.0 * sum(weights[name] * parts[name] for name in weights),
        **{name: 100.0 * value for name, value in parts.items()},
        "num_pairs": len(pairs),
    }


def reward_bench_2_scores(items: Iterable[Mapping]) -> dict:
    """RewardBench 2 score per subset and overall, as `scripts/run_v2.py` of allenai/reward-bench computes it.

    Each item is one prompt: `{"subset", "id", "scores", "num_correct"}`, the rewards of its completions in dataset
    order (`chosen` then `rejected`: the first `num_correct` are correct), as in the official result files. Items are
    keyed by (subset, id); a repeated key is an error.

    - Factuality, Precise IF, Math, Safety, Focus: best of N with one correct completion. A prompt earns 1 when its
      correct completion has the strictly highest reward, 1/k when it shares the top reward with k completions in all
      (itself included), else 0 (`reroll_and_score_dataset`, `rewardbench/utils.py`); the subset score is the mean.
    - Ties: ids `ref:<n>` / `tied:<n>`, scored by `ties_score` (`process_single_model`, `rewardbench/utils.py`).

    `overall` is the unweighted mean over the subsets present, as on the leaderboard (which needs all six);
    `subsets_scored` / `subsets_missing` say which those are.

    Returns `{"overall", "num_prompts", "subsets_scored", "subsets_missing", "subsets": {subset: {"score",
    "num_prompts"}}}`; the Ties entry also holds the terms of its formula.
    """
    results: dict[str, list[float]] = {}
    ties: dict[tuple[str, int], tuple[list[float], int]] = {}
    seen: set = set()
    for position, item in enumerate(items):
        subset = _subset(item, position, REWARD_BENCH_2_SUBSETS, "RewardBench 2")
        item_id = item_field(item, "id", position)
        _check_unique(seen, (subset, item_id), "RewardBench 2")
        what = f"RewardBench 2 item (subset {subset!r}, id {item_id!r})"
        scores = [finite_score(value, f"A reward of {what}") for value in item_field(item, "scores", position)]
        num_correct = item_field(item, "num_correct", position)
        if not (isinstance(num_correct, numbers.Integral) and 1 <= num_correct < len(scores)):
            raise ValueError(
                f"{what} has num_correct={num_correct!r} with {len(scores)} scores; it needs 1 <= num_correct < "
                "number of scores (at least one correct and one wrong completion)."
            )
        num_correct = int(num_correct)
        if subset != TIES:
            if num_correct != 1:
                raise ValueError(
                    f"{what} has num_correct={num_correct}; outside Ties a RewardBench 2 prompt has exactly one "
                    "correct completion (best of N)."
                )
            results.setdefault(subset, []).append(best_of_n_result(scores))
            continue
        match = _TIES_ID.fullmatch(str(item_id))
        if match is None:
            raise ValueError(f"{what}: Ties ids are `ref:<n>` or `tied:<n>`, as in the official data.")
        kind, number = match[1], int(match[2])
        if (kind, number) in ties:
            raise ValueError(f"{what} repeats Ties prompt {kind}:{number}; remove the duplicate.")
        if kind == "tied" and num_correct < 2:
            raise ValueError(f"{what} is a tied prompt with num_correct={num_correct}; tied prompts have >= 2.")
        ties[kind, number] = (scores, num_correct)
    if not results and not ties:
        raise ValueError("No RewardBench 2 items to score.")

    subsets = {}
    for subset in REWARD_BENCH_2_SUBSETS:
        if subset == TIES and ties:
            subsets[subset] = {"num_prompts": len(ties), **ties_score(ties)}
        elif subset in results:
            subsets[subset] = {"score": 100.0 * _mean(results[subset]), "num_prompts": len(results[subset])}
    return {
        "overall": _mean([values["score"] for values in subsets.values()]),
        "num_prompts": sum(values["num_prompts"] for values in subsets.values()),
        "subsets_scored": list(subsets),
        "subsets_missing": [subset for subset in REWARD_BENCH_2_SUBSETS if subset not in subsets],
        "subsets": subsets,
    }


def reward_bench_scores(items: Iterable[Mapping]) -> dict:
    """RewardBench (v1) accuracy per subset and section, and the leaderboard score, as allenai/reward-bench does it.

    Each item is one pair: `{"subset", "id", "score_chosen", "score_rejected"}`; items are keyed by (subset, id).

    - Subset accuracy: % of pairs with `score_chosen > score_rejected` (strict: a tie is wrong; `scripts/run_rm.py`).
    - Section score (Chat, Chat Hard, Safety, Reasoning): mean of its subsets' accuracies weighted by the fixed
      `REWARD_BENCH_EXAMPLE_COUNTS` (`calculate_scores_per_section`, `rewardbench/utils.py`, with `EXAMPLE_COUNTS` and
      `SUBSET_MAPPING` of `rewardbench/constants.py`), over the subsets present.
    - `overall`: the unweighted mean of the sections, the leaderboard's score (`analysis/get_benchmark_results.py`
      weighs the four sections equally; the optional prior preference sets are a different dataset).

    A section with none of its subsets present is left out of `overall` and named in `sections_missing` (the official
    helper would score it 0); `subsets_missing` names the absent subsets.

    Returns `{"overall", "num_pairs", "sections_scored", "sections_missing", "subsets_missing", "sections": {section:
    {"score", "num_pairs"}}, "subsets": {subset: {"accuracy", "num_pairs"}}}`.
    """
    wins: dict[str, int] = {}
    totals: dict[str, int] = {}
    seen: set = set()
    for position, item in enumerate(items):
        subset = _subset(item, position, REWARD_BENCH_SUBSETS, "RewardBench")
        item_id = item_field(item, "id", position)
        _check_unique(seen, (subset, item_id), "RewardBench")
        what = f"of RewardBench item (subset {subset!r}, id {item_id!r})"
        chosen = finite_score(item_field(item, "score_chosen", position), f"`score_chosen` {what}")
        rejected = finite_score(item_field(item, "score_rejected", position), f"`score_rejected` {what}")
        wins[subset] = wins.get(subset, 0) + (chosen > rejected)
        totals[subset] = totals.get(subset, 0) + 1
    if not totals:
        raise ValueError("No RewardBench pairs to score.")

    subsets = {
        subset: {"accuracy": 100.0 * wins[subset] / totals[subset], "num_pairs": totals[subset]}
        for subset in REWARD_BENCH_SUBSETS
        if subset in totals
    }
    sections = {}
    for section, members in REWARD_BENCH_SECTIONS.items():
        present = [subset for subset in members if subset in subsets]
        if present:
            weights = [REWARD_BENCH_EXAMPLE_COUNTS[subset] for subset in present]
            weighted = sum(subsets[subset]["accuracy"] * w for subset, w in zip(present, weights))
            sections[section] = {
                "score": weighted / sum(weights),
                "num_pairs": sum(totals[subset] for subset in present),
            }
    return {
        "overall": _mean([values["score"] for values in sections.values()]),
        "num_pairs": sum(totals.values()),
        "sections_scored": list(sections),
        "sections_missing": [section for section in REWARD_BENCH_SECTIONS if section not in sections],
        "subsets_missing": [subset for subset in REWARD_BENCH_SUBSETS if subset not in subsets],
        "sections": sections,
        "subsets": subsets,
    }


def _read_official(data: str | os.PathLike, split: str, what: str) -> tuple[list[dict], str]:
    """Rows of a Hub dataset (`split`), a local file, or a folder holding the split's files as the Hub names them
    (`<split>-00000-of-00001.parquet`, e.g. a snapshot of the dataset repository)."""
    if not is_local_data(data):
        return load_hub_split(str(data), split), f"{data} (split {split})"
    path = Path(data)
    if not path.is_dir():
        return read_records(path), str(path)
    files = sorted(
        file
        for file in path.rglob(f"{split}*")
        if file.is_file()
        and data_suffix(file) in SUPPORTED_SUFFIXES
        and re.match(rf"{re.escape(split)}[-.]", file.name)
    )
    if not files:
        raise ValueError(
            f"{path} holds no {what} files of split {split!r} (named like {split}-00000-of-00001.parquet, as on the "
            "Hub); pass the file itself, or the folder of a snapshot of the dataset repository."
        )
    return [row for file in files for row in read_records(file)], str(path)


def _is_text_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(text, str) for text in value)


def load_reward_bench_2(data: str | os.PathLike = REWARD_BENCH_2_HUB_ID, split: str = "test") -> datasets.Dataset:
    """RewardBench 2 prompts from the Hub or a local copy in the official layout.

    Columns: `subset`, `id` (a string, `ref:<n>` / `tied:<n>` in Ties), `prompt`, `chosen` (the `num_correct`
    correct completions), `rejected` (the wrong ones), `num_correct`. Every completion is scored once, in the order
    chosen then rejected, as `scripts/run_v2.py` unrolls them.
    """
    rows, source = _read_official(data, split, "RewardBench 2")
    require_fields(
        rows, ("id", "prompt", "chosen", "rejected", "num_correct", "subset"), source, "RewardBench 2 prompts"
    )
    items = []
    for position, row in enumerate(rows):
        where = f"Row {position} of {source} (id {row['id']!r})"
        if row["subset"] not in REWARD_BENCH_2_SUBSETS:
            raise ValueError(
                f"{where} has unknown subset {row['subset']!r}; expected one of {REWARD_BENCH_2_SUBSETS}."
            )
        if not (isinstance(row["prompt"], str) and _is_text_list(row["chosen"]) and _is_text_list(row["rejected"])):
            raise ValueError(f"{where}: `prompt` must be a string and `chosen` / `rejected` lists of strings.")
        if row["num_correct"] != len(row["chosen"]) or not row["chosen"] or not row["rejected"]:
            raise ValueError(
                f"{where} has num_correct={row['num_correct']} with {len(row['chosen'])} chosen and "
                f"{len(row['rejected'])} rejected completions; num_correct must be the number of chosen ones, and "
                "both lists non-empty."
            )
        if row["subset"] == TIES and not _TIES_ID.fullmatch(str(row["id"])):
            raise ValueError(f"{where}: Ties ids are `ref:<n>` or `tied:<n>`, as in the official data.")
        if row["subset"] != TIES and len(row["chosen"]) != 1:
            raise ValueError(f"{where} has {len(row['chosen'])} chosen completions; outside Ties it has exactly one.")
        items.append(
            {
                "subset": row["subset"],
                "id": str(row["id"]),
                "prompt": row["prompt"],
                "chosen": row["chosen"],
                "rejected": row["rejected"],
                "num_correct": int(row["num_correct"]),
            }
        )
    return datasets.Dataset.from_list(items)


def load_reward_bench(data: str | os.PathLike = REWARD_BENCH_HUB_ID, split: str = "filtered") -> datasets.Dataset:
    """RewardBench (v1) pairs from the Hub (split `filtered`, the one `scripts/run_rm.py` scores) or a local copy.

    Columns: `subset`, `id`, `prompt`, `chosen`, `rejected` (strings).
    """
    rows, source = _read_official(data, split, "RewardBench")
    require_fields(rows, ("id", "prompt", "chosen", "rejected", "subset"), source, "RewardBench pairs")
    items = []
    for position, row in enumerate(rows):
        where = f"Row {position} of {source} (id {row['id']!r})"
        if row["subset"] not in REWARD_BENCH_SUBSETS:
            raise ValueError(
                f"{where} has subset {row['subset']!r}, which is not one of the 23 scored subsets of the `filtered` "
                f"split: {list(REWARD_BENCH_SUBSETS)}."
            )
        if not all(isinstance(row[key], str) for key in ("prompt", "chosen", "rejected")):
            raise ValueError(f"{where}: `prompt`, `chosen` and `rejected` must be strings.")
        items.append({key: row[key] for key in ("subset", "id", "prompt", "chosen", "rejected")})
    return datasets.Dataset.from_list(items)


def limit_reward_bench(dataset: datasets.Dataset, limit: int) -> datasets.Dataset:
    """The first `limit` prompts of each subset; in Ties the first `limit` prompt numbers, each with both its `ref:`
    and `tied:` rows, so the Ties score stays defined."""
    counts: dict[str, set] = {}
    keep = []
    for index, (subset, item_id) in enumerate(zip(dataset["subset"], dataset["id"])):
        match = _TIES_ID.fullmatch(str(item_id)) if subset == TIES else None
        key = match[2] if match else item_id
        seen = counts.setdefault(subset, set())
        if key in seen or len(seen) < limit:
            seen.add(key)
            keep.append(index)
    return dataset.select(keep)


def reward_bench_2_summary(metrics: dict) -> list[str]:
    """Headline lines of a RewardBench 2 report."""
    subsets = ", ".join(f"{name} {values['score']:.1f}" for name, values in metrics["subsets"].items())
    lines = [
        f"RewardBench 2 overall {metrics['overall']:.1f} over {len(metrics['subsets'])} subset(s) "
        f"({metrics['num_prompts']} prompts): {subsets}"
    ]
    if metrics["subsets_missing"]:
        lines.append(f"not scored (absent from the data): {', '.join(metrics['subsets_missing'])}")
    return lines


def reward_bench_summary(metrics: dict) -> list[str]:
    """Headline lines of a RewardBench report."""
    sections = ", ".join(f"{name} {values['score']:.1f}" for name, values in metrics["sections"].items())
    lines = [f"RewardBench overall {metrics['overall']:.1f} on {metrics['num_pairs']} pairs: {sections}"]
    if metrics["subsets_missing"]:
        lines.append(f"subsets absent from the data: {', '.join(metrics['subsets_missing'])}")
    return lines


def _card_table(metrics: dict, groups: dict, total: int, unit: str, what: str) -> tuple[list, list, str, str | None]:
    rows = [[name, f"{values['score']:.1f}", values[f"num_{unit}"]] for name, values in groups.items()]
    rows.append(["**overall**", f"**{metrics['overall']:.1f}**", total])
    note = None
    if metrics["subsets_missing"]:
        note = (
            f"Not scored: the subset(s) {', '.join(metrics['subsets_missing'])} (absent from the data), so the "
            "overall is not the leaderboard's score."
        )
    return [what, "score", unit], rows, f"{total} {unit}", note


def reward_bench_2_card_table(metrics: dict) -> tuple[list, list, str, str | None]:
    """(header, rows, size, note) of the model-card table of a RewardBench 2 evaluation: one row per subset."""
    return _card_table(metrics, metrics["subsets"], metrics["num_prompts"], "prompts", "subset")


def reward_bench_card_table(metrics: dict) -> tuple[list, list, str, str | None]:
    """(header, rows, size, note) of the model-card table of a RewardBench evaluation: one row per section."""
    return _card_table(metrics, metrics["sections"], metrics["num_pairs"], "pairs", "section")


def _card_results(metrics: dict, groups: dict, num_subsets: int) -> list[tuple[str, float]]:
    missing = len(metrics["subsets_missing"])
    overall = f"Score ({num_subsets - missing} of {num_subsets} subsets)" if missing else "Score"
    return [(overall, metrics["overall"])] + [(name, values["score"]) for name, values in groups.items()]


def reward_bench_2_card_results(metrics: dict) -> list[tuple[str, float]]:
    """(metric name, value) pairs for the model card's `model-index`: `Score` (the leaderboard's; `Score (n of N
    subsets)` when some subsets are absent), then one entry per subset under its official name."""
    return _card_results(metrics, metrics["subsets"], len(REWARD_BENCH_2_SUBSETS))


def reward_bench_card_results(metrics: dict) -> list[tuple[str, float]]:
    """(metric name, value) pairs for the model card's `model-index`: `Score` (as for RewardBench 2), then one entry
    per section under its official name."""
    return _card_results(metrics, metrics["sections"], len(REWARD_BENCH_SUBSETS))
