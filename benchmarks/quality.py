"""Quality of AdaJudge against static pooling and loss ablations, at the scale this machine allows.

Frozen SmolLM2-135M-Instruct features (computed once, prompts shared, cached on disk) feed every head; all heads see
the same mixed-source training pairs, budget and seeds:
- training: embedded HH-RLHF harmless pairs + LLaMA-Factory dpo_en_demo pairs (general chat), mixed;
- held-out: each source's own held-out pairs, JudgeBench (GPT-4o split) and an RM-Bench subset (chat, code, safety;
  the first `--rm-bench-per-file` items of each file);
- heads: stock linear last-token readout, last-token / mean / attention MLP heads (plain Bradley-Terry), AdaJudge
  (K = `--blocks`, focal + entropy floor), AdaJudge without refinement (K = 0), and a loss ablation at K = 0
  (plain BT / focal / focal + floor).
Reports mean +- std over seeds, paired-bootstrap 95% CIs of every difference to AdaJudge (over test units, with the
seed-averaged correctness of each unit), and routing diversity: per-response std of pi, mean pi per source/domain,
how often the entropy floor is active.

    python benchmarks/quality.py \
        --dpo-demo ../shared/benchmarks/llamafactory-dpo-demo/dpo_en_demo.json \
        --judgebench ../shared/benchmarks/judgebench/judgebench_gpt-4o-2024-05-13.jsonl \
        --rm-bench ../shared/benchmarks/rm-bench
"""

import argparse
import hashlib
import json
import random
import statistics
import time
from pathlib import Path

import datasets
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from adajudge_hf import AdaJudgeConfig, AdaJudgeForRewardModeling
from adajudge_hf.backbones import resolve_backbone
from adajudge_hf.embedded_data import load_embedded_preferences
from adajudge_hf.evaluation.data import load_benchmark
from adajudge_hf.evaluation.metrics import judgebench_scores, rm_bench_scores
from adajudge_hf.evaluation.report import as_chat, benchmark_examples
from adajudge_hf.features import PackedFeatures, extract_features, score_features, train_heads
from adajudge_hf.loss import routing_entropy


RESULTS = Path(__file__).resolve().parent / "results"
PLAIN_BT = {"focal_gamma": 0.0, "entropy_floor_coef": 0.0}
REFERENCE = "AdaJudge"


def variants(blocks: int) -> dict[str, dict]:
    return {
        "stock linear (last)": {"pooling": "last", "num_refinement_blocks": 0, "score_head": "linear", **PLAIN_BT},
        "last MLP": {"pooling": "last", "num_refinement_blocks": 0, **PLAIN_BT},
        "mean MLP": {"pooling": "mean", "num_refinement_blocks": 0, **PLAIN_BT},
        "attention MLP": {"pooling": "attention", "num_refinement_blocks": 0, **PLAIN_BT},
        REFERENCE: {"num_refinement_blocks": blocks},
        "AdaJudge K=0": {"num_refinement_blocks": 0},
        "AdaJudge K=0, plain BT": {"num_refinement_blocks": 0, **PLAIN_BT},
        "AdaJudge K=0, focal only": {"num_refinement_blocks": 0, "entropy_floor_coef": 0.0},
    }


def dpo_demo_pairs(path: str) -> list[dict]:
    """LLaMA-Factory's sharegpt-style pairs as TRL conversational pairs."""
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    pairs = []
    for row in json.loads(Path(path).read_text()):
        prompt = [{"role": roles[m["from"]], "content": m["value"]} for m in row["conversations"]]
        pairs.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": row["chosen"]["value"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]["value"]}],
            }
        )
    return pairs


def cached_features(name: str, key: dict, compute) -> list[PackedFeatures]:
    """Features saved under results/cache/ (git-ignored), keyed by what produced them."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = RESULTS / "cache" / f"{name}-{digest}.safetensors"
    if path.exists():
        tensors = load_file(path)
        lengths = tensors["lengths"].tolist()
        hidden, segments = tensors["hidden"].split(lengths), tensors["segments"].split(lengths)
        return [PackedFeatures(h, s, bool(t)) for h, s, t in zip(hidden, segments, tensors["truncated"].tolist())]
    features = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "hidden": torch.cat([f.hidden_states for f in features]),
            "segments": torch.cat([f.segment_ids for f in features]),
            "lengths": torch.tensor([f.hidden_states.shape[0] for f in features]),
            "truncated": torch.tensor([f.truncated for f in features]),
        },
        path,
    )
    return features


def groups_of(benchmark: str, dataset: datasets.Dataset, tokenizer) -> list:
    prompts, responses = benchmark_examples(benchmark, dataset)
    per_item = len(responses) // len(dataset)
    chats = [as_chat(tokenizer, p, r) for p, r in zip(prompts, responses)]
    return [
        (chats[i * per_item][0], [r for _, r in chats[i * per_item : (i + 1) * per_item]]) for i in range(len(dataset))
    ]


def unit_correctness(benchmark: str, dataset, rewards: torch.Tensor) -> tuple[list[float], dict]:
    """Per test unit correctness (pairs: 0/1; RM-Bench item: share of its 9 comparisons) and the official metrics."""
    if benchmark == "pairs":
        correct = (rewards[:, 0] > rewards[:, 1]).float().tolist()
        return correct, {"accuracy": 100 * statistics.mean(correct)}
    if benchmark == "judgebench":
        items = [{**row, "score_A": float(r[0]), "score_B": float(r[1])} for row, r in zip(dataset, rewards)]
        correct = [float(("A>B" if i["score_A"] > i["score_B"] else "B>A") == i["label"]) for i in items]
        return correct, judgebench_scores(items)
    items = [
        {"domain": row["domain"], "id": row["id"], "score_chosen": r[:3].tolist(), "score_rejected": r[3:].tolist()}
        for row, r in zip(dataset, rewards)
    ]
    correct = [float((r[:3, None] > r[None, 3:]).float().mean()) for r in rewards]
    return correct, rm_bench_scores(items)


def paired_bootstrap(
    a: list[float], b: list[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a - b over units and its 95% percentile interval."""
    rng = random.Random(seed)
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return 100 * sum(diffs) / n, 100 * means[int(0.025 * resamples)], 100 * means[int(0.975 * resamples) - 1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="id, folder, or 'tiny'")
    parser.add_argument("--dpo-demo", help="LLaMA-Factory dpo_en_demo.json (a second training source)")
    parser.add_argument("--judgebench", help="JudgeBench jsonl (GPT-4o split) or Hub id")
    parser.add_argument("--rm-bench", help="RM-Bench folder of *_filtered.json files or Hub id")
    parser.add_argument("--hh-train", type=int, default=800)
    parser.add_argument("--hh-test", type=int, default=400)
    parser.add_argument("--dpo-test", type=int, default=100)
    parser.add_argument("--rm-bench-per-file", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--variants", help="comma-separated subset of the heads to train (default: all)")
    parser.add_argument("--output-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    start = time.perf_counter()

    if args.backbone == "tiny":
        import tempfile

        from adajudge_hf.testing import save_tiny_causal_lm

        backbone = save_tiny_causal_lm(Path(tempfile.mkdtemp()) / "tiny")
    else:
        backbone = resolve_backbone(args.backbone)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    extractor = AdaJudgeForRewardModeling.from_backbone(backbone, tokenizer=tokenizer, num_refinement_blocks=0).eval()
    key = {"backbone": args.backbone, "max_length": args.max_length}

    # Training sources and their held-out pairs.
    hh_train = load_embedded_preferences("train").select(range(args.hh_train))
    hh_test = load_embedded_preferences("test").select(range(args.hh_test))
    train_groups = [(r["prompt"], [r["chosen"], r["rejected"]]) for r in hh_train]
    evals = {
        "HH-RLHF harmless (held-out)": (
            "pairs",
            hh_test,
            [(r["prompt"], [r["chosen"], r["rejected"]]) for r in hh_test],
        )
    }
    if args.dpo_demo:
        dpo = dpo_demo_pairs(args.dpo_demo)
        random.Random(0).shuffle(dpo)
        dpo_test, dpo_train = dpo[: args.dpo_test], dpo[args.dpo_test :]
        train_groups += [(r["prompt"], [r["chosen"], r["rejected"]]) for r in dpo_train]
        evals["dpo_en_demo (held-out)"] = (
            "pairs",
            datasets.Dataset.from_list(dpo_test),
            [(r["prompt"], [r["chosen"], r["rejected"]]) for r in dpo_test],
        )
    if args.judgebench:
        judgebench = load_benchmark("judgebench", args.judgebench)
        evals["JudgeBench (GPT-4o)"] = ("judgebench", judgebench, groups_of("judgebench", judgebench, tokenizer))
    if args.rm_bench:
        rm_bench = load_benchmark("rm-bench", args.rm_bench)
        # The first items of each file (safety-refuse and safety-response both represented), a fixed subset.
        counts: dict[str, int] = {}
        keep = [
            i
            for i, d in enumerate(rm_bench["domain"])
            if counts.setdefault(d, 0) < args.rm_bench_per_file and not counts.update({d: counts[d] + 1})
        ]
        rm_bench = rm_bench.select(keep)
        evals["RM-Bench subset"] = ("rm-bench", rm_bench, groups_of("rm-bench", rm_bench, tokenizer))
    sources = ["HH"] * len(hh_train) + ["dpo"] * (len(train_groups) - len(hh_train))

    train = cached_features("train", {**key, "n": len(train_groups), "dpo": args.dpo_demo, "hh": args.hh_train},
                            lambda: extract_features(extractor, tokenizer, train_groups, args.max_length))  # fmt: skip
    eval_features = {
        name: cached_features(
            name.split()[0],
            {**key, "name": name, "n": len(groups)},
            lambda groups=groups: extract_features(extractor, tokenizer, groups, args.max_length),
        )  # fmt: skip
        for name, (_, _, groups) in evals.items()
    }
    feature_seconds = time.perf_counter() - start
    print(f"features ready after {feature_seconds / 60:.1f} min ({len(train)} training pairs: {sources.count('HH')} HH, "
          f"{sources.count('dpo')} dpo)", flush=True)  # fmt: skip

    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        chosen = variants(args.blocks)
        if args.variants:
            chosen = {name: chosen[name] for name in args.variants.split(",")}
        for name, fields in chosen.items():
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            config = AdaJudgeConfig(
                text_config=extractor.config.text_config,
                pad_token_id=extractor.config.pad_token_id,
                response_template=extractor.config.response_template,
                **fields,
            )
            model = AdaJudgeForRewardModeling(config)
            history = train_heads(
                model, train, epochs=args.epochs, learning_rate=args.learning_rate, seed=seed, show_progress=False
            )
            run = {"seed": seed, "variant": name, "train_seconds": time.perf_counter() - t0,
                   "floor_active": statistics.mean(h["floor_active"] for h in history[-20:]), "evals": {}}  # fmt: skip
            for eval_name, (benchmark, dataset, _) in evals.items():
                scored = score_features(model, eval_features[eval_name])
                correct, metrics = unit_correctness(benchmark, dataset, scored["rewards"])
                entry = {
                    "correct": correct,
                    "score": metrics.get("overall", metrics.get("accuracy")),
                    "metrics": metrics,
                }
                if model.config.pooling == "adaptive":
                    pi = scored["routing_weights"].flatten(0, 1)  # (responses, E)
                    entry["mean_pi"] = pi.mean(0).tolist()
                    entry["pi_std_per_response"] = pi.std(0).tolist()
                    entry["entropy_below_floor"] = float(
                        (routing_entropy(pi) < model.config.entropy_floor).float().mean()
                    )
                    if benchmark == "rm-bench":
                        domains = [d for d in dataset["domain"] for _ in range(6)]
                        entry["mean_pi_by_domain"] = {
                            d: pi[torch.tensor([x.startswith(d) for x in domains])].mean(0).tolist()
                            for d in ("chat", "code", "safety")
                        }
                run["evals"][eval_name] = entry
            runs.append(run)
            print(f"seed {seed} {name:>26}: " + ", ".join(f"{k.split()[0]} {v['score']:.1f}" for k, v in run["evals"].items())
                  + f"  ({run['train_seconds']:.0f} s)", flush=True)  # fmt: skip
    results = summarise(runs, list(evals), vars(args), feature_seconds, time.perf_counter() - start)
    write(results, Path(args.output_dir))
    return results


def summarise(runs: list[dict], eval_names: list[str], settings: dict, feature_seconds: float, seconds: float) -> dict:
    names = list(dict.fromkeys(r["variant"] for r in runs))
    table = {}
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        row = {}
        for eval_name in eval_names:
            scores = [r["evals"][eval_name]["score"] for r in mine]
            row[eval_name] = {
                "mean": statistics.mean(scores),
                "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            }
            if name != REFERENCE:
                reference = [r for r in runs if r["variant"] == REFERENCE]
                ref_units = [statistics.mean(u) for u in zip(*(r["evals"][eval_name]["correct"] for r in reference))]
                my_units = [statistics.mean(u) for u in zip(*(r["evals"][eval_name]["correct"] for r in mine))]
                row[eval_name]["diff_to_adajudge"] = paired_bootstrap(my_units, ref_units)
        table[name] = row
    routing = {}
    for name in names:
        adaptive = [r for r in runs if r["variant"] == name and "mean_pi" in next(iter(r["evals"].values()))]
        if adaptive:
            routing[name] = {
                eval_name: {
                    "mean_pi": [statistics.mean(v) for v in zip(*(r["evals"][eval_name]["mean_pi"] for r in adaptive))],
                    "pi_std_per_response": [statistics.mean(v) for v in zip(*(r["evals"][eval_name]["pi_std_per_response"] for r in adaptive))],
                    "entropy_below_floor": statistics.mean(r["evals"][eval_name]["entropy_below_floor"] for r in adaptive),
                    **({"mean_pi_by_domain": adaptive[0]["evals"][eval_name]["mean_pi_by_domain"]}
                       if "mean_pi_by_domain" in adaptive[0]["evals"][eval_name] else {}),
                }
                for eval_name in eval_names
            }  # fmt: skip
    for run in runs:
        for entry in run["evals"].values():
            entry.pop("correct")
    return {"settings": settings, "table": table, "routing": routing, "runs": runs,
            "feature_seconds": feature_seconds, "seconds": seconds}  # fmt: skip


def write(results: dict, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "quality.json").write_text(json.dumps(results, indent=2))
    eval_names = list(next(iter(results["table"].values())))
    lines = ["# Quality at CPU scale (frozen SmolLM2-135M features)", "",
             f"Seeds {results['settings']['seeds']}; mean +- std over seeds; in brackets the difference to AdaJudge "
             "with its paired-bootstrap 95% CI (percentage points, over test units).", "",
             "| head | " + " | ".join(eval_names) + " |", "|---|" + "---|" * len(eval_names)]  # fmt: skip
    for name, row in results["table"].items():
        cells = []
        for eval_name in eval_names:
            cell = row[eval_name]
            text = f"{cell['mean']:.1f} +- {cell['std']:.1f}"
            if "diff_to_adajudge" in cell:
                d, lo, hi = cell["diff_to_adajudge"]
                text += f" [{d:+.1f} ({lo:+.1f}, {hi:+.1f})]"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Routing (mean pi over last / mean / attention; per-response std of pi; share of responses whose "
              "routing entropy is below the floor):", ""]  # fmt: skip
    for name, per_eval in results["routing"].items():
        for eval_name, r in per_eval.items():
            lines.append(f"- {name}, {eval_name}: pi {[round(v, 3) for v in r['mean_pi']]}, std "
                         f"{[round(v, 3) for v in r['pi_std_per_response']]}, below floor {r['entropy_below_floor']:.1%}"
                         + (f", by domain {json.dumps({k: [round(x, 3) for x in v] for k, v in r['mean_pi_by_domain'].items()})}"
                            if "mean_pi_by_domain" in r else ""))  # fmt: skip
    lines += ["", f"Features {results['feature_seconds'] / 60:.1f} min, total {results['seconds'] / 60:.1f} min."]
    (output_dir / "quality.md").write_text("\n".join(lines) + "\n")

    figure, axes = plt.subplots(1, len(eval_names), figsize=(3.2 * len(eval_names), 3.6), sharey=False)
    axes = axes if len(eval_names) > 1 else [axes]
    for axis, eval_name in zip(axes, eval_names):
        names = list(results["table"])
        means = [results["table"][n][eval_name]["mean"] for n in names]
        stds = [results["table"][n][eval_name]["std"] for n in names]
        axis.barh(
            range(len(names)), means, xerr=stds, color=["tab:red" if n == REFERENCE else "tab:gray" for n in names]
        )
        axis.set_yticks(range(len(names)), names if axis is axes[0] else [""] * len(names), fontsize=7)
        axis.set_title(eval_name, fontsize=8)
        axis.set_xlim(min(means) - 10, max(means) + 5)
    figure.tight_layout()
    figure.savefig(output_dir / "quality.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
