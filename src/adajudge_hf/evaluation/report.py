"""Evaluate a reward model on a benchmark and write a report that people and the model-card generator can read.

`evaluate_model(model, tokenizer, benchmark, data, output_dir)` scores an AdaJudge judge or any stock reward model;
`evaluate_length_baseline(benchmark, data, output_dir)` scores the longer response higher, as a sanity anchor. Both
write, to `output_dir` (on the main process only):

`metrics.json`
    `{"benchmark", "model", "judge", "data", "split", ["command",] "num_items", "metrics", "scoring",
    "adajudge_hf_version"}`. `model` names the judge (its folder or Hub id); `judge` (null when the model was not
    loaded from a checkpoint) holds its `name_or_path`, save `form`, `model_type`, `base_model` and the `fingerprint`
    of its weights with the sha256 of each weight file (see `provenance`). `split` is the split scored. `metrics` is
    the dict of `rm_bench_scores` (overall, easy / normal / hard, per domain with its 3x3 matrix),
    `judgebench_scores` (overall, per category) or `pairwise_accuracy` (accuracy with a Wilson interval); accuracies
    are percentages. `scoring` holds the cost: responses, tokens, padding fraction, truncations, seconds, tokens/s.
`rewards.jsonl`
    One line per item, in dataset order. RM-Bench: `domain`, `id`, `score_chosen` and `score_rejected` (3 rewards
    each, in style order). JudgeBench: `pair_id`, `source`, `category`, `label`, `score_A`, `score_B`, `decision`,
    `correct`. Pairs: `index`, `score_chosen`, `score_rejected`, `correct`. RewardBench 2: `subset`, `id`,
    `num_correct`, `scores` (one per completion, chosen first). RewardBench: `subset`, `id`, `score_chosen`,
    `score_rejected`, `correct`. For AdaJudge judges, each side S of an item (chosen / rejected, A / B) also has
    `routing_weights_S` (pi over the experts, one list per response) and `depth_weights_S` (alpha, or null when
    K = 0); RewardBench 2 has `routing_weights` / `depth_weights`, one list per completion. Feeding these lines back
    to the metric functions gives `metrics` (`Benchmark.records` writes them).
`routing.json`, `routing.md`, `routing.png` (AdaJudge judges only)
    Mean routing weights per group of responses (RM-Bench domain, JudgeBench category, or all pairs), plus an
    `"all"` group. `routing.json` schema::

        {
          "benchmark": "<name>",                           # a name of `benchmarks.BENCHMARKS`
          "group_by": "domain" | "category" | "subset" | "all",  # `Benchmark.group_by`
          "experts": ["last", "mean", "attention"],        # config.experts, in output order
          "depth_candidates": ["H(1)", ..., "H(K)"] | null,  # H(0) first if the depth router may pick H0
          "groups": {
            "<group>": {
              "num_responses": int,
              "routing_weights": {"<expert>": mean pi, ...},
              "depth_weights": {"<candidate>": mean alpha, ...} | null
            },
            ...,
            "all": {...}
          }
        }

    `routing.md` is the same as Markdown tables, `routing.png` as heatmaps.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
from matplotlib.figure import Figure
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .. import __version__
from ..precision import Precision
from .benchmarks import get_benchmark, load_benchmark
from .progress import remove_progress
from .provenance import judge_identity
from .scoring import DEFAULT_BATCH_TOKENS, ScoringOutput, distributed_state, score_by_length, score_responses


LENGTH_BASELINE = "length-baseline"
PROGRESS_DIR = ".partial"
"""Folder of `output_dir` that keeps the scored batches of an unfinished evaluation (see `progress`)."""


@dataclass
class EvaluationResult:
    """Everything an evaluation produced; `output_dir` is where it was written (None when nothing was)."""

    benchmark: str
    metrics: dict
    records: list[dict]
    routing: dict | None
    scoring: dict
    info: dict
    output_dir: Path | None = None

    def to_json(self) -> dict:
        """The content of `metrics.json`."""
        return {
            "benchmark": self.benchmark,
            **self.info,
            "num_items": len(self.records),
            "metrics": self.metrics,
            "scoring": self.scoring,
            "adajudge_hf_version": __version__,
        }


def _prepare_dataset(
    benchmark: str, data: str | os.PathLike | datasets.Dataset | None, split: str | None, limit: int | None
) -> datasets.Dataset:
    description = get_benchmark(benchmark)
    if isinstance(data, datasets.Dataset):
        missing = [column for column in description.columns if column not in data.column_names]
        if missing:
            raise ValueError(
                f"The dataset lacks the column(s) {missing} of a {benchmark} dataset; load it with "
                "`adajudge_hf.evaluation.load_benchmark`, which normalises the official formats."
            )
        dataset = data
    else:
        dataset = load_benchmark(benchmark, data, split)
    return description.limited(dataset, limit) if limit is not None else dataset


def benchmark_examples(benchmark: str, dataset: datasets.Dataset) -> tuple[list, list]:
    """The (prompts, responses) to score: each item's responses in turn (`Benchmark.examples`)."""
    return get_benchmark(benchmark).examples(dataset)


def as_chat(tokenizer: PreTrainedTokenizerBase, prompt, response) -> tuple:
    """Plain-text benchmark inputs as a user turn and an assistant turn when the tokenizer has a chat template, which
    is how RM-Bench and RewardBench render them; everything else is passed as is."""
    if tokenizer.chat_template is None or not isinstance(response, str):
        return prompt, response
    user = [{"role": "user", "content": prompt}] if prompt else []
    return user, [{"role": "assistant", "content": response}]


def _records(benchmark: str, dataset: datasets.Dataset, scores: ScoringOutput) -> list[dict]:
    rewards = scores.rewards.tolist()
    pis = scores.routing_weights.tolist() if scores.routing_weights is not None else None
    alphas = scores.depth_weights.tolist() if scores.depth_weights is not None else None
    return get_benchmark(benchmark).records(dataset, rewards, pis, alphas)


def benchmark_metrics(benchmark: str, records: Sequence[dict]) -> dict:
    """Official metrics of `benchmark` from the per-item records of `rewards.jsonl`."""
    return get_benchmark(benchmark).metrics(records)


def routing_report(
    benchmark: str, records: Sequence[dict], experts: Sequence[str], depth_candidates: Sequence[str] | None
) -> dict:
    """Mean routing weights pi (and depth weights alpha) per domain / category, from the records of `rewards.jsonl`.

    Returns the `routing.json` dict described in the module docstring.
    """
    description = get_benchmark(benchmark)
    vectors: dict[str, tuple[list, list]] = {}  # group -> (pi of each response, alpha of each response)
    for record in records:
        pis, alphas = [], []
        for name, where in description.sides.items():
            suffix = f"_{name}" if name else ""
            pi, alpha = record[f"routing_weights{suffix}"], record[f"depth_weights{suffix}"]
            pi = [pi] if isinstance(where, int) else pi
            alpha = [None] * len(pi) if alpha is None else [alpha] if isinstance(where, int) else alpha
            pis, alphas = pis + pi, alphas + alpha
        for group in dict.fromkeys((description.group(record), "all")):  # pairs have no group but "all"
            group_pis, group_alphas = vectors.setdefault(group, ([], []))
            group_pis.extend(pis)
            group_alphas.extend(alphas)

    def mean(names: Sequence[str], rows: list[list[float]]) -> dict[str, float]:
        return {name: sum(column) / len(rows) for name, column in zip(names, zip(*rows))}

    groups = {}
    for group in [group for group in description.groups if group in vectors] + ["all"]:
        pis, alphas = vectors[group]
        groups[group] = {
            "num_responses": len(pis),
            "routing_weights": mean(experts, pis),
            "depth_weights": mean(depth_candidates, alphas) if depth_candidates else None,
        }
    return {
        "benchmark": benchmark,
        "group_by": description.group_by,
        "experts": list(experts),
        "depth_candidates": list(depth_candidates) if depth_candidates else None,
        "groups": groups,
    }


def _routing_panels(routing: dict) -> list[tuple[str, list[str], str]]:
    panels = [("routing_weights", routing["experts"], "pooling router π")]
    if routing["depth_candidates"]:
        panels.append(("depth_weights", routing["depth_candidates"], "depth router α"))
    return panels


def routing_markdown(routing: dict) -> str:
    """`routing.json` as one Markdown table per router."""
    lines = [f"# Mean routing weights on {routing['benchmark']}, per {routing['group_by']}"]
    for key, columns, title in _routing_panels(routing):
        lines += ["", f"## {title}", ""]
        lines.append(f"| {routing['group_by']} | responses | " + " | ".join(columns) + " |")
        lines.append("|---|---:|" + "---:|" * len(columns))
        for group, values in routing["groups"].items():
            cells = " | ".join(f"{values[key][column]:.3f}" for column in columns)
            lines.append(f"| {group} | {values['num_responses']} | {cells} |")
    return "\n".join(lines) + "\n"


def plot_routing(routing: dict, path: str | os.PathLike) -> None:
    """Heatmaps of `routing.json`: groups x experts (pi) and, when the judge has refinement blocks, groups x depth."""
    panels = _routing_panels(routing)
    groups = list(routing["groups"])
    figure = Figure(
        figsize=(2.5 + 1.4 * sum(len(columns) for _, columns, _ in panels), 1.5 + 0.5 * len(groups)),
        layout="constrained",
    )
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (key, columns, title) in zip(axes, panels):
        values = [[routing["groups"][group][key][column] for column in columns] for group in groups]
        image = axis.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        axis.set_xticks(range(len(columns)), columns)
        axis.set_yticks(range(len(groups)), groups)
        axis.set_title(title)
        axis.axhline(len(groups) - 1.5, color="white", linewidth=2)  # sets the pooled "all" row apart
        for row, row_values in enumerate(values):
            for column, value in enumerate(row_values):
                color = "black" if value > 0.6 else "white"
                axis.text(column, row, f"{value:.2f}", ha="center", va="center", color=color, fontsize=9)
    figure.colorbar(image, ax=list(axes), shrink=0.9)
    figure.suptitle(f"Mean routing weights on {routing['benchmark']}, per {routing['group_by']}")
    figure.savefig(path, dpi=150)


def _write_atomically(path: Path, write) -> None:
    """`write(temporary_path)`, then rename it to `path`: an interrupt leaves the old file or none, never half of one."""
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")  # same suffix: matplotlib reads the format there
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_report(result: EvaluationResult, output_dir: str | os.PathLike) -> Path:
    """Write `metrics.json`, `rewards.jsonl` and, for AdaJudge judges, the routing report to `output_dir`.

    Each file is written whole or not at all, `metrics.json` (what `adajudge push` reads) last.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rewards = "".join(json.dumps(record) + "\n" for record in result.records)
    _write_atomically(output_dir / "rewards.jsonl", lambda path: path.write_text(rewards))
    if result.routing is not None:
        routing = json.dumps(result.routing, indent=2) + "\n"
        _write_atomically(output_dir / "routing.json", lambda path: path.write_text(routing))
        _write_atomically(output_dir / "routing.md", lambda path: path.write_text(routing_markdown(result.routing)))
        _write_atomically(output_dir / "routing.png", lambda path: plot_routing(result.routing, path))
    metrics = json.dumps(result.to_json(), indent=2) + "\n"
    _write_atomically(output_dir / "metrics.json", lambda path: path.write_text(metrics))
    return output_dir


def report_scores(
    benchmark: str,
    dataset: datasets.Dataset,
    scores: ScoringOutput,
    info: dict,
    output_dir: str | os.PathLike | None,
) -> EvaluationResult:
    """Metrics, per-item records and routing report of `scores` (the rewards of `benchmark_examples(dataset)`, in
    order), written to `output_dir` when given. For rewards computed elsewhere, e.g. from cached backbone features."""
    records = _records(benchmark, dataset, scores)
    routing = (
        routing_report(benchmark, records, scores.experts, scores.depth_candidates)
        if scores.routing_weights is not None
        else None
    )
    result = EvaluationResult(
        benchmark=benchmark,
        metrics=benchmark_metrics(benchmark, records),
        records=records,
        routing=routing,
        scoring=scores.stats(),
        info=info,
    )
    if output_dir is not None:
        state = distributed_state()
        if state.is_main_process:
            write_report(result, output_dir)
        state.wait_for_everyone()  # every process returns once the report is on disk
        result.output_dir = Path(output_dir)
    return result


def _split_name(benchmark: str, dataset: datasets.Dataset, split: str | None) -> str | None:
    """The split that was scored: the one asked for, else the JudgeBench split the data turned out to hold."""
    return split or get_benchmark(benchmark).split_of(dataset)


def _data_name(data) -> str | None:
    return None if data is None or isinstance(data, datasets.Dataset) else str(data)


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    benchmark: str,
    data: str | os.PathLike | datasets.Dataset | None = None,
    output_dir: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    max_length: int | None = None,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    limit: int | None = None,
    show_progress: bool = True,
    share_prompts: bool = False,
    command: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    precision: Precision | None = None,
) -> EvaluationResult:
    """Score `model` on `benchmark` (a name of `benchmarks.BENCHMARKS`) and write the report to `output_dir`.

    `data` is a Hub dataset id, a local file or folder in the official format (default: the official Hub dataset), or
    a dataset from `load_benchmark`; `limit` keeps the first `limit` items of each domain / category (see
    `limit_per_group`). Plain-text prompts and responses go through the tokenizer's chat template as one user turn and
    one assistant turn when it has one. Under `accelerate launch` the scoring is split across processes.
    `share_prompts` encodes each item's prompt once for all its responses (see `score_responses`); `command`, the
    command line that ran the evaluation, is recorded in `metrics.json`.

    `checkpoint` is the folder or Hub id `model` was loaded from: `metrics.json` then names it as the judge, with its
    save form and the fingerprint of its weights (`provenance.judge_identity`), which `adajudge push --eval-dir`
    checks; without it the model is named by `name_or_path` and its weights are not identified. `precision` (the
    dtype `model` was loaded in and why, from `adajudge_hf.precision.resolve_dtype`) is recorded there too; without
    it, the model's dtype alone.

    With `output_dir`, every scored batch is also kept in `output_dir/.partial` until the report is written, so an
    interrupted evaluation (`ScoringInterrupted`, a `KeyboardInterrupt`) resumes when it is called again with the same
    arguments: only what is missing is scored.
    """
    judge = judge_identity(checkpoint) if checkpoint is not None else None
    dataset = _prepare_dataset(benchmark, data, split, limit)
    prompts, responses = benchmark_examples(benchmark, dataset)
    chats = [as_chat(tokenizer, prompt, response) for prompt, response in zip(prompts, responses)]
    prompts, responses = [prompt for prompt, _ in chats], [response for _, response in chats]
    progress_dir = Path(output_dir) / PROGRESS_DIR if output_dir is not None else None
    scores = score_responses(
        model,
        tokenizer,
        prompts,
        responses,
        max_length=max_length,
        max_batch_tokens=max_batch_tokens,
        show_progress=show_progress,
        share_prompts=share_prompts,
        progress_dir=progress_dir,
        model_id=f"{judge['fingerprint']} {model.dtype}" if judge and judge["fingerprint"] else None,
    )
    info = {
        "model": str(checkpoint) if checkpoint is not None else getattr(model, "name_or_path", None) or None,
        "judge": judge,
        "data": _data_name(data),
        "split": _split_name(benchmark, dataset, split),
        **(precision.as_record() if precision else {"dtype": str(model.dtype).removeprefix("torch.")}),
    }
    if command is not None:
        info["command"] = command  # the exact command line, for model cards
    result = report_scores(benchmark, dataset, scores, info, output_dir)
    if progress_dir is not None and distributed_state().is_main_process:
        remove_progress(progress_dir)  # its results are in the report now
    return result


def evaluate_length_baseline(
    benchmark: str,
    data: str | os.PathLike | datasets.Dataset | None = None,
    output_dir: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
) -> EvaluationResult:
    """`evaluate_model` for the length baseline: the longer response (in characters) gets the higher reward.

    A sanity anchor for any reward model, and a check of the metric orientation: on RM-Bench it must get a low hard
    score (plain correct answers lose to long wrong ones).
    """
    dataset = _prepare_dataset(benchmark, data, split, limit)
    _, responses = benchmark_examples(benchmark, dataset)
    info = {"model": LENGTH_BASELINE, "data": _data_name(data), "split": _split_name(benchmark, dataset, split)}
    return report_scores(benchmark, dataset, score_by_length(responses), info, output_dir)


def format_summary(result: EvaluationResult) -> str:
    """A few human-readable lines with the headline numbers."""
    lines = get_benchmark(result.benchmark).summary(result.metrics)
    if result.output_dir is not None:
        lines.append(f"report written to {result.output_dir}")
    return "\n".join(lines)
