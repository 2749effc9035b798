"""Does the pooling router send each kind of evidence to the right expert? A synthetic three-task suite.

Every pair's prompt carries a task marker; the evidence that decides the pair sits in a known place:
- END: only the last response token differs (GOOD vs BAD) -> the last-token expert;
- SPREAD: 60% vs 40% of the response tokens come from one class -> the mean expert;
- SPOT: the rejected response hides one ERR token somewhere in its middle -> the attention expert.
Chosen and rejected bodies are independent draws, so shared tokens do not cancel and each task needs its expert.
The tasks are mixed in one training set. The backbone is a frozen tiny random Llama (features computed once,
packed), so every head trains in seconds. For each head the script reports per-task held-out accuracy and, for
AdaJudge, the mean routing weights per task and whether their argmax is the expected expert.

    python benchmarks/synthetic.py                 # 2 seeds, all variants; writes benchmarks/results/synthetic.*
    python benchmarks/synthetic.py --seeds 0 --epochs 3 --train-per-task 200   # quick look
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import LlamaConfig

from adajudge_hf import AdaJudgeConfig, AdaJudgeForRewardModeling
from adajudge_hf.features import features_of_packed_rows, score_features, train_heads
from adajudge_hf.packing import pack_responses


RESULTS = Path(__file__).resolve().parent / "results"
TASKS = {"END": "last", "SPREAD": "mean", "SPOT": "attention"}  # task -> the expert that holds the evidence
PAD, BOS, GOOD, BAD, ERR = 0, 1, 5, 6, 7
MARKERS = {"END": 2, "SPREAD": 3, "SPOT": 4}
CLASS_P = list(range(8, 28))
NEUTRAL = list(range(28, 200))
VOCAB = 200

# name -> (AdaJudgeConfig overrides, train_heads overrides)
VARIANTS = {
    "last": ({"pooling": "last", "focal_gamma": 0.0, "entropy_floor_coef": 0.0}, {}),
    "mean": ({"pooling": "mean", "focal_gamma": 0.0, "entropy_floor_coef": 0.0}, {}),
    "attention": ({"pooling": "attention", "focal_gamma": 0.0, "entropy_floor_coef": 0.0}, {}),
    "adajudge": ({}, {}),
    "adajudge+aux": ({}, {"expert_aux_loss_coef": 1.0}),
    "adajudge+router_lr10": ({}, {"router_learning_rate_multiplier": 10.0}),
    "adajudge+aux+warmup": ({}, {"expert_aux_loss_coef": 1.0, "router_warmup_fraction": 0.3}),
}


def make_pair(task: str, rng: random.Random) -> tuple[list[int], list[int], list[int]]:
    prompt = [BOS] + [MARKERS[task]] * 3 + [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 8))]
    length = rng.randint(20, 60)

    def body(n: int) -> list[int]:
        return [rng.choice(NEUTRAL) for _ in range(n)]

    if task == "END":
        return prompt, body(length - 1) + [GOOD], body(length - 1) + [BAD]
    if task == "SPREAD":

        def mixture(share: float) -> list[int]:
            tokens = [rng.choice(CLASS_P) for _ in range(round(share * length))]
            tokens += body(length - len(tokens))
            rng.shuffle(tokens)
            return tokens

        return prompt, mixture(0.6), mixture(0.4)
    rejected = body(length)
    rejected[rng.randint(length // 4, 3 * length // 4)] = ERR
    return prompt, body(length), rejected


def make_split(per_task: int, seed: int) -> tuple[list, list[str]]:
    rng = random.Random(seed)
    rows, tasks = [], []
    for task in TASKS:
        for _ in range(per_task):
            prompt, chosen, rejected = make_pair(task, rng)
            rows.append((*pack_responses(prompt, [chosen, rejected]), False))
            tasks.append(task)
    return rows, tasks


def frozen_backbone() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, initializer_range=0.1, pad_token_id=PAD, max_position_embeddings=256,
    )  # fmt: skip


def build(seed: int, **overrides) -> AdaJudgeForRewardModeling:
    config = AdaJudgeConfig(text_config=frozen_backbone(), num_refinement_blocks=0, head_hidden_size=64, **overrides)
    torch.manual_seed(seed)
    model = AdaJudgeForRewardModeling._from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():  # give class-P tokens a shared direction, so SPREAD is visible in the states
        embeddings = model.model.get_input_embeddings().weight
        direction = torch.randn(embeddings.shape[1], generator=torch.Generator().manual_seed(seed)) * 0.1
        embeddings[CLASS_P] = 0.5 * embeddings[CLASS_P] + direction
    return model


def run(seeds: list[int], train_per_task: int, test_per_task: int, epochs: int, lr: float) -> dict:
    results = {"settings": locals(), "runs": []}
    for seed in seeds:
        backbone = build(seed)
        train_rows, _ = make_split(train_per_task, seed)
        test_rows, test_tasks = make_split(test_per_task, 10_000 + seed)
        train = features_of_packed_rows(backbone, train_rows, PAD, dtype=torch.float32, show_progress=False)
        test = features_of_packed_rows(backbone, test_rows, PAD, dtype=torch.float32, show_progress=False)
        for name, (config_overrides, train_overrides) in VARIANTS.items():
            start = time.perf_counter()
            model = build(seed, **config_overrides)
            model.model = backbone.model  # same frozen backbone; only the heads differ
            train_heads(
                model, train, epochs=epochs, batch_size=64, learning_rate=lr, seed=seed, show_progress=False,
                **train_overrides,
            )  # fmt: skip
            scored = score_features(model, test)
            correct = scored["rewards"][:, 0] > scored["rewards"][:, 1]
            run = {"seed": seed, "variant": name, "seconds": time.perf_counter() - start, "tasks": {}}
            for task, expert in TASKS.items():
                index = torch.tensor([t == task for t in test_tasks])
                entry = {"accuracy": 100 * correct[index].float().mean().item()}
                if model.config.pooling == "adaptive":
                    pi = scored["routing_weights"][index].reshape(-1, 3).mean(0)  # both responses of each pair
                    entry["mean_pi"] = dict(zip(model.config.experts, pi.tolist()))
                    entry["argmax_is_expected"] = model.config.experts[int(pi.argmax())] == expert
                run["tasks"][task] = entry
            results["runs"].append(run)
            summary = " ".join(f"{t} {e['accuracy']:.1f}" for t, e in run["tasks"].items())
            print(f"seed {seed} {name:>22}: {summary}", flush=True)
    return results


def write(results: dict, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "synthetic.json").write_text(json.dumps(results, indent=2, default=str))
    seeds = sorted({r["seed"] for r in results["runs"]})
    lines = [
        "# Synthetic routing suite",
        "",
        f"Seeds {seeds}; held-out accuracy % per task (seed values, then mean).",
        "",
    ]
    lines += ["| variant | END | SPREAD | SPOT | routing argmax right (END/SPREAD/SPOT) |", "|---|---|---|---|---|"]
    means = {}
    for name in VARIANTS:
        runs = [r for r in results["runs"] if r["variant"] == name]
        cells = []
        for task in TASKS:
            values = [r["tasks"][task]["accuracy"] for r in runs]
            means.setdefault(name, []).append(sum(values) / len(values))
            cells.append("/".join(f"{v:.1f}" for v in values) + f" ({sum(values) / len(values):.1f})")
        routing = "; ".join(
            "/".join("yes" if r["tasks"][t].get("argmax_is_expected") else "no" for t in TASKS) for r in runs
        )
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {routing if 'adajudge' in name else '-'} |")
    lines += ["", "Mean routing weights pi (last, mean, attention) per task, first seed:", ""]
    for run in results["runs"]:
        if run["seed"] == seeds[0] and "adajudge" in run["variant"]:
            pis = "; ".join(
                f"{t} ({', '.join(f'{v:.2f}' for v in e['mean_pi'].values())})" for t, e in run["tasks"].items()
            )
            lines.append(f"- {run['variant']}: {pis}")
    (output_dir / "synthetic.md").write_text("\n".join(lines) + "\n")

    figure, axis = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(VARIANTS)
    for i, (name, values) in enumerate(means.items()):
        axis.bar([t + i * width for t in range(len(TASKS))], values, width, label=name)
    axis.set_xticks([t + 0.4 - width / 2 for t in range(len(TASKS))], list(TASKS))
    axis.set_ylabel("held-out accuracy %")
    axis.set_ylim(40, 100)
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(output_dir / "synthetic.png", dpi=120)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--train-per-task", type=int, default=1000)
    parser.add_argument("--test-per-task", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--output-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = run(seeds, args.train_per_task, args.test_per_task, args.epochs, args.learning_rate)
    write(results, Path(args.output_dir))
    return results


if __name__ == "__main__":
    main()
