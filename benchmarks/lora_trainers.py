"""AdaJudge vs TRL's stock reward model, both fine-tuned with LoRA through their trainers: the paper's regime at CPU
scale.

`AdaJudgeRewardTrainer` (packed layout; the judge's default objective, focal Bradley-Terry + router entropy floor) on
an AdaJudge judge (default config) over SmolLM2-135M-Instruct, against TRL's `RewardTrainer` (plain Bradley-Terry)
on `AutoModelForSequenceClassification` of the same backbone. The same for both:
- LoRA r, alpha, dropout on the same modules (every attention and MLP projection of the backbone); each model's
  scoring head is trained in full (`score` for the stock model, `judge_head` for AdaJudge);
- the training pool and held-out pairs of `quality.py` (embedded HH-RLHF harmless + LLaMA-Factory dpo_en_demo), the
  validation split carved per seed with `quality.validation_split`;
- the token ids: every pair is tokenised once with `adajudge_hf.data.prepare_preference_dataset` (over-long pairs
  truncated: the prompt from the left, then the start of a response) and the stock trainer gets those ids pre-tokenised
  (on raw data TRL's `RewardTrainer` would drop every pair longer than `max_length` instead); each run records a hash
  of the training token ids it saw, and `--summarize` checks that both variants saw the same pairs for each seed;
- optimizer (AdamW), learning rate, linear schedule with warm-up, batch size, steps, seed; fp32 on the CPU
  (TRL's `bf16` default is turned off), activation checkpointing on (both trainers' default);
- checkpoint selection on validation only: validation accuracy every `--eval-steps` steps and
  `load_best_model_at_end` (ties keep the earlier checkpoint).
Held-out accuracy per source and pooled; AdaJudge - stock with a 95% hierarchical bootstrap over seeds and pairs
(`adajudge_hf.comparison`).

Each (variant, seed) run is its own invocation, so the shared lock is never held for long; runs append to
results/lora_trainers-runs.jsonl and a run already recorded there is skipped:

    for seed in 0 1 2; do for variant in stock adajudge; do
        flock /tmp/adajudge-heavy.lock python benchmarks/lora_trainers.py --variant $variant --seed $seed \\
            --dpo-demo ../shared/benchmarks/llamafactory-dpo-demo/dpo_en_demo.json
    done; done
    python benchmarks/lora_trainers.py --summarize

`--summarize` writes results/lora_trainers.{json,md,png} and results/lora_summary.json (issue 14's schema, regime
"lora"). Every run must use the same settings (the size flags); `--summarize` refuses to mix runs that differ.
`--backbone tiny` makes a seconds-long smoke run on a tiny random backbone (its own runs file).
"""

import argparse
import hashlib
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch
from peft import LoraConfig
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import RewardConfig, RewardTrainer

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.backbones import DEFAULT_BACKBONE, resolve_backbone
from adajudge_hf.comparison import hierarchical_bootstrap
from adajudge_hf.data import prepare_preference_dataset
from adajudge_hf.embedded_data import load_embedded_preferences
from adajudge_hf.lora import BACKBONE_TARGET_MODULES
from adajudge_hf.trainer import AdaJudgeRewardConfig, AdaJudgeRewardTrainer


sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import TRAINING_SOURCES, dpo_demo_pairs, validation_split  # noqa: E402


RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("stock", "adajudge")
DPO_HELD_OUT = 100  # quality.py's default `--dpo-test`: the dpo pairs that never enter its training pool
SUMMARY_NAMES = {"adajudge": "adajudge", "stock": "stock_linear"}  # quality_summary.json's variant names
LABELS = {
    "stock": "TRL RewardTrainer, AutoModelForSequenceClassification (last-token linear score, plain BT)",
    "adajudge": "AdaJudgeRewardTrainer, AdaJudge default config (K=3, packed, focal BT + entropy floor)",
}
# Flags that define a run's protocol: runs that differ in any of them are not comparable.
PROTOCOL_FLAGS = (
    "backbone", "dpo_demo", "hh_train", "hh_test", "dpo_test", "validation_fraction", "max_length", "steps",
    "batch_size", "learning_rate", "warmup_fraction", "eval_steps", "lora_r", "lora_alpha", "lora_dropout",
)  # fmt: skip


def load_pairs(args) -> tuple[list[dict], list[str], dict[str, list[dict]]]:
    """Training pool (conversational pairs) and its sources, and the held-out pairs per source: quality.py's data."""
    hh = load_embedded_preferences("train").select(range(args.hh_train))
    pool = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in hh]
    sources = ["hh_rlhf_harmless"] * len(pool)
    hh_test = load_embedded_preferences("test")
    held_out = {"hh_rlhf_harmless": [hh_test[i] for i in range(args.hh_test)]}
    if args.dpo_demo:
        dpo = dpo_demo_pairs(args.dpo_demo)
        random.Random(0).shuffle(dpo)  # quality.py's split: the first DPO_HELD_OUT pairs are its held-out set
        held_out["dpo_en_demo"] = dpo[: args.dpo_test]
        pool += dpo[DPO_HELD_OUT:]
        sources += ["dpo_en_demo"] * (len(dpo) - DPO_HELD_OUT)
    return pool, sources, held_out


def tokenised(pairs: list[dict], tokenizer, max_length: int, name: str) -> datasets.Dataset:
    """The pairs as the token ids both trainers see (AdaJudge's preparation, truncating rather than dropping)."""
    prepared, _ = prepare_preference_dataset(
        datasets.Dataset.from_list(pairs), tokenizer, max_length=max_length, dataset_name=name
    )
    return prepared


def ids_digest(dataset: datasets.Dataset) -> str:
    """Hash of the (chosen, rejected) token ids of a prepared dataset, in order."""
    digest = hashlib.sha256()
    for chosen, rejected in zip(dataset["chosen_ids"], dataset["rejected_ids"]):
        digest.update(json.dumps([chosen, rejected]).encode())
    return digest.hexdigest()[:16]


def build_trainer(variant: str, args, backbone: Path, tokenizer, train: datasets.Dataset, validation, output_dir):
    """The variant's model and trainer, with every setting but the model, loss and data layout shared."""
    warmup_steps = round(args.warmup_fraction * args.steps)
    common = dict(
        output_dir=output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=1,  # TRL's eval accuracy is a mean of batch means: exact per pair only at 1
        learning_rate=args.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=warmup_steps,
        max_length=args.max_length,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        save_strategy="steps",
        save_steps=args.eval_steps,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_steps=max(1, args.eval_steps // 5),
        disable_tqdm=True,  # Trainer's PrinterCallback prints each log line instead (readable in a log file)
        report_to="none",
        bf16=False,  # TRL's RewardConfig turns bf16 on by default, also on a CPU
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=True,  # both trainers' default; on this CPU also faster than storing activations
        seed=args.seed,
        data_seed=args.seed,
    )
    lora = dict(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=BACKBONE_TARGET_MODULES,
        task_type="SEQ_CLS",
    )
    set_seed(args.seed)  # the random heads (score / judge_head) and the LoRA initialisation
    if variant == "stock":
        model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        ids = ["chosen_ids", "rejected_ids"]  # pre-tokenised: TRL's own preparation skips tokenising and truncating
        return RewardTrainer(
            model=model,
            args=RewardConfig(**common),
            train_dataset=train.select_columns(ids),
            eval_dataset=validation.select_columns(ids),
            processing_class=tokenizer,
            peft_config=LoraConfig(**lora, modules_to_save=["score"]),
        )
    model = AdaJudgeForRewardModeling.from_backbone(backbone, tokenizer=tokenizer, dtype=torch.float32)
    return AdaJudgeRewardTrainer(
        model=model,
        args=AdaJudgeRewardConfig(**common, packed=True),
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        peft_config=LoraConfig(**lora),
    )


@torch.no_grad()
def score_pairs(trainer: RewardTrainer, dataset: datasets.Dataset) -> dict:
    """Per-pair correctness (chosen strictly above rejected) through the trainer's own collator and `compute_loss`,
    and for AdaJudge the mean routing weights."""
    columns = ["chosen_ids", "rejected_ids"] if type(trainer) is RewardTrainer else None
    loader = trainer.get_eval_dataloader(dataset.select_columns(columns) if columns else dataset)
    model = trainer.model.eval()
    correct, routing = [], []
    for inputs in loader:
        _, outputs = trainer.compute_loss(model, trainer._prepare_inputs(inputs), return_outputs=True)
        chosen, rejected = outputs.logits.squeeze(-1).float().chunk(2)
        correct += (chosen > rejected).float().tolist()
        if getattr(outputs, "routing_weights", None) is not None:
            routing.append(outputs.routing_weights.float())
    trainer._metrics["eval"].clear()  # compute_loss logged these batches as evaluation metrics
    result = {"correct": correct, "accuracy": 100 * statistics.mean(correct)}
    if routing:
        result["mean_pi"] = torch.cat(routing).mean(0).tolist()
    return result


def run_one(args) -> dict:
    """Train one variant on one seed, pick its checkpoint on validation, score the held-out pairs."""
    start = time.perf_counter()
    backbone = tiny_backbone() if args.backbone == "tiny" else resolve_backbone(args.backbone)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    pool, sources, held_out = load_pairs(args)
    train_index, validation_index = validation_split(sources, args.validation_fraction, args.seed)
    train = tokenised([pool[i] for i in train_index], tokenizer, args.max_length, "train")
    validation = tokenised([pool[i] for i in validation_index], tokenizer, args.max_length, "validation")
    tests = {name: tokenised(pairs, tokenizer, args.max_length, name) for name, pairs in held_out.items()}
    with tempfile.TemporaryDirectory(prefix="lora-trainers-") as output_dir:
        trainer = build_trainer(args.variant, args, backbone, tokenizer, train, validation, output_dir)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        train_start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - train_start
        best = trainer.state.best_model_checkpoint
        score_start = time.perf_counter()
        scores = {name: score_pairs(trainer, dataset) for name, dataset in tests.items()}
        score_seconds = time.perf_counter() - score_start
    evaluations = [
        {"step": h["step"], "accuracy": 100 * h["eval_accuracy"], "loss": h["eval_loss"]}
        for h in trainer.state.log_history
        if "eval_accuracy" in h
    ]
    return {
        "variant": args.variant,
        "seed": args.seed,
        "settings": {flag: getattr(args, flag) for flag in PROTOCOL_FLAGS},
        "train_pairs": {s: sum(sources[i] == s for i in train_index) for s in dict.fromkeys(sources)},
        "validation_pairs": {s: sum(sources[i] == s for i in validation_index) for s in dict.fromkeys(sources)},
        "train_ids_digest": ids_digest(trainer.train_dataset),
        "train_tokens": trainer._total_train_tokens,
        "trainable_params": trainable,
        "best_step": int(best.rsplit("-", 1)[1]) if best else None,
        "best_validation_accuracy": 100 * trainer.state.best_metric if best else None,
        "validation": evaluations,
        "train_seconds": train_seconds,
        "score_seconds": score_seconds,
        "seconds": time.perf_counter() - start,
        "evals": scores,
    }


def tiny_backbone() -> Path:
    from adajudge_hf.testing import save_tiny_causal_lm

    return save_tiny_causal_lm(Path(tempfile.mkdtemp()) / "tiny")


def correctness(runs: list[dict], variant: str, scopes: list[str], seeds: list[int]) -> torch.Tensor:
    """(S, N) per-pair correctness of `variant` over `seeds`, the pairs of `scopes` concatenated."""
    by_seed = {r["seed"]: r for r in runs if r["variant"] == variant}
    return torch.tensor([[c for scope in scopes for c in by_seed[s]["evals"][scope]["correct"]] for s in seeds])


def summarise(runs: list[dict], resamples: int) -> dict:
    settings = runs[0]["settings"]
    differing = [r for r in runs if r["settings"] != settings]
    if differing:
        raise SystemExit(
            f"{len(differing)} recorded runs used other settings than the first ({settings}); move the runs file "
            "aside or rerun them with the same flags."
        )
    seeds = sorted({r["seed"] for r in runs if r["variant"] == "adajudge"} & {r["seed"] for r in runs if r["variant"] == "stock"})  # fmt: skip
    if not seeds:
        raise SystemExit("No seed has runs of both variants yet; run the training commands first.")
    for seed in seeds:
        digests = {r["variant"]: r["train_ids_digest"] for r in runs if r["seed"] == seed}
        if len(set(digests.values())) != 1:
            raise SystemExit(f"Seed {seed}: the variants trained on different token ids ({digests}).")
    runs = [r for r in runs if r["seed"] in seeds]
    held_out = list(runs[0]["evals"])
    scopes = {"pooled": [n for n in held_out if n in TRAINING_SOURCES], **{n: [n] for n in held_out}}
    table = {}
    for variant in VARIANTS:
        mine = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
        table[variant] = {
            "best_step": [r["best_step"] for r in mine],
            "train_seconds": [r["train_seconds"] for r in mine],
        }
        table[variant]["validation"] = [r["best_validation_accuracy"] for r in mine]
        for scope, members in scopes.items():
            per_seed = (100 * correctness(runs, variant, members, seeds).mean(1)).tolist()
            table[variant][scope] = {
                "mean": statistics.mean(per_seed),
                "std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
                "per_seed": per_seed,
            }
    comparisons = []
    for scope, members in scopes.items():
        diff, low, high = hierarchical_bootstrap(
            correctness(runs, "adajudge", members, seeds), correctness(runs, "stock", members, seeds), resamples
        )
        comparisons.append({"a": "adajudge", "b": "stock", "scope": scope, "diff": 100 * diff, "ci_low": 100 * low,
                            "ci_high": 100 * high, "seeds": len(seeds), "pairs": len(correctness(runs, "stock", members, seeds)[0])})  # fmt: skip
    routing = {
        name: {r["seed"]: r["evals"][name]["mean_pi"] for r in runs if r["variant"] == "adajudge"} for name in held_out
    }
    return {"settings": settings, "seeds": seeds, "table": table, "comparisons": comparisons, "routing": routing,
            "runs": runs}  # fmt: skip


def lora_summary(results: dict, train_pairs: dict) -> dict:
    """Issue 14's machine-readable summary (percentage points), regime "lora"."""
    return {
        "protocol": {
            "seeds": len(results["seeds"]),
            "same_loss_for_all_poolings": False,  # TRL's plain BT for the stock model, the paper's objective for AdaJudge
            "epoch_selected_on_validation": all(r["best_step"] is not None for r in results["runs"]),
            "train_pairs": train_pairs,
            "backbone": results["settings"]["backbone"],
            "regime": "lora",
        },
        "comparisons": [
            {
                "a": SUMMARY_NAMES[c["a"]],
                "b": SUMMARY_NAMES[c["b"]],
                "scope": c["scope"],
                "diff": c["diff"],
                "ci_low": c["ci_low"],
                "ci_high": c["ci_high"],
            }
            for c in results["comparisons"]
        ],  # fmt: skip
    }


def write(results: dict, output_dir: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, table, seeds = results["settings"], results["table"], results["seeds"]
    train_pairs = results["runs"][0]["train_pairs"]
    slim_runs = [{**r, "evals": {k: {f: v for f, v in e.items() if f != "correct"} for k, e in r["evals"].items()}}
                 for r in results["runs"]]  # fmt: skip
    (output_dir / "lora_trainers.json").write_text(
        json.dumps({**results, "runs": slim_runs, "command": command}, indent=2) + "\n"
    )
    (output_dir / "lora_summary.json").write_text(json.dumps(lora_summary(results, train_pairs), indent=2) + "\n")
    scopes = [s for s in table["stock"] if isinstance(table["stock"][s], dict)]
    seen = settings["steps"] * settings["batch_size"]
    lines = [
        "# LoRA through the real trainers: AdaJudge vs TRL's stock reward model (SmolLM2-135M-Instruct)",
        "",
        f"Command: `{command}` (after the per-run commands in the script's docstring).",
        "",
        f"LoRA r={settings['lora_r']}, alpha={settings['lora_alpha']}, dropout={settings['lora_dropout']} on every "
        f"attention and MLP projection; {settings['steps']} steps of {settings['batch_size']} pairs ({seen} pairs, "
        f"drawn per seed from the training pool {train_pairs}), max_length {settings['max_length']} (longer pairs "
        f"truncated, the same ids for both), AdamW lr {settings['learning_rate']}, linear schedule, "
        f"{settings['warmup_fraction']:.0%} warm-up, fp32 on the CPU. Validation ({settings['validation_fraction']:.0%} "
        f"of each source, re-drawn per seed) every {settings['eval_steps']} steps, best accuracy kept "
        f"(`load_best_model_at_end`). Seeds {seeds}. Held-out pairs never used for selection.",
        "",
        "| variant | " + " | ".join(scopes) + " | validation (best) | best step per seed | train s per run |",
        "|---|" + "---|" * (len(scopes) + 3),
    ]
    for variant in VARIANTS:
        row = table[variant]
        cells = [f"{row[s]['mean']:.1f} ± {row[s]['std']:.1f} ({', '.join(f'{v:.1f}' for v in row[s]['per_seed'])})"
                 for s in scopes]  # fmt: skip
        lines.append(
            f"| {LABELS[variant]} | " + " | ".join(cells)
            + f" | {', '.join(f'{v:.1f}' for v in row['validation'])} | {', '.join(map(str, row['best_step']))} | "
            f"{statistics.median(row['train_seconds']):.0f} |"
        )  # fmt: skip
    lines += ["", "Accuracy % on the held-out pairs: mean ± std over seeds (per seed in brackets). AdaJudge − stock, "
              "percentage points, 95% hierarchical bootstrap (seeds and pairs resampled):", ""]  # fmt: skip
    for c in results["comparisons"]:
        lines.append(f"- {c['scope']} ({c['pairs']} pairs × {c['seeds']} seeds): {c['diff']:+.1f} "
                     f"[{c['ci_low']:+.1f}, {c['ci_high']:+.1f}]")  # fmt: skip
    lines += ["", "AdaJudge routing (mean pi over last / mean / attention experts) per seed:", ""]
    for name, per_seed in results["routing"].items():
        lines.append(
            f"- {name}: " + "; ".join(f"s{s} ({', '.join(f'{v:.2f}' for v in pi)})" for s, pi in per_seed.items())
        )
    (output_dir / "lora_trainers.md").write_text("\n".join(lines) + "\n")

    figure, axis = plt.subplots(figsize=(7, 2.6))
    for y, variant in enumerate(VARIANTS):
        for offset, scope in zip((-0.2, 0.0, 0.2), scopes):
            values = table[variant][scope]["per_seed"]
            axis.scatter(values, [y + offset] * len(values), s=14, label=scope if y == 0 else None,
                         color={"pooled": "black", "hh_rlhf_harmless": "tab:blue", "dpo_en_demo": "tab:orange"}.get(scope))  # fmt: skip
    axis.axvline(50, color="gray", lw=0.5, ls=":")
    axis.set_yticks(range(len(VARIANTS)), ["TRL stock", "AdaJudge"])
    axis.set_xlabel("held-out accuracy % (one dot per seed)")
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(output_dir / "lora_trainers.png", dpi=120)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, help="train this variant on --seed (one run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summarize", action="store_true", help="summarise the recorded runs, train nothing")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="Hub id, folder, or 'tiny' (smoke run)")
    parser.add_argument("--dpo-demo", help="LLaMA-Factory dpo_en_demo.json (the second training source)")
    parser.add_argument("--hh-train", type=int, default=800, help="HH pairs in the training pool (quality.py's)")
    parser.add_argument("--hh-test", type=int, default=100, help="held-out HH pairs (the first of quality.py's 500)")
    parser.add_argument(
        "--dpo-test", type=int, default=50, help="held-out dpo pairs scored (the first of quality.py's 100)"
    )
    parser.add_argument("--validation-fraction", type=float, default=0.04)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--warmup-fraction", type=float, default=0.1)
    parser.add_argument("--eval-steps", type=int, default=8, help="validation (and checkpoint) every N steps")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--runs-file", help="default: results/lora_trainers-runs.jsonl (-tiny for --backbone tiny)")
    parser.add_argument("--output-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-tiny" if args.backbone == "tiny" else ""
    runs_path = Path(args.runs_file) if args.runs_file else output_dir / f"lora_trainers-runs{suffix}.jsonl"
    runs = [json.loads(line) for line in runs_path.read_text().splitlines()] if runs_path.exists() else []

    if args.summarize:
        if not runs:
            raise SystemExit(f"No runs recorded in {runs_path}; run the training commands first (see --help).")
        results = summarise(runs, args.resamples)
        write(results, output_dir, "python benchmarks/lora_trainers.py --summarize")
        return
    if args.variant is None:
        parser.error("pass --variant (one training run) or --summarize")
    if any(r["variant"] == args.variant and r["seed"] == args.seed for r in runs):
        print(f"{args.variant} seed {args.seed} is already in {runs_path}; skipped.")
        return
    torch.set_num_threads(2)
    logging.getLogger("transformers.trainer").setLevel(logging.INFO)  # the run header: examples, steps, parameters
    logging.getLogger("adajudge_hf").setLevel(logging.INFO)
    run = run_one(args)
    with runs_path.open("a") as handle:
        handle.write(json.dumps(run) + "\n")
    print(f"{args.variant} seed {args.seed}: " + ", ".join(f"{k} {v['accuracy']:.1f}" for k, v in run["evals"].items())
          + f"; best step {run['best_step']} (validation {run['best_validation_accuracy']:.1f}); train {run['train_seconds']:.0f} s, scoring "
          f"{run['score_seconds']:.0f} s, total {run['seconds']:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
