"""The benchmarks `adajudge evaluate` scores, one `Benchmark` description each, in the `BENCHMARKS` registry.

A `Benchmark` says everything that differs between benchmarks: how its data loads, which responses of an item are
scored and what a `rewards.jsonl` line holds, its official metric, how items group (for `--limit` and the routing
report), its summary lines, and its model-card table and `model-index` entries. The CLI's `--benchmark` choices,
`load_benchmark`, `report.evaluate_model` and `hub.cards` read it from here and hold no per-benchmark code, so adding a
benchmark is one `register_benchmark(Benchmark(...))`: the entries below, or the test-only one of
`tests/test_evaluation_cli.py::test_a_benchmark_registered_as_one_entry_runs_end_to_end`.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

from .data import (
    JUDGEBENCH_HUB_ID,
    RM_BENCH_HUB_ID,
    judgebench_split,
    load_judgebench,
    load_preference_pairs,
    load_rm_bench,
)
from .metrics import (
    JUDGEBENCH_CATEGORIES,
    RM_BENCH_DOMAINS,
    judgebench_decision,
    judgebench_scores,
    pairwise_accuracy,
    rm_bench_domain,
    rm_bench_scores,
)
from .reward_bench import (
    REWARD_BENCH_2_HUB_ID,
    REWARD_BENCH_2_SUBSETS,
    REWARD_BENCH_HUB_ID,
    REWARD_BENCH_SUBSETS,
    limit_reward_bench,
    load_reward_bench,
    load_reward_bench_2,
    reward_bench_2_card_results,
    reward_bench_2_card_table,
    reward_bench_2_scores,
    reward_bench_2_summary,
    reward_bench_card_results,
    reward_bench_card_table,
    reward_bench_scores,
    reward_bench_summary,
)


CardTable = tuple[list, list, str, str | None]
"""(header, rows, size, note) of a model-card table: `size` says what was scored ("120 pairs"), `note` what is not."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its data, the responses of an item, its records, metric, groups, summary and card sections."""

    name: str
    """`--benchmark` value and the `benchmark` of `metrics.json`."""
    title: str
    """Its name for people: summaries, model cards."""
    load: Callable[..., datasets.Dataset]
    """`load(data=..., split=...)` -> dataset with `columns`; without `data`, the official Hub dataset."""
    columns: tuple[str, ...]
    """Columns of a loaded dataset (a dataset passed to `evaluate_model` must have them)."""
    responses: Callable[[Mapping], list]
    """The responses of one item, in scoring order."""
    sides: Mapping[str, int | slice]
    """Side -> its positions among an item's responses. A record holds `score_<side>`, `routing_weights_<side>` and
    `depth_weights_<side>` per side (`scores`, `routing_weights`, `depth_weights` for the unnamed side "")."""
    identity: Callable[[Mapping, int], dict]
    """The fields of a `rewards.jsonl` line that name an item: `identity(item, position in the dataset)`."""
    metrics: Callable[[Sequence[dict]], dict]
    """The official metrics from the records of `rewards.jsonl`."""
    summary: Callable[[dict], list[str]]
    """Headline lines of the metrics."""
    card_table: Callable[[dict], CardTable]
    """The model card's table of the metrics."""
    card_results: Callable[[dict], list[tuple[str, float]]]
    """(metric name, value in %) entries of the model card's `model-index`."""
    group_by: str = "all"
    """What routing weights and `--limit` group items by (a field of items and records), or "all"."""
    group: Callable[[Mapping], str] = lambda item: "all"
    """The group of an item or record."""
    groups: tuple[str, ...] = ()
    """Groups in report order."""
    outcome: Callable[[dict], dict] = lambda record: {}
    """Fields a record derives from its scores (`correct`, `decision`)."""
    limit: Callable[[datasets.Dataset, int], datasets.Dataset] | None = None
    """Keeps `limit` items per group for `--limit`; None: the first `limit` items of each group."""
    prompt_column: str = "prompt"
    hub_id: str | None = None
    """The official Hub dataset (the model card's dataset); None when the data itself is the dataset."""
    split_of: Callable[[datasets.Dataset], str | None] = lambda dataset: None
    """The split a loaded dataset holds, recorded when the caller named none."""
    data_in_title: bool = True
    """Whether the title of an evaluation names its split or data file."""

    def examples(self, dataset: datasets.Dataset) -> tuple[list, list]:
        """The (prompts, responses) to score: the `responses` of each item in turn, each with its item's prompt."""
        prompts, responses = [], []
        for item in dataset:
            item_responses = list(self.responses(item))
            prompts.extend([item[self.prompt_column]] * len(item_responses))
            responses.extend(item_responses)
        return prompts, responses

    def records(self, dataset: datasets.Dataset, rewards: list, pis: list | None, alphas: list | None) -> list[dict]:
        """The lines of `rewards.jsonl` from the rewards of `examples(dataset)` (with the routing weights pi and alpha
        of AdaJudge judges, else None)."""
        records, start = [], 0
        for position, item in enumerate(dataset):
            span = slice(start, start + len(self.responses(item)))
            record = self.identity(item, position)
            for side, where in self.sides.items():
                record[f"score_{side}" if side else "scores"] = rewards[span][where]
            record.update(self.outcome(record))
            if pis is not None:
                for side, where in self.sides.items():
                    suffix = f"_{side}" if side else ""
                    record[f"routing_weights{suffix}"] = pis[span][where]
                    record[f"depth_weights{suffix}"] = alphas[span][where] if alphas is not None else None
            records.append(record)
            start = span.stop
        if start != len(rewards):
            raise ValueError(f"Got {len(rewards)} rewards for {start} responses of {self.name}; they must match.")
        return records

    def limited(self, dataset: datasets.Dataset, limit: int) -> datasets.Dataset:
        """The dataset cut to `limit` items per group (every group stays represented)."""
        if limit < 1:
            raise ValueError(f"`limit` must be >= 1, got {limit}.")
        if self.limit is not None:
            return self.limit(dataset, limit)
        counts: dict[str, int] = {}
        keep = []
        for index, item in enumerate(dataset):
            group = self.group(item)
            counts[group] = counts.get(group, 0) + 1
            if counts[group] <= limit:
                keep.append(index)
        return dataset.select(keep)


BENCHMARKS: dict[str, Benchmark] = {}
"""Every benchmark by name, in the order of reports and model cards."""


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Add `benchmark` to `BENCHMARKS` (a name already taken is an error)."""
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"A benchmark named {benchmark.name!r} is registered already.")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`; an unknown name is a ValueError listing the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"Unknown benchmark {name!r}; expected one of {list(BENCHMARKS)}.") from None


def load_benchmark(benchmark: str, data: str | Path | None = None, split: str | None = None) -> datasets.Dataset:
    """Load `benchmark` (a name of `BENCHMARKS`) from `data`, by default its official Hub dataset."""
    description = get_benchmark(benchmark)
    if data is None and description.hub_id is None:
        raise ValueError(f"{description.title} have no default dataset: pass a file or a Hub dataset id as `data`.")
    kwargs = {} if data is None else {"data": data}
    if split is not None:
        kwargs["split"] = split
    return description.load(**kwargs)


def limit_per_group(dataset: datasets.Dataset, benchmark: str, limit: int) -> datasets.Dataset:
    """Keep the first `limit` items of each group of `benchmark` (RM-Bench domain, JudgeBench category, RewardBench
    subset; all preference pairs are one group), so every group stays represented."""
    return get_benchmark(benchmark).limited(dataset, limit)


def _fields(*names: str) -> Callable[[Mapping, int], dict]:
    return lambda item, position: {name: item[name] for name in names}


def _percent(value: float) -> str:
    return f"{value:.1f}"


def _chosen_wins(record: dict) -> dict:
    return {"correct": record["score_chosen"] > record["score_rejected"]}


def _rm_bench_summary(metrics: dict) -> list[str]:
    domains = ", ".join(f"{name} {values['score']:.1f}" for name, values in metrics["domains"].items())
    lines = [
        f"RM-Bench overall {metrics['overall']:.1f} over {len(metrics['domains_scored'])} domain(s): {domains}",
        f"easy {metrics['easy']:.1f} / normal {metrics['normal']:.1f} / hard {metrics['hard']:.1f}",
    ]
    if metrics["domains_missing"]:
        lines.append(f"not scored (absent from the data): {', '.join(metrics['domains_missing'])}")
    return lines


def _rm_bench_card_table(metrics: dict) -> CardTable:
    levels = ("score", "easy", "normal", "hard")
    rows = [
        [domain, *(_percent(values[key]) for key in levels), values["num_prompts"]]
        for domain, values in metrics["domains"].items()
    ]
    overall = ("overall", "easy", "normal", "hard")
    rows.append(["**overall**", *(f"**{_percent(metrics[key])}**" for key in overall)] + [metrics["num_prompts"]])
    note = None
    if metrics["domains_missing"]:
        note = (
            f"Not scored: {', '.join(metrics['domains_missing'])} (absent from the data), so the overall is the "
            f"mean of {', '.join(metrics['domains_scored'])} and not the leaderboard's overall."
        )
    return ["domain", "score", "easy", "normal", "hard", "prompts"], rows, f"{metrics['num_prompts']} prompts", note


def _rm_bench_card_results(metrics: dict) -> list[tuple[str, float]]:
    scored = ", ".join(metrics["domains_scored"])
    values = [(f"Overall accuracy ({scored})", metrics["overall"])]
    values += [(f"{domain.capitalize()} accuracy", v["score"]) for domain, v in metrics["domains"].items()]
    return values + [
        (f"{level.capitalize()} accuracy ({scored})", metrics[level]) for level in ("easy", "normal", "hard")
    ]


def _judgebench_outcome(record: dict) -> dict:
    decision = judgebench_decision(record["score_A"], record["score_B"])
    return {"decision": decision, "correct": decision == record["label"]}


def _judgebench_summary(metrics: dict) -> list[str]:
    categories = ", ".join(f"{name} {values['accuracy']:.1f}" for name, values in metrics["categories"].items())
    return [f"JudgeBench overall {metrics['overall']:.1f} on {metrics['num_pairs']} pairs: {categories}"]


def _judgebench_card_table(metrics: dict) -> CardTable:
    rows = [
        [name, _percent(values["accuracy"]), values["num_pairs"]] for name, values in metrics["categories"].items()
    ]
    rows.append(["**overall** (all pairs)", f"**{_percent(metrics['overall'])}**", metrics["num_pairs"]])
    return ["category", "accuracy", "pairs"], rows, f"{metrics['num_pairs']} pairs", None


def _judgebench_card_results(metrics: dict) -> list[tuple[str, float]]:
    values = [("Overall accuracy", metrics["overall"])]
    return values + [
        (f"{category.capitalize()} accuracy", v["accuracy"]) for category, v in metrics["categories"].items()
    ]


def _pairs_metrics(records: Sequence[dict]) -> dict:
    return pairwise_accuracy([r["score_chosen"] for r in records], [r["score_rejected"] for r in records])


def _pairs_summary(metrics: dict) -> list[str]:
    return [
        f"Pairwise accuracy {metrics['accuracy']:.1f} ({100 * metrics['confidence']:.0f}% CI "
        f"{metrics['ci_low']:.1f}-{metrics['ci_high']:.1f}) on {metrics['num_pairs']} pairs"
    ]


def _pairs_card_table(metrics: dict) -> CardTable:
    header = ["accuracy", f"{100 * metrics['confidence']:.0f}% interval", "ties", "mean margin", "pairs"]
    interval = f"{_percent(metrics['ci_low'])}-{_percent(metrics['ci_high'])}"
    row = [_percent(metrics["accuracy"]), interval, metrics["num_ties"], f"{metrics['mean_margin']:.3f}"]
    return header, [row + [metrics["num_pairs"]]], f"{metrics['num_pairs']} pairs", None


register_benchmark(
    Benchmark(
        name="rm-bench",
        title="RM-Bench",
        hub_id=RM_BENCH_HUB_ID,
        load=load_rm_bench,
        columns=("domain", "id", "prompt", "chosen", "rejected"),
        responses=lambda item: list(item["chosen"]) + list(item["rejected"]),
        sides={"chosen": slice(0, 3), "rejected": slice(3, 6)},
        identity=_fields("domain", "id"),
        metrics=rm_bench_scores,
        group_by="domain",
        group=lambda item: rm_bench_domain(item["domain"]),
        groups=RM_BENCH_DOMAINS,
        summary=_rm_bench_summary,
        card_table=_rm_bench_card_table,
        card_results=_rm_bench_card_results,
        data_in_title=False,
    )
)
register_benchmark(
    Benchmark(
        name="judgebench",
        title="JudgeBench",
        hub_id=JUDGEBENCH_HUB_ID,
        load=load_judgebench,
        columns=("pair_id", "source", "category", "question", "response_A", "response_B", "label"),
        prompt_column="question",
        responses=lambda item: [item["response_A"], item["response_B"]],
        sides={"A": 0, "B": 1},
        identity=_fields("pair_id", "source", "category", "label"),
        outcome=_judgebench_outcome,
        metrics=judgebench_scores,
        group_by="category",
        group=lambda item: item["category"],
        groups=tuple(JUDGEBENCH_CATEGORIES.values()),
        summary=_judgebench_summary,
        card_table=_judgebench_card_table,
        card_results=_judgebench_card_results,
        split_of=judgebench_split,
    )
)
register_benchmark(
    Benchmark(
        name="reward-bench-2",
        title="RewardBench 2",
        hub_id=REWARD_BENCH_2_HUB_ID,
        load=load_reward_bench_2,
        columns=("subset", "id", "prompt", "chosen", "rejected", "num_correct"),
        responses=lambda item: list(item["chosen"]) + list(item["rejected"]),
        sides={"": slice(None)},  # one list of completions per prompt: `scores`, `routing_weights`, `depth_weights`
        identity=_fields("subset", "id", "num_correct"),
        metrics=reward_bench_2_scores,
        group_by="subset",
        group=lambda item: item["subset"],
        groups=REWARD_BENCH_2_SUBSETS,
        limit=limit_reward_bench,
        summary=reward_bench_2_summary,
        card_table=reward_bench_2_card_table,
        card_results=reward_bench_2_card_results,
    )
)
register_benchmark(
    Benchmark(
        name="reward-bench",
        title="RewardBench",
        hub_id=REWARD_BENCH_HUB_ID,
        load=load_reward_bench,
        columns=("subset", "id", "prompt", "chosen", "rejected"),
        responses=lambda item: [item["chosen"], item["rejected"]],
        sides={"chosen": 0, "rejected": 1},
        identity=_fields("subset", "id"),
        outcome=_chosen_wins,
        metrics=reward_bench_scores,
        group_by="subset",
        group=lambda item: item["subset"],
        groups=REWARD_BENCH_SUBSETS,
        limit=limit_reward_bench,
        summary=reward_bench_summary,
        card_table=reward_bench_card_table,
        card_results=reward_bench_card_results,
    )
)
register_benchmark(
    Benchmark(
        name="pairs",
        title="Preference pairs",
        load=load_preference_pairs,
        columns=("prompt", "chosen", "rejected"),
        responses=lambda item: [item["chosen"], item["rejected"]],
        sides={"chosen": 0, "rejected": 1},
        identity=lambda item, position: {"index": position},
        outcome=_chosen_wins,
        metrics=_pairs_metrics,
        summary=_pairs_summary,
        card_table=_pairs_card_table,
        card_results=lambda metrics: [("Pairwise accuracy", metrics["accuracy"])],
    )
)


__all__ = ["BENCHMARKS", "Benchmark", "get_benchmark", "limit_per_group", "load_benchmark", "register_benchmark"]
