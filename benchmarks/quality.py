"""Quality of AdaJudge against static pooling, under one fair protocol, at the scale this machine allows.

Frozen SmolLM2-135M-Instruct features (computed once, prompts shared, cached in results/cache/) feed every head.
Protocol, the same for every variant:
- data: one training pool (embedded HH-RLHF harmless pairs + LLaMA-Factory dpo_en_demo pairs, mixed); per seed a
  validation split is carved from it (`--validation-fraction` of each source); held-out test pairs of each source
  never enter training or selection;
- budget: at most `--epochs` epochs, batch 16, lr `--learning-rate`; the validation pairs are scored
  `--evaluations-per-epoch` times per epoch and each head keeps its best check (validation accuracy, ties to the
  lower Bradley-Terry loss): `load_best_model_at_end` on validation only;
- loss: focal Bradley-Terry (gamma 2) for every pooling; the entropy floor exists only with a router, so AdaJudge
  is reported with it (`adajudge`, the paper's objective) and without it (`adajudge_no_floor`);
- seeds: `--seeds` (head init, shuffling and the validation split).
The loss ablation (plain BT / focal / focal + floor) is a separate table. Every difference to AdaJudge gets a 95%
interval from a hierarchical bootstrap that resamples seeds and test pairs (`adajudge_hf.comparison`), per source and
pooled over all held-out pairs of the training sources. Routing: mean pi per source for every seed and its spread.

    flock /tmp/adajudge-heavy.lock python benchmarks/quality.py \
        --dpo-demo ../shared/benchmarks/llamafactory-dpo-demo/dpo_en_demo.json

writes results/quality.{json,md,png}, results/quality_summary.json and results/quality-runs.jsonl (one line per
trained head; an interrupted run resumes from it with `--resume`). `--judgebench` / `--rm-bench` add those
out-of-distribution sets (at chance for every head on this backbone; see results/README history).
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
from adajudge_hf.comparison import hierarchical_bootstrap
from adajudge_hf.embedded_data import load_embedded_preferences
from adajudge_hf.evaluation.data import load_benchmark
from adajudge_hf.evaluation.metrics import judgebench_scores, rm_bench_scores
from adajudge_hf.evaluation.report import as_chat, benchmark_examples
from adajudge_hf.features import PackedFeatures, extract_features, score_features, train_heads
from adajudge_hf.loss import routing_entropy


RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = "adajudge"
NO_FLOOR = {"entropy_floor_coef": 0.0}  # focal BT (the config default, gamma 2) without the router's entropy floor
PLAIN_BT = {"focal_gamma": 0.0, "entropy_floor_coef": 0.0}
TRAINING_SOURCES = ("hh_rlhf_harmless", "dpo_en_demo")


def variants(blocks: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """(main comparison: the same focal loss for every pooling, loss ablation) -> AdaJudgeConfig fields."""
    static = {"num_refinement_blocks": 0, **NO_FLOOR}
    main = {
        "stock_linear": {"pooling": "last", "score_head": "linear", **static},
        "last_mlp": {"pooling": "last", **static},
        "mean_mlp": {"pooling": "mean", **static},
        "attention_mlp": {"pooling": "attention", **static},
        REFERENCE: {"num_refinement_blocks": blocks},
        "adajudge_no_floor": {"num_refinement_blocks": blocks, **NO_FLOOR},
        "adajudge_k0": {"num_refinement_blocks": 0},
        "adajudge_k0_no_floor": {"num_refinement_blocks": 0, **NO_FLOOR},
    }
    ablation = {
        "stock_linear_plain_bt": {**main["stock_linear"], **PLAIN_BT},
        "last_mlp_plain_bt": {**main["last_mlp"], **PLAIN_BT},
        "adajudge_k0_plain_bt": {"num_refinement_blocks": 0, **PLAIN_BT},
    }
    return main, ablation


# Loss ablation rows: (pooling family, plain BT variant, focal variant, focal + floor variant or None).
ABLATION_ROWS = (
    ("stock linear readout", "stock_linear_plain_bt", "stock_linear", None),
    ("last-token MLP", "last_mlp_plain_bt", "last_mlp", None),
    ("AdaJudge K=0", "adajudge_k0_plain_bt", "adajudge_k0_no_floor", "adajudge_k0"),
)


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


def unit_correctness(benchmark: str, dataset, rewards: torch.Tensor) -> tuple[list[float], float]:
    """Per test unit correctness (pairs: 0/1, ties wrong; RM-Bench item: share of its 9 comparisons), headline %."""
    if benchmark == "pairs":
        correct = (rewards[:, 0] > rewards[:, 1]).float().tolist()
        return correct, 100 * statistics.mean(correct)
    if benchmark == "judgebench":
        items = [{**row, "score_A": float(r[0]), "score_B": float(r[1])} for row, r in zip(dataset, rewards)]
        correct = [float(("A>B" if i["score_A"] > i["score_B"] else "B>A") == i["label"]) for i in items]
        return correct, judgebench_scores(items)["overall"]
    items = [
        {"domain": row["domain"], "id": row["id"], "score_chosen": r[:3].tolist(), "score_rejected": r[3:].tolist()}
        for row, r in zip(dataset, rewards)
    ]
    correct = [float((r[:3, None] > r[None, 3:]).float().mean()) for r in rewards]
    return correct, rm_bench_scores(items)["overall"]


def validation_split(sources: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, validation) of the training pool: `fraction` of each source goes to validation."""
    rng = random.Random(1_000 + seed)
    train, validation = [], []
    for source in dict.fromkeys(sources):
        members = [i for i, s in enumerate(sources) if s == source]
        rng.shuffle(members)
        cut = round(fraction * len(members))
        validation += members[:cut]
        train += members[cut:]
    return sorted(train), sorted(validation)


def load_data(args, tokenizer, extractor) -> tuple[list, list[str], dict, dict]:
    """Training pool features and sources, and the held-out sets: name -> (benchmark, dataset, features)."""
    key = {"backbone": args.backbone, "max_length": args.max_length}
    hh = load_embedded_preferences("train").select(range(args.hh_train))
    hh_test = load_embedded_preferences("test").select(range(args.hh_test))
    pool = [(r["prompt"], [r["chosen"], r["rejected"]]) for r in hh]
    sources = ["hh_rlhf_harmless"] * len(pool)
    held_out = {"hh_rlhf_harmless": ("pairs", hh_test, [(r["prompt"], [r["chosen"], r["rejected"]]) for r in hh_test])}
    if args.dpo_demo:
        dpo = dpo_demo_pairs(args.dpo_demo)
        random.Random(0).shuffle(dpo)
        dpo_test, dpo_train = dpo[: args.dpo_test], dpo[args.dpo_test :]
        pool += [(r["prompt"], [r["chosen"], r["rejected"]]) for r in dpo_train]
        sources += ["dpo_en_demo"] * len(dpo_train)
        held_out["dpo_en_demo"] = (
            "pairs", datasets.Dataset.from_list(dpo_test), [(r["prompt"], [r["chosen"], r["rejected"]]) for r in dpo_test]
        )  # fmt: skip
    if args.judgebench:
        judgebench = load_benchmark("judgebench", args.judgebench)
        held_out["judgebench"] = ("judgebench", judgebench, groups_of("judgebench", judgebench, tokenizer))
    if args.rm_bench:
        rm_bench = load_benchmark("rm-bench", args.rm_bench)
        counts: dict[str, int] = {}  # the first items of each file, a fixed subset
        keep = [
            i
            for i, d in enumerate(rm_bench["domain"])
            if counts.setdefault(d, 0) < args.rm_bench_per_file and not counts.update({d: counts[d] + 1})
        ]
        rm_bench = rm_bench.select(keep)
        held_out["rm_bench"] = ("rm-bench", rm_bench, groups_of("rm-bench", rm_bench, tokenizer))
    train = cached_features(
        "train",
        {**key, "n": len(pool), "dpo": args.dpo_demo, "hh": args.hh_train},
        lambda: extract_features(extractor, tokenizer, pool, args.max_length),
    )
    evals = {
        name: (
            benchmark,
            dataset,
            cached_features(
                name,
                {**key, "name": name, "n": len(groups)},
                lambda groups=groups: extract_features(extractor, tokenizer, groups, args.max_length),
            ),
        )
        for name, (benchmark, dataset, groups) in held_out.items()
    }
    return train, sources, evals


def train_one(name: str, fields: dict, seed: int, args, extractor, train, validation, evals) -> dict:
    """Train one head on one seed, select its checkpoint on validation, score every held-out set."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    config = AdaJudgeConfig(
        text_config=extractor.config.text_config,
        pad_token_id=extractor.config.pad_token_id,
        response_template=extractor.config.response_template,
        **fields,
    )
    model = AdaJudgeForRewardModeling(config)
    result = train_heads(
        model,
        train,
        validation_features=validation,
        evaluations_per_epoch=args.evaluations_per_epoch,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        seed=seed,
        show_progress=False,
    )
    run = {
        "seed": seed,
        "variant": name,
        "train_seconds": time.perf_counter() - t0,
        "best_epoch": result.best_epoch,
        "validation": result.evaluations,
        "floor_ever_active": any(h["floor_active"] > 0 for h in result.history),
        "evals": {},
    }
    for eval_name, (benchmark, dataset, features) in evals.items():
        scored = score_features(model, features)
        correct, score = unit_correctness(benchmark, dataset, scored["rewards"])
        entry = {"correct": correct, "score": score}
        if model.config.pooling == "adaptive":
            pi = scored["routing_weights"].flatten(0, 1)  # (responses, E)
            entry["mean_pi"] = pi.mean(0).tolist()
            entry["pi_std_per_response"] = pi.std(0).tolist()
            entry["entropy_below_floor"] = float((routing_entropy(pi) < model.config.entropy_floor).float().mean())
        run["evals"][eval_name] = entry
    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="id, folder, or 'tiny'")
    parser.add_argument("--dpo-demo", help="LLaMA-Factory dpo_en_demo.json (a second training source)")
    parser.add_argument("--judgebench", help="JudgeBench jsonl (GPT-4o split) or Hub id (held-out only)")
    parser.add_argument("--rm-bench", help="RM-Bench folder of *_filtered.json files or Hub id (held-out only)")
    parser.add_argument("--hh-train", type=int, default=800, help="HH pairs in the training pool")
    parser.add_argument("--hh-test", type=int, default=500)
    parser.add_argument("--dpo-test", type=int, default=100)
    parser.add_argument("--rm-bench-per-file", type=int, default=10)
    parser.add_argument("--validation-fraction", type=float, default=0.15)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--blocks", type=int, default=2, help="K of `adajudge`")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=2, help="most epochs; the checkpoint is chosen on validation")
    parser.add_argument("--evaluations-per-epoch", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--variants", help="comma-separated subset of the variants to train (default: all)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--resume", action="store_true", help="keep the runs already in quality-runs.jsonl")
    parser.add_argument(
        "--no-train", action="store_true", help="with --resume: summarise the recorded runs, train nothing new"
    )
    parser.add_argument("--output-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    start = time.perf_counter()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    if args.backbone == "tiny":
        import tempfile

        from adajudge_hf.testing import save_tiny_causal_lm

        backbone = save_tiny_causal_lm(Path(tempfile.mkdtemp()) / "tiny")
    else:
        backbone = resolve_backbone(args.backbone)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    extractor = AdaJudgeForRewardModeling.from_backbone(backbone, tokenizer=tokenizer, num_refinement_blocks=0).eval()
    pool, sources, evals = load_data(args, tokenizer, extractor)
    feature_seconds = time.perf_counter() - start
    print(f"features ready after {feature_seconds / 60:.1f} min: pool of {len(pool)} pairs "
          f"({', '.join(f'{s} {sources.count(s)}' for s in dict.fromkeys(sources))})", flush=True)  # fmt: skip

    main_variants, ablation = variants(args.blocks)
    chosen = {**main_variants, **ablation}
    if args.variants:
        unknown = set(args.variants.split(",")) - set(chosen)
        if unknown:
            raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {sorted(chosen)}")
        chosen = {name: chosen[name] for name in args.variants.split(",")}
    runs_path = output_dir / "quality-runs.jsonl"
    runs = (
        [json.loads(line) for line in runs_path.read_text().splitlines()] if args.resume and runs_path.exists() else []
    )
    if not args.resume:
        runs_path.write_text("")
    done = {(r["seed"], r["variant"]) for r in runs}
    seeds = [int(s) for s in args.seeds.split(",")]
    # Cheap heads first for every seed, the refinement blocks last: an interrupted run still has every seed of them.
    order = sorted(chosen, key=lambda n: chosen[n].get("num_refinement_blocks", 0) > 0)
    for name in order:
        for seed in seeds:
            if (seed, name) in done:
                continue
            train_index, validation_index = validation_split(sources, args.validation_fraction, seed)
            train = [pool[i] for i in train_index]
            validation = [pool[i] for i in validation_index]
            reused = name == "adajudge_no_floor" and next(
                (r for r in runs if r["seed"] == seed and r["variant"] == REFERENCE and not r["floor_ever_active"]),
                None,
            )
            if args.no_train and not reused:
                continue
            if reused:
                # The floor's hinge was zero at every step of `adajudge`, so its gradient was zero too: the run
                # without it is the same computation, bit for bit. Record it instead of spending CPU on it again.
                run = {**reused, "variant": name, "identical_to": REFERENCE}
            else:
                run = train_one(name, chosen[name], seed, args, extractor, train, validation, evals)
            runs.append(run)
            with runs_path.open("a") as handle:
                handle.write(json.dumps(run) + "\n")
            print(f"seed {seed} {name:>22}: " + ", ".join(f"{k} {v['score']:.1f}" for k, v in run["evals"].items())
                  + f"  (best epoch {run['best_epoch']}, {run['train_seconds']:.0f} s)", flush=True)  # fmt: skip
    runs = [r for r in runs if r["variant"] in chosen and r["seed"] in seeds]
    settings = {
        **vars(args),
        "train_pairs": {s: round((1 - args.validation_fraction) * sources.count(s)) for s in dict.fromkeys(sources)},
        "validation_pairs": {s: round(args.validation_fraction * sources.count(s)) for s in dict.fromkeys(sources)},
        "held_out_units": {name: len(features) for name, (_, _, features) in evals.items()},
    }
    results = summarise(runs, list(evals), settings, args.resamples)
    results["feature_seconds"], results["seconds"] = feature_seconds, time.perf_counter() - start
    write(results, output_dir)
    return results


def correctness(runs: list[dict], variant: str, scopes: list[str], seeds: list[int]) -> torch.Tensor:
    """(S, N) per-unit correctness of `variant` over `seeds`, the units of `scopes` concatenated."""
    by_seed = {r["seed"]: r for r in runs if r["variant"] == variant}
    return torch.tensor([[c for scope in scopes for c in by_seed[s]["evals"][scope]["correct"]] for s in seeds])


def summarise(runs: list[dict], eval_names: list[str], settings: dict, resamples: int) -> dict:
    names = list(dict.fromkeys(r["variant"] for r in runs))
    pooled = [n for n in eval_names if n in TRAINING_SOURCES]
    scopes = {"pooled": pooled, **{n: [n] for n in eval_names}}
    seeds_of = {n: sorted(r["seed"] for r in runs if r["variant"] == n) for n in names}
    table, comparisons = {}, []
    for name in names:
        table[name] = {}
        for scope, members in scopes.items():
            per_seed = (100 * correctness(runs, name, members, seeds_of[name]).mean(1)).tolist()
            if members == [scope] and scope not in TRAINING_SOURCES:  # JudgeBench / RM-Bench: the official score
                per_seed = [next(r for r in runs if r["variant"] == name and r["seed"] == s)["evals"][scope]["score"]
                            for s in seeds_of[name]]  # fmt: skip
            table[name][scope] = {
                "mean": statistics.mean(per_seed),
                "std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
                "per_seed": per_seed,
            }
        table[name]["best_epoch"] = [
            r["best_epoch"] for r in sorted(runs, key=lambda r: r["seed"]) if r["variant"] == name
        ]
        table[name]["seeds"] = seeds_of[name]
    if REFERENCE in names:
        for name in names:
            if name == REFERENCE:
                continue
            common = sorted(set(seeds_of[name]) & set(seeds_of[REFERENCE]))
            for scope, members in scopes.items():
                diff, low, high = hierarchical_bootstrap(
                    correctness(runs, REFERENCE, members, common),
                    correctness(runs, name, members, common),
                    resamples=resamples,
                )
                comparisons.append({"a": REFERENCE, "b": name, "scope": scope, "diff": 100 * diff,
                                    "ci_low": 100 * low, "ci_high": 100 * high, "seeds": len(common)})  # fmt: skip
    routing = {}
    for name in names:
        adaptive = [r for r in runs if r["variant"] == name and "mean_pi" in next(iter(r["evals"].values()))]
        if not adaptive:
            continue
        routing[name] = {}
        for eval_name in eval_names:
            per_seed = {r["seed"]: r["evals"][eval_name]["mean_pi"] for r in adaptive}
            columns = list(zip(*per_seed.values()))
            routing[name][eval_name] = {
                "mean_pi_per_seed": per_seed,
                "mean_pi": [statistics.mean(c) for c in columns],
                "mean_pi_std_across_seeds": [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns],
                "pi_std_per_response": [statistics.mean(v) for v in zip(*(r["evals"][eval_name]["pi_std_per_response"] for r in adaptive))],
                "entropy_below_floor_per_seed": {r["seed"]: r["evals"][eval_name]["entropy_below_floor"] for r in adaptive},
            }  # fmt: skip
    return {"settings": settings, "table": table, "comparisons": comparisons, "routing": routing, "runs": runs}


def protocol_summary(results: dict) -> dict:
    """The machine-readable summary of issue 14's schema (percentage points)."""
    settings = results["settings"]
    main, _ = variants(settings["blocks"])
    focal_for_all = all(main[n].get("focal_gamma", 2.0) == 2.0 for n in main)
    return {
        "protocol": {
            "seeds": len({r["seed"] for r in results["runs"]}),
            "same_loss_for_all_poolings": focal_for_all,
            "epoch_selected_on_validation": all(r["best_epoch"] is not None for r in results["runs"]),
            "train_pairs": settings["train_pairs"],
            "backbone": settings["backbone"],
            "regime": "frozen",
        },
        "comparisons": [{k: c[k] for k in ("a", "b", "scope", "diff", "ci_low", "ci_high", "seeds")} for c in results["comparisons"]],
    }  # fmt: skip


def write(results: dict, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, table = results["settings"], results["table"]
    slim_runs = [{**r, "evals": {k: {f: v for f, v in e.items() if f != "correct"} for k, e in r["evals"].items()}}
                 for r in results["runs"]]  # fmt: skip
    (output_dir / "quality.json").write_text(json.dumps({**results, "runs": slim_runs}, indent=2))
    (output_dir / "quality_summary.json").write_text(json.dumps(protocol_summary(results), indent=2) + "\n")
    scopes = [s for s in next(iter(table.values())) if s not in ("best_epoch", "seeds")]
    diff = {(c["b"], c["scope"]): c for c in results["comparisons"]}
    main, ablation = variants(settings["blocks"])

    def cell(name: str, scope: str) -> str:
        text = f"{table[name][scope]['mean']:.1f} ± {table[name][scope]['std']:.1f}"
        if (name, scope) in diff:
            c = diff[(name, scope)]
            on = f"; on the {c['seeds']} seeds both have" if c["seeds"] < len(seeds) else ""
            text += f" ({-c['diff']:+.1f} [{-c['ci_high']:+.1f}, {-c['ci_low']:+.1f}]{on})"
        return text

    seeds = sorted({r["seed"] for r in results["runs"]})
    lines = [
        "# Quality at CPU scale (frozen SmolLM2-135M features), fair protocol",
        "",
        f"Training pool per source after the validation carve: {settings['train_pairs']}; validation pairs "
        f"{settings['validation_pairs']} (re-drawn per seed); held-out units {settings['held_out_units']}. Seeds "
        f"{seeds}. At most {settings['epochs']} epochs, lr {settings['learning_rate']}, batch 16; validation checked "
        f"{settings['evaluations_per_epoch']}x per epoch and the best check kept (accuracy, ties to BT loss). Focal "
        "BT (gamma 2) for every pooling; the entropy floor only where there is a router.",
        "",
        "Accuracy % (mean ± std over seeds); in brackets the difference variant − AdaJudge "
        f"(K={settings['blocks']}, focal + floor) with its 95% hierarchical-bootstrap interval (seeds and pairs "
        "resampled). `pooled` = every held-out pair of the training sources.",
        "",
        "| variant | " + " | ".join(scopes) + " | best epoch per seed |",
        "|---|" + "---|" * (len(scopes) + 1),
    ]
    for name in [n for n in main if n in table]:
        note = " (identical run: floor never active)" if any(r.get("identical_to") for r in results["runs"] if r["variant"] == name) else ""  # fmt: skip
        if len(table[name]["seeds"]) < len(seeds):
            note += f" (only seeds {table[name]['seeds']}: its mean, std and differences are over those seeds)"
        epochs = " / ".join(f"{e:.2f}" for e in table[name]["best_epoch"])
        lines.append(f"| {name}{note} | " + " | ".join(cell(name, s) for s in scopes) + f" | {epochs} |")
    lines += ["", "## Loss ablation (same protocol; pooled held-out accuracy %, mean ± std over seeds)", "",
              "| pooling | plain BT | focal (gamma 2) | focal + entropy floor |", "|---|---|---|---|"]  # fmt: skip
    for label, *names in ABLATION_ROWS:
        cells = [cell(n, "pooled") if n in table else "–" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Routing per seed (mean pi over last / mean / attention on each held-out set)", ""]
    for name, per_eval in results["routing"].items():
        for eval_name, r in per_eval.items():
            per_seed = "; ".join(
                f"s{s} ({', '.join(f'{v:.2f}' for v in pi)})" for s, pi in r["mean_pi_per_seed"].items()
            )
            spread = ", ".join(f"{m:.2f} ± {s:.2f}" for m, s in zip(r["mean_pi"], r["mean_pi_std_across_seeds"]))
            below = max(r["entropy_below_floor_per_seed"].values())
            lines.append(f"- {name}, {eval_name}: mean over seeds ({spread}); {per_seed}; per-response std of pi "
                         f"{', '.join(f'{v:.3f}' for v in r['pi_std_per_response'])}; entropy below the floor for at "
                         f"most {below:.0%} of responses in any seed")  # fmt: skip
    lines += ["", f"Features {results['feature_seconds'] / 60:.1f} min, total {results['seconds'] / 60:.1f} min."]
    history = output_dir / "quality-history.md"  # what earlier runs showed and what was decided after seeing them
    if history.exists():
        lines += ["", history.read_text().strip()]
    (output_dir / "quality.md").write_text("\n".join(lines) + "\n")

    names = [n for n in list(main) + list(ablation) if n in table]
    figure, axis = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    for y, name in enumerate(names):
        values = table[name]["pooled"]["per_seed"]
        axis.scatter(values, [y] * len(values), s=12, color="tab:red" if name == REFERENCE else "tab:gray")
        axis.errorbar(table[name]["pooled"]["mean"], y, xerr=table[name]["pooled"]["std"], fmt="|k", capsize=3)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.set_xlabel("pooled held-out accuracy % (dots: seeds; bar: mean ± std)")
    figure.tight_layout()
    figure.savefig(output_dir / "quality.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
