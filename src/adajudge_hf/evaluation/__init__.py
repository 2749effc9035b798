"""Evaluation of reward models on RM-Bench, JudgeBench, RewardBench 2, RewardBench and preference pairs with the
official metrics.

- `metrics`: the official metric functions on plain per-item rewards (no model needed), also shipped as `evaluate`
  modules: `evaluate.load(metric_path("rm_bench"))`.
- `benchmarks`: the `Benchmark` registry: what each benchmark loads, scores, groups and reports.
- `data`: loaders by official Hub name or from local files in the official formats.
- `reward_bench`: RewardBench 2 and RewardBench (v1): official scores and loaders.
- `scoring`: length-bucketed, multi-process scoring of (prompt, response) pairs, with AdaJudge's routing weights.
- `report`: `evaluate_model` / `evaluate_length_baseline`, writing metrics, per-item rewards and a routing report.
"""

from pathlib import Path

from .benchmarks import BENCHMARKS, Benchmark, get_benchmark, limit_per_group, load_benchmark, register_benchmark
from .data import (
    JUDGEBENCH_HUB_ID,
    RM_BENCH_HUB_ID,
    load_judgebench,
    load_preference_pairs,
    load_rm_bench,
    parse_hh_rlhf_transcript,
)
from .metrics import judgebench_scores, pairwise_accuracy, rm_bench_scores, wilson_interval
from .report import (
    LENGTH_BASELINE,
    EvaluationResult,
    benchmark_metrics,
    evaluate_length_baseline,
    evaluate_model,
    report_scores,
    routing_report,
    write_report,
)
from .reward_bench import (
    REWARD_BENCH_2_HUB_ID,
    REWARD_BENCH_HUB_ID,
    load_reward_bench,
    load_reward_bench_2,
    reward_bench_2_scores,
    reward_bench_scores,
)
from .scoring import (
    DEFAULT_BATCH_TOKENS,
    ScoringOutput,
    distributed_state,
    length_buckets,
    score_by_length,
    score_responses,
)


METRICS = ("rm_bench", "judgebench", "pairwise_accuracy", "reward_bench_2", "reward_bench")
"""The `evaluate` metric modules shipped with the package."""


def metric_path(name: str) -> str:
    """Folder of a shipped `evaluate` metric module, for `evaluate.load(metric_path(name))` (works offline)."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; the shipped metrics are {list(METRICS)}.")
    return str(Path(__file__).parent / "evaluate_metrics" / name)


__all__ = [
    "BENCHMARKS",
    "DEFAULT_BATCH_TOKENS",
    "JUDGEBENCH_HUB_ID",
    "LENGTH_BASELINE",
    "METRICS",
    "REWARD_BENCH_2_HUB_ID",
    "REWARD_BENCH_HUB_ID",
    "RM_BENCH_HUB_ID",
    "Benchmark",
    "EvaluationResult",
    "ScoringOutput",
    "benchmark_metrics",
    "distributed_state",
    "evaluate_length_baseline",
    "get_benchmark",
    "evaluate_model",
    "judgebench_scores",
    "length_buckets",
    "limit_per_group",
    "load_benchmark",
    "load_judgebench",
    "load_preference_pairs",
    "load_reward_bench",
    "load_reward_bench_2",
    "load_rm_bench",
    "metric_path",
    "pairwise_accuracy",
    "parse_hh_rlhf_transcript",
    "register_benchmark",
    "report_scores",
    "reward_bench_2_scores",
    "reward_bench_scores",
    "rm_bench_scores",
    "routing_report",
    "score_by_length",
    "score_responses",
    "wilson_interval",
    "write_report",
]
