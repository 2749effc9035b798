"""Cost of the AdaJudge heads against the stock reward model on the same backbone and batches.

Measures, interleaved in one process (median of `--reps` after a warm-up), the forward time of
`AutoModelForSequenceClassification` (stock: linear readout of the last token) and of AdaJudge for each K and pooling,
over sequence lengths; the time of one full training step (forward + backward + AdamW, 8 pairs) at one length; and, in
fresh subprocesses, the peak resident memory of a forward + training step. Each ratio is printed next to its FLOP-share
lower bound (the extra matmul FLOPs of the refinement blocks relative to the backbone). Analytic parameter and FLOP
shares are also given for Qwen3-8B, Qwen3-4B and Phi-3.5-mini shapes (built on the meta device, nothing downloaded).

    python benchmarks/overhead.py                       # SmolLM2-135M (resolved offline), writes benchmarks/results/
    python benchmarks/overhead.py --backbone tiny --lengths 64 --reps 2 --blocks 0,3   # seconds-long smoke run
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, LlamaConfig, Qwen3Config

import adajudge_hf  # noqa: F401  (registers the Auto classes)
from adajudge_hf import AdaJudgeConfig, AdaJudgeForRewardModeling


RESULTS = Path(__file__).resolve().parent / "results"
PAPER_SHAPES = {
    # Public config.json values of the paper's backbones (K as in the paper).
    "Qwen3-8B (K=3)": (
        Qwen3Config(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
        3,
    ),
    "Qwen3-4B (K=3)": (
        Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
        3,
    ),
    "Phi-3.5-mini (K=2)": (
        LlamaConfig(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=32),
        2,
    ),
}  # fmt: skip


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matmul_flops_per_token(config: AdaJudgeConfig, seq_len: int) -> tuple[float, float]:
    """Forward matmul FLOPs per token of (backbone layers, refinement blocks) at `seq_len`, causal attention."""
    text = config.text_config
    d, head_dim = text.hidden_size, getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    q_width, kv_width = text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim
    layer_params = d * q_width * 2 + 2 * d * kv_width + 3 * d * text.intermediate_size
    backbone = text.num_hidden_layers * (2 * layer_params + 2 * seq_len * q_width)  # QK^T and AV, causal half each
    block_params = 4 * d * d + 3 * d * config.refinement_intermediate_size
    blocks = config.num_refinement_blocks * (2 * block_params + 2 * seq_len * d)
    return backbone, blocks


def analytic_shares(seq_len: int = 256) -> list[dict]:
    rows = []
    for name, (text_config, k) in PAPER_SHAPES.items():
        config = AdaJudgeConfig(text_config=text_config, num_refinement_blocks=k)
        with torch.device("meta"):
            model = AdaJudgeForRewardModeling(config)
        backbone_flops, block_flops = matmul_flops_per_token(config, seq_len)
        rows.append(
            {
                "shape": name,
                "backbone_params": count(model.model),
                "head_params": count(model.judge_head),
                "head_param_share": count(model.judge_head) / count(model.model),
                "flop_share_at_256": block_flops / backbone_flops,
            }
        )
    return rows


def build_models(backbone: str, blocks: list[int], poolings: list[str]) -> dict[str, torch.nn.Module]:
    """Stock seq-cls model plus one AdaJudge per (K, pooling), all sharing the stock model's backbone weights."""
    stock = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1, dtype=torch.float32)
    stock.config.pad_token_id = stock.config.pad_token_id if stock.config.pad_token_id is not None else 0
    models = {"stock": stock}
    for k in blocks:
        for pooling in poolings:
            config = AdaJudgeConfig(
                text_config=AutoConfig.from_pretrained(backbone), num_refinement_blocks=k, pooling=pooling
            )
            judge = AdaJudgeForRewardModeling(config)
            judge.model = stock.model  # same weights, no extra memory
            models[f"K={k} {pooling}"] = judge
    return models


def batch(vocab_size: int, rows: int, seq_len: int, judge: bool, padded: bool = False) -> dict[str, torch.Tensor]:
    """The same token ids and attention mask for both models (like for like). `padded`: the last row is half padding
    (right side), so both models take their masked attention path."""
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(3, vocab_size, (rows, seq_len), generator=generator)}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if padded:
        inputs["input_ids"][-1, seq_len // 2 :] = 0  # pad id of both models
        inputs["attention_mask"][-1, seq_len // 2 :] = 0
    if judge:
        inputs["prompt_lengths"] = torch.full((rows,), seq_len // 4)
    return inputs


def time_forward(model, inputs) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        model(**inputs)
        return time.perf_counter() - start


def time_train_step(model, optimizer, inputs) -> float:
    start = time.perf_counter()
    rewards = model(**inputs).logits.squeeze(-1).float()
    chosen, rejected = rewards.chunk(2)
    loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def interleaved(models: dict, fn, reps: int) -> dict[str, list[float]]:
    """Seconds of every repetition per model; models alternate (ABBA order) so drift hits all of them alike."""
    for name in models:
        fn(name)  # warm-up
    times = {name: [] for name in models}
    order = list(models)
    for rep in range(reps):
        for name in order if rep % 2 == 0 else reversed(order):
            times[name].append(fn(name))
    return times


def ratio_row(times: dict[str, list[float]], name: str) -> dict[str, float]:
    """Medians of `name` and of the stock model, the ratio of the medians, and the spread of the per-repetition
    ratios (min, max): the run-to-run noise the ratio must be read against."""
    per_rep = [a / b for a, b in zip(times[name], times["stock"])]
    stock_s, adajudge_s = statistics.median(times["stock"]), statistics.median(times[name])
    return {"stock_s": stock_s, "adajudge_s": adajudge_s, "ratio": adajudge_s / stock_s,
            "ratio_min": min(per_rep), "ratio_max": max(per_rep), "reps": len(per_rep)}  # fmt: skip


def peak_memory(backbone: str, variant: str, pairs: int, seq_len: int) -> float:
    """Peak RSS (MB) of a fresh process doing one forward and one training step of `variant`."""
    code = (
        "import sys; sys.argv = ['x']; import benchmarks.overhead as o; o._peak_child("
        f"{backbone!r}, {variant!r}, {pairs}, {seq_len})"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _peak_child(backbone: str, variant: str, pairs: int, seq_len: int) -> None:
    torch.set_num_threads(2)
    if variant == "stock":
        models = build_models(backbone, [], [])
    else:
        k, pooling = variant.removeprefix("K=").split()
        models = build_models(backbone, [int(k)], [pooling])
    model = models[variant].train()
    inputs = batch(model.config.get_text_config().vocab_size, 2 * pairs, seq_len, variant != "stock")
    time_forward(model, inputs)
    time_train_step(model, torch.optim.AdamW(model.parameters(), lr=1e-5), inputs)
    print(peak_rss_mb())


def peak_rss_mb() -> float:
    """Peak resident memory of this process image. Not `ru_maxrss`: Linux carries it across `exec`, so a child would
    report its parent's peak; `VmHWM` starts afresh with the new image."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def resolve(backbone: str) -> str:
    if backbone == "tiny":
        from adajudge_hf.testing import save_tiny_causal_lm

        return str(save_tiny_causal_lm(Path(tempfile.mkdtemp()) / "tiny"))
    from adajudge_hf.backbones import resolve_backbone

    return str(resolve_backbone(backbone))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="id, folder, or 'tiny'")
    parser.add_argument("--lengths", default="128,256,512,1024,2048", help="forward sequence lengths")
    parser.add_argument("--forward-rows", type=int, default=8)
    parser.add_argument("--train-pairs", type=int, default=8)
    parser.add_argument("--train-length", type=int, default=256)
    parser.add_argument("--blocks", default="0,1,2,3")
    parser.add_argument("--poolings", default="adaptive,last,mean,attention")
    parser.add_argument("--length-sweep-variant", default="K=3 adaptive", help="variant timed at every length")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument(
        "--memory-only", action="store_true", help="re-measure peak memory only, updating an existing overhead.json"
    )
    parser.add_argument("--output-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)

    backbone = resolve(args.backbone)
    if args.memory_only:
        results = json.loads((Path(args.output_dir) / "overhead.json").read_text())
        results["peak_memory_mb"] = measure_memory(backbone, args)
        write_results(results, Path(args.output_dir))
        return results
    blocks = [int(k) for k in args.blocks.split(",")]
    models = build_models(backbone, blocks, args.poolings.split(","))
    vocab = models["stock"].config.vocab_size
    lengths = [int(n) for n in args.lengths.split(",")]
    results = {"backbone": args.backbone, "torch_threads": torch.get_num_threads(), "forward_rows": args.forward_rows,
               "reps": args.reps, "analytic": analytic_shares()}  # fmt: skip
    judge_config = models[args.length_sweep_variant].config

    # Forward: every variant at the training length, the sweep variant at every length.
    results["forward"] = []
    for seq_len in lengths:
        names = list(models) if seq_len == args.train_length else ["stock", args.length_sweep_variant]
        subset = {name: models[name].eval() for name in names}
        for padded in (False, True) if seq_len == args.train_length else (False,):
            inputs = {name: batch(vocab, args.forward_rows, seq_len, name != "stock", padded) for name in names}
            times = interleaved(
                subset, lambda name, subset=subset, inputs=inputs: time_forward(subset[name], inputs[name]), args.reps
            )
            for name in names:
                if name == "stock" or (padded and name != args.length_sweep_variant):
                    continue
                backbone_flops, block_flops = matmul_flops_per_token(models[name].config, seq_len)
                row = {"variant": name, "seq_len": seq_len, "padded_row": padded, **ratio_row(times, name),
                       "flop_lower_bound": 1 + block_flops / backbone_flops}  # fmt: skip
                results["forward"].append(row)
                print(f"forward {args.forward_rows}x{seq_len}{' (one padded row)' if padded else ''} {name:>16}: "
                      f"ratio {row['ratio']:.3f} (per-rep {row['ratio_min']:.3f}-{row['ratio_max']:.3f})")  # fmt: skip

    # One training step (full fine-tuning) of the stock model and the sweep variant.
    names = ["stock", args.length_sweep_variant]
    train_models = {name: models[name].train() for name in names}
    if args.length_sweep_variant != "stock":
        train_models[args.length_sweep_variant].model = models["stock"].model
    optimizers = {name: torch.optim.AdamW(train_models[name].parameters(), lr=1e-6) for name in names}
    train_inputs = {name: batch(vocab, 2 * args.train_pairs, args.train_length, name != "stock") for name in names}
    times = interleaved(
        train_models, lambda name: time_train_step(train_models[name], optimizers[name], train_inputs[name]), args.reps
    )
    backbone_flops, block_flops = matmul_flops_per_token(judge_config, args.train_length)
    results["train_step"] = {
        "variant": args.length_sweep_variant,
        "pairs": args.train_pairs,
        "seq_len": args.train_length,
        **ratio_row(times, args.length_sweep_variant),
        "flop_lower_bound": 1 + block_flops / backbone_flops,
    }
    print(f"train step {args.train_pairs} pairs x {args.train_length}: ratio {results['train_step']['ratio']:.3f}")
    results["params"] = {
        name: {"total": count(model), "heads": count(model) - count(models["stock"].model)}
        for name, model in models.items()
    }

    if not args.no_memory:
        results["peak_memory_mb"] = measure_memory(backbone, args)

    write_results(results, Path(args.output_dir))
    return results


def measure_memory(backbone: str, args: argparse.Namespace) -> dict:
    stock_mb = peak_memory(backbone, "stock", args.train_pairs, args.train_length)
    judge_mb = peak_memory(backbone, args.length_sweep_variant, args.train_pairs, args.train_length)
    print(f"peak memory: stock {stock_mb:.0f} MB, adajudge {judge_mb:.0f} MB, ratio {judge_mb / stock_mb:.3f}")
    return {"stock": stock_mb, "adajudge": judge_mb, "ratio": judge_mb / stock_mb}


def write_results(results: dict, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "overhead.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Overhead of the AdaJudge heads ({results['backbone']}, {results['torch_threads']} threads)", ""]
    lines += [
        f"Forward of {results.get('forward_rows', 8)} rows, the same inputs for both models; ratio = median / median, "
        "in brackets the min-max of the per-repetition ratios (run-to-run noise). `padded` = the last row is half "
        "padding, so both models take the masked attention path.",
        "",
        "| variant | seq len | padded row | stock s | AdaJudge s | ratio [per-rep min, max] | FLOP lower bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["forward"]:
        spread = f" [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}]" if "ratio_min" in row else ""
        lines.append(
            f"| {row['variant']} | {row['seq_len']} | {'yes' if row.get('padded_row') else 'no'} | "
            f"{row['stock_s']:.3f} | {row['adajudge_s']:.3f} | {row['ratio']:.2f}{spread} | "
            f"{row['flop_lower_bound']:.3f} |"
        )
    step = results["train_step"]
    lines += ["", f"Training step ({step['variant']}, {step['pairs']} pairs x {step['seq_len']} tokens, full FT): "
              f"stock {step['stock_s']:.2f} s, AdaJudge {step['adajudge_s']:.2f} s, ratio **{step['ratio']:.2f}** "
              f"[per-rep {step.get('ratio_min', float('nan')):.2f}, {step.get('ratio_max', float('nan')):.2f}] "
              f"(FLOP lower bound {step['flop_lower_bound']:.3f})."]  # fmt: skip
    if "peak_memory_mb" in results:
        memory = results["peak_memory_mb"]
        lines.append(
            f"Peak RSS: stock {memory['stock']:.0f} MB, AdaJudge {memory['adajudge']:.0f} MB, ratio "
            f"**{memory['ratio']:.3f}**."
        )
    lines += [
        "",
        "| shape | backbone params | head params | head share | FLOP share at 256 |",
        "|---|---|---|---|---|",
    ]
    for row in results["analytic"]:
        lines.append(
            f"| {row['shape']} | {row['backbone_params'] / 1e9:.2f} B | {row['head_params'] / 1e6:.1f} M | "
            f"{row['head_param_share']:.2%} | {row['flop_share_at_256']:.2%} |"
        )
    (output_dir / "overhead.md").write_text("\n".join(lines) + "\n")

    sweep = [row for row in results["forward"] if row["variant"] == step["variant"] and not row.get("padded_row")]
    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.plot([r["seq_len"] for r in sweep], [r["ratio"] for r in sweep], "o-", label="measured forward ratio")
    axis.plot([r["seq_len"] for r in sweep], [r["flop_lower_bound"] for r in sweep], "--", label="FLOP lower bound")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("sequence length")
    axis.set_ylabel("AdaJudge / stock")
    axis.set_title(f"{step['variant']} on {results['backbone'].split('/')[-1]}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "overhead.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
