"""Official RM-Bench, JudgeBench and pairwise-accuracy metrics, computed from plain per-item rewards.

No model is needed: rewards from any reward model, or read from a file, give the numbers the leaderboards report.
Every accuracy is a percentage in [0, 100], as on the RM-Bench and JudgeBench leaderboards (RM-Bench's
`compute_accuracy` returns fractions that its leaderboard multiplies by 100; JudgeBench computes `100 * mean`).
Comparisons are strict: a tie between the two rewards counts as wrong, as in both official scorers.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist


RM_BENCH_DOMAINS = ("chat", "math", "code", "safety")
"""Scored RM-Bench domains, in leaderboard order; `overall` is their mean."""

RM_BENCH_SOURCE_DOMAINS = {
    "chat": "chat",
    "math": "math",
    "code": "code",
    "safety-refuse": "safety",
    "safety-response": "safety",
    "safety": "safety",
}
"""Domain names found in RM-Bench data, mapped to the scored domain (the two safety sets are pooled into one)."""

RM_BENCH_STYLES = ("concise", "detailed_plain", "detailed_markdown")
"""Order of the three responses in `chosen` / `rejected`, from plainest to fanciest."""

JUDGEBENCH_CATEGORIES = {
    "mmlu-pro": "knowledge",
    "livebench-reasoning": "reasoning",
    "livebench-math": "math",
    "livecodebench": "coding",
}
"""JudgeBench `source` prefix -> category, in leaderboard order."""

JUDGEBENCH_LABELS = ("A>B", "B>A")


def finite_score(value, what: str) -> float:
    """`value` as a float; NaN is a ValueError naming `what`."""
    score = float(value)
    if math.isnan(score):
        raise ValueError(f"{what} is NaN. A NaN reward means the model or the reward file is broken; fix it first.")
    return score


def item_field(item: Mapping, key: str, position: int):
    """`item[key]`; a ValueError naming the item and its fields when it has none."""
    try:
        return item[key]
    except KeyError:
        raise ValueError(f"Item {position} has no `{key}` field (it has {sorted(item)}).") from None


def rm_bench_domain(domain: str) -> str:
    """The scored domain of an RM-Bench item: `safety-refuse` and `safety-response` both count as `safety`."""
    try:
        return RM_BENCH_SOURCE_DOMAINS[domain]
    except KeyError:
        raise ValueError(
            f"Unknown RM-Bench domain {domain!r}; expected one of {sorted(RM_BENCH_SOURCE_DOMAINS)}."
        ) from None


def rm_bench_scores(items: Iterable[Mapping]) -> dict:
    """RM-Bench accuracy per domain and difficulty, exactly as the official `compute_accuracy` and leaderboard do.

    Each item is one prompt: `{"domain", "id", "score_chosen": [3 rewards], "score_rejected": [3 rewards]}` with the
    responses in `RM_BENCH_STYLES` order (the field names of the official result files). Items are keyed by
    `(domain, id)`, because ids repeat across domains; a repeated key is an error.

    Per scored domain, M[i][j] = % of prompts where chosen style i beats rejected style j (strict `>`);
    hard = mean of the upper triangle (i < j: a plainer correct answer against a fancier wrong one), normal = mean of
    the diagonal, easy = mean of the lower triangle, and the domain score is the mean of the three. The safety domain
    pools safety-refuse and safety-response prompts into one matrix. `overall`, `easy`, `normal` and `hard` are
    unweighted means over the domains present; `domains_scored` / `domains_missing` say which those are (the official
    overall needs all four; math is often unavailable offline).

    Returns `{"overall", "easy", "normal", "hard", "num_prompts", "domains_scored", "domains_missing",
    "domains": {domain: {"score", "easy", "normal", "hard", "num_prompts", "matrix"}}}`.
    """
    size = len(RM_BENCH_STYLES)
    wins: dict[str, list[list[int]]] = {}
    prompts: dict[str, int] = {}
    seen: set[tuple[str, object]] = set()
    for position, item in enumerate(items):
        source_domain, item_id = item_field(item, "domain", position), item_field(item, "id", position)
        if (source_domain, item_id) in seen:
            raise ValueError(
                f"RM-Bench item ({source_domain!r}, {item_id!r}) appears twice. Items are keyed by (domain, id); "
                "remove the duplicate (a folder holding both total_dataset.json and the per-domain files does this)."
            )
        seen.add((source_domain, item_id))
        domain = rm_bench_domain(source_domain)
        scores = {}
        for key in ("score_chosen", "score_rejected"):
            values = item_field(item, key, position)
            if len(values) != size:
                raise ValueError(
                    f"RM-Bench item ({source_domain!r}, {item_id!r}) has {len(values)} `{key}` values; it needs "
                    f"{size}, one per style {RM_BENCH_STYLES}."
                )
            scores[key] = [finite_score(v, f"`{key}` of item ({source_domain!r}, {item_id!r})") for v in values]
        matrix = wins.setdefault(domain, [[0] * size for _ in range(size)])
        for i, chosen in enumerate(scores["score_chosen"]):
            for j, rejected in enumerate(scores["score_rejected"]):
                matrix[i][j] += chosen > rejected
        prompts[domain] = prompts.get(domain, 0) + 1
    if not prompts:
        raise ValueError("No RM-Bench items to score.")

    pairs_per_triangle = size * (size - 1) / 2
    domains = {}
    for domain in RM_BENCH_DOMAINS:
        if domain not in prompts:
            continue
        accuracy = [[100.0 * count / prompts[domain] for count in row] for row in wins[domain]]
        hard = sum(accuracy[i][j] for i in range(size) for j in range(i + 1, size)) / pairs_per_triangle
        normal = sum(accuracy[i][i] for i in range(size)) / size
        easy = sum(accuracy[i][j] for i in range(size) for j in range(i)) / pairs_per_triangle
        domains[domain] = {
            "score": (easy + normal + hard) / 3,
            "easy": easy,
            "normal": normal,
            "hard": hard,
            "num_prompts": prompts[domain],
            "matrix": accuracy,
        }

    def mean_over_domains(key: str) -> float:
        return sum(scores[key] for scores in domains.values()) / len(domains)

    return {
        "overall": mean_over_domains("score"),
        "easy": mean_over_domains("easy"),
        "normal": mean_over_domains("normal"),
        "hard": mean_over_domains("hard"),
        "num_prompts": sum(prompts.values()),
        "domains_scored": list(domains),
        "domains_missing": [domain for domain in RM_BENCH_DOMAINS if domain not in domains],
        "domains": domains,
    }


def judgebench_category(source: str) -> str:
    """JudgeBench category of a pair from its `source` (e.g. `mmlu-pro-law` -> `knowledge`)."""
    for prefix, category in JUDGEBENCH_CATEGORIES.items():
        if source.startswith(prefix):
            return category
    raise ValueError(f"Unknown JudgeBench source {source!r}: it must start with one of {list(JUDGEBENCH_CATEGORIES)}.")


def judgebench_decision(score_a: float, score_b: float) -> str:
    """Reward-model verdict of JudgeBench's single game: "A>B" only if A's reward is strictly higher, else "B>A"."""
    return "A>B" if score_a > score_b else "B>A"


def judgebench_scores(items: Iterable[Mapping]) -> dict:
    """JudgeBench accuracy of a reward model, as JudgeBench's `run_judge.py --single_game` computes it.

    Each item is one pair: `{"source", "label", "score_A", "score_B"}` (and optionally `pair_id`, which must then be
    unique). The decision is "A>B" if `score_A > score_B` else "B>A" (a tie falls to "B>A"); a pair is correct when the
    decision equals `label`. Categories come from `source` (see `JUDGEBENCH_CATEGORIES`); `overall` is the
    micro-average over all pairs, not the mean of the categories.

    Returns `{"overall", "num_pairs", "categories": {category: {"accuracy", "num_pairs"}}}`.
    """
    correct: dict[str, int] = {}
    totals: dict[str, int] = {}
    seen: set = set()
    for position, item in enumerate(items):
        if "pair_id" in item:
            if item["pair_id"] in seen:
                raise ValueError(f"JudgeBench pair_id {item['pair_id']!r} appears twice; remove the duplicate.")
            seen.add(item["pair_id"])
        label = item_field(item, "label", position)
        if label not in JUDGEBENCH_LABELS:
            raise ValueError(f"Item {position} has label {label!r}; JudgeBench labels are {JUDGEBENCH_LABELS}.")
        category = judgebench_category(item_field(item, "source", position))
        decision = judgebench_decision(
            finite_score(item_field(item, "score_A", position), f"`score_A` of item {position}"),
            finite_score(item_field(item, "score_B", position), f"`score_B` of item {position}"),
        )
        correct[category] = correct.get(category, 0) + (decision == label)
        totals[category] = totals.get(category, 0) + 1
    if not totals:
        raise ValueError("No JudgeBench pairs to score.")
    categories = {
        category: {"accuracy": 100.0 * correct[category] / totals[category], "num_pairs": totals[category]}
        for category in JUDGEBENCH_CATEGORIES.values()
        if category in totals
    }
    return {
        "overall": 100.0 * sum(correct.values()) / sum(totals.values()),
        "num_pairs": sum(totals.values()),
        "categories": categories,
    }


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion, as fractions; unlike the normal approximation it stays in
    [0, 1] and keeps its coverage near 0 % and 100 % accuracy and for small sets."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / total
    denominator = 1 + z * z / total
    center = (p + z * z / (2 * total)) / denominator
    half_width = z / denominator * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, center - half_width), min(1.0, center + half_width)


def pairwise_accuracy(
    chosen_rewards: Sequence[float], rejected_rewards: Sequence[float], confidence: float = 0.95
) -> dict:
    """Accuracy on preference pairs: % of pairs whose chosen reward is strictly higher, with a Wilson interval.

    Ties count as wrong (RewardBench's rule). Returns `{"accuracy", "ci_low", "ci_high", "confidence", "num_pairs",
    "num_ties", "mean_margin"}`, where the interval bounds are percentages and `mean_margin` is the mean of
    chosen - rejected.
    """
    if len(chosen_rewards) != len(rejected_rewards):
        raise ValueError(
            f"Got {len(chosen_rewards)} chosen rewards but {len(rejected_rewards)} rejected rewards; they must pair up."
        )
    if not chosen_rewards:
        raise ValueError("No preference pairs to score.")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), e.g. 0.95; got {confidence}.")
    chosen = [finite_score(v, f"chosen reward {i}") for i, v in enumerate(chosen_rewards)]
    rejected = [finite_score(v, f"rejected reward {i}") for i, v in enumerate(rejected_rewards)]
    wins = sum(c > r for c, r in zip(chosen, rejected))
    low, high = wilson_interval(wins, len(chosen), confidence)
    return {
        "accuracy": 100.0 * wins / len(chosen),
        "ci_low": 100.0 * low,
        "ci_high": 100.0 * high,
        "confidence": confidence,
        "num_pairs": len(chosen),
        "num_ties": sum(c == r for c, r in zip(chosen, rejected)),
        "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / len(chosen),
    }
