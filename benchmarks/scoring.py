"""Throughput of the evaluation scorer on a fixed RM-Bench subset, against two references, in one run.

    python benchmarks/scoring.py --data ../shared/benchmarks/rm-bench --per-domain 8   # writes benchmarks/results/scoring.json

1. `score_responses`: length-sorted buckets under a token budget.
2. Input order with a fixed batch size (what a plain DataLoader loop does), same judge and same encoding;
   the scorer gets the same worst-case batch (batch size x max length tokens) as its budget.
3. The raw backbone forward (no AdaJudge heads) on the batches of (1), which bounds what the heads cost.

Reports real and padded tokens, the padding fraction, seconds and real tokens per second of each, the largest reward
difference between (1) and (2), and the RM-Bench numbers of the untrained judge on the subset next to the length
baseline's. The judge is SmolLM2-135M-Instruct (offline copy via `resolve_backbone`) with fresh heads.

`--compare-dtypes fp32 bf16` instead times what `adajudge evaluate` does (`evaluate_model`, the scorer and the report)
with the backbone in each dtype (heads in fp32), interleaved over `--repeats`, and writes `scoring-dtypes.json/.md`:
tokens per second per dtype, the ratio per repetition, and the bf16 rewards' distance from fp32's.

    python benchmarks/scoring.py --data ../shared/benchmarks/rm-bench --per-domain 4 --compare-dtypes fp32 bf16
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from hardware import DTYPES, hardware, hardware_markdown
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoTokenizer

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.backbones import resolve_backbone
from adajudge_hf.evaluation import (
    DEFAULT_BATCH_TOKENS,
    evaluate_length_baseline,
    evaluate_model,
    length_buckets,
    limit_per_group,
    load_rm_bench,
)
from adajudge_hf.evaluation.report import as_chat, benchmark_examples
from adajudge_hf.tokenization import encode_prompt_response


def padded_batches(encoded, batches, pad_token_id, device):
    for batch in batches:
        rows = [torch.tensor(encoded[index].input_ids) for index in batch]
        input_ids = pad_sequence(rows, batch_first=True, padding_value=pad_token_id).to(device)
        attention_mask = pad_sequence([torch.ones_like(row) for row in rows], batch_first=True).to(device)
        prompt_lengths = torch.tensor([encoded[index].prompt_length for index in batch], device=device)
        yield batch, input_ids, attention_mask, prompt_lengths


def timed(function):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def summary(encoded, batches, seconds):
    tokens = sum(len(encoded[index].input_ids) for batch in batches for index in batch)
    padded = sum(len(batch) * max(len(encoded[index].input_ids) for index in batch) for batch in batches)
    return {
        "num_batches": len(batches),
        "num_tokens": tokens,
        "num_padded_tokens": padded,
        "padding_fraction": 1 - tokens / padded,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
    }


def compare_dtypes(args, backbone, dataset, dtypes: list[str]) -> dict:
    """`evaluate_model` with the judge's backbone in each dtype, interleaved: seconds, tokens/s and rewards."""
    judges = {}
    for dtype in dtypes:
        torch.manual_seed(0)  # the same heads
        judges[dtype] = AdaJudgeForRewardModeling.from_backbone(backbone, dtype=DTYPES[dtype]).eval()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    max_batch_tokens = args.max_batch_tokens or DEFAULT_BATCH_TOKENS
    evaluate = lambda dtype: evaluate_model(  # noqa: E731
        judges[dtype], tokenizer, "rm-bench", dataset, max_length=args.max_length, max_batch_tokens=max_batch_tokens,
        show_progress=False,
    )  # fmt: skip
    for dtype in dtypes:  # warm-up
        evaluate(dtype)
    seconds, rewards, tokens = {dtype: [] for dtype in dtypes}, {}, 0
    for repeat in range(args.repeats):
        for dtype in dtypes[repeat % len(dtypes) :] + dtypes[: repeat % len(dtypes)]:
            report, elapsed = timed(lambda d=dtype: evaluate(d))
            seconds[dtype].append(elapsed)
            tokens = report.scoring["num_tokens"]
            rewards[dtype] = torch.tensor(
                [r for record in report.records for r in record["score_chosen"] + record["score_rejected"]]
            )
            print(f"repeat {repeat} {dtype}: {elapsed:.1f} s", flush=True)
    spread = lambda v: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}  # noqa: E731
    result = {
        "command": "python benchmarks/scoring.py " + " ".join(sys.argv[1:]),
        "hardware": hardware(),
        "num_prompts": len(dataset),
        "num_responses": len(next(iter(rewards.values()))),
        "tokens": tokens,
        "max_batch_tokens": max_batch_tokens,
        "seconds": {dtype: spread(values) for dtype, values in seconds.items()},
    }
    if "fp32" in dtypes:
        for dtype in dtypes:
            if dtype != "fp32":
                result[f"speedup_{dtype}_vs_fp32"] = spread([f / b for f, b in zip(seconds["fp32"], seconds[dtype])])
                difference = (rewards[dtype] - rewards["fp32"]).abs()
                result[f"abs_reward_difference_{dtype}_vs_fp32"] = {
                    "max": difference.max().item(),
                    "p50": difference.median().item(),
                    "p99": difference.quantile(0.99).item(),
                    "reward_std_fp32": rewards["fp32"].std().item(),
                }
    return result


def write_dtype_report(result: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    fmt = lambda s: f"{s['median']:.1f} [{s['min']:.1f}–{s['max']:.1f}]"  # noqa: E731
    lines = [
        "# `adajudge evaluate` scoring throughput by dtype",
        "",
        f"Command: `{result['command']}`. RM-Bench subset: {result['num_prompts']} prompts, "
        f"{result['num_responses']} responses, {result['tokens']} tokens; SmolLM2-135M-Instruct judge, K=3, fresh "
        f"heads (fp32); budget {result['max_batch_tokens']} padded tokens per pass; `evaluate_model` timed whole, dtypes "
        "interleaved, median [min–max] over repetitions.",
        "",
        hardware_markdown(result["hardware"]),
        "",
        "| dtype | seconds | tokens/s |",
        "|---|---|---|",
    ]
    for dtype, seconds in result["seconds"].items():
        lines.append(f"| {dtype} | {fmt(seconds)} | {result['tokens'] / seconds['median']:.0f} |")
    for key, value in result.items():
        if key.startswith("speedup_"):
            lines += ["", f"{key}: ×{value['median']:.2f} [{value['min']:.2f}–{value['max']:.2f}] (per repetition)."]
        if key.startswith("abs_reward_difference_"):
            lines += [
                f"{key}: max {value['max']:.2e}, median {value['p50']:.2e}, p99 {value['p99']:.2e} (fp32 rewards' "
                f"std {value['reward_std_fp32']:.2e})."
            ]
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="RM-Bench folder or file in the official format")
    parser.add_argument("--backbone", default=None, help="backbone folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--per-domain", type=int, default=8, help="prompts per RM-Bench domain (6 responses each)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of the input-order reference")
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="scorer budget (default: batch size x max length, the same peak)",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "scoring.json"))
    parser.add_argument("--compare-dtypes", nargs="+", choices=list(DTYPES), help="time evaluate_model per dtype")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of --compare-dtypes")
    args = parser.parse_args()
    if args.compare_dtypes:
        backbone = resolve_backbone(args.backbone) if args.backbone else resolve_backbone()
        dataset = limit_per_group(load_rm_bench(args.data), "rm-bench", args.per_domain)
        result = compare_dtypes(args, backbone, dataset, list(dict.fromkeys(args.compare_dtypes)))
        write_dtype_report(result, Path(args.output).with_name("scoring-dtypes.json"))
        return
    max_batch_tokens = args.max_batch_tokens or args.batch_size * args.max_length
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    backbone = resolve_backbone(args.backbone) if args.backbone else resolve_backbone()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    judge = AdaJudgeForRewardModeling.from_backbone(backbone, dtype=dtype).to(device).eval()  # default config, K = 3
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    dataset = limit_per_group(load_rm_bench(args.data), "rm-bench", args.per_domain)
    prompts, responses = benchmark_examples("rm-bench", dataset)
    chats = [as_chat(tokenizer, prompt, response) for prompt, response in zip(prompts, responses)]
    encoded = {i: encode_prompt_response(tokenizer, p, r, args.max_length) for i, (p, r) in enumerate(chats)}
    pad_token_id = tokenizer.pad_token_id

    with torch.inference_mode():  # warm-up: kernels, allocator, thread pools
        judge(torch.tensor([encoded[0].input_ids], device=device))

    # (1) the scorer, through the whole evaluation (its time includes encoding, which the references skip)
    report, scorer_seconds = timed(
        lambda: evaluate_model(
            judge,
            tokenizer,
            "rm-bench",
            dataset,
            max_length=args.max_length,
            max_batch_tokens=max_batch_tokens,
            show_progress=False,
        )
    )
    scorer_rewards = torch.tensor(
        [r for record in report.records for r in record["score_chosen"] + record["score_rejected"]]
    )
    bucketed = length_buckets([len(encoded[i].input_ids) for i in range(len(encoded))], max_batch_tokens)

    def input_order():
        rewards = torch.empty(len(encoded))
        batches = [
            list(range(s, min(s + args.batch_size, len(encoded)))) for s in range(0, len(encoded), args.batch_size)
        ]
        with torch.inference_mode():
            for batch, input_ids, attention_mask, prompt_lengths in padded_batches(
                encoded, batches, pad_token_id, device
            ):
                output = judge(input_ids, attention_mask=attention_mask, prompt_lengths=prompt_lengths)
                rewards[batch] = output.logits[:, 0].float().cpu()
        return rewards, batches

    (fixed_rewards, fixed_batches), fixed_seconds = timed(input_order)

    def backbone_only():
        with torch.inference_mode():
            for _, input_ids, attention_mask, _ in padded_batches(encoded, bucketed, pad_token_id, device):
                judge.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    _, backbone_seconds = timed(backbone_only)

    judge_report = report.metrics
    baseline = evaluate_length_baseline("rm-bench", dataset).metrics
    results = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
        "dtype": args.dtype,
        "num_prompts": len(dataset),
        "num_responses": len(encoded),
        "max_length": args.max_length,
        "max_batch_tokens": max_batch_tokens,
        "batch_size": args.batch_size,
        "scorer": {**summary(encoded, bucketed, scorer_seconds), "reported": report.scoring},
        "input_order_fixed_batch": summary(encoded, fixed_batches, fixed_seconds),
        "backbone_only_on_scorer_batches": summary(encoded, bucketed, backbone_seconds),
        "max_abs_reward_difference_scorer_vs_input_order": (scorer_rewards - fixed_rewards).abs().max().item(),
        "untrained_judge": {key: judge_report[key] for key in ("overall", "easy", "normal", "hard")}
        | {domain: values["score"] for domain, values in judge_report["domains"].items()},
        "length_baseline": {key: baseline[key] for key in ("overall", "easy", "normal", "hard")}
        | {domain: values["score"] for domain, values in baseline["domains"].items()},
    }
    with open(args.output, "w") as file:
        json.dump(results, file, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
