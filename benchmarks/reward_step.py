"""GRPO reward step: `AdaJudgeReward(judge)` (prompt groups packed) against passing the judge to TRL directly.

With `reward_funcs=judge`, TRL's `GRPOTrainer._calculate_rewards` renders each prompt + completion with the judge's
chat template, pads the B * G rows to the right into one batch and calls the judge, so every row repeats its prompt.
`AdaJudgeReward(judge, tokenizer)` scores the G completions of a prompt as one packed row [prompt; c1; ...; cG]
(the prompt computed once) in length-bucketed passes. Both variants are timed on the same B prompts, alternating
which goes first, and their rewards compared. `--dtypes fp32 bf16` runs both paths with the backbone in each dtype
(heads in fp32, as `load_judge(dtype=...)` loads them), all four interleaved; default: the dtype `--dtype auto`
picks on this CPU.

    python benchmarks/reward_step.py                                   # SmolLM2-135M, B = 4, G = 8 and 16
    python benchmarks/reward_step.py --dtypes fp32 bf16 --group-sizes 8 --output-dir benchmarks/results/reward-step-dtypes
    python benchmarks/reward_step.py --backbone tiny --repeats 1       # seconds-long smoke run
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer
from trl.data_utils import apply_chat_template


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from adajudge_hf import load_judge  # noqa: E402
from adajudge_hf.serve import AdaJudgeReward  # noqa: E402
from benchmarks.hardware import DTYPES, benchmark_dtype, hardware, hardware_markdown  # noqa: E402
from benchmarks.serving import RESULTS, build_judge, grpo_groups, spread  # noqa: E402


def trl_model_rewards(judge, tokenizer, prompts, completions) -> torch.Tensor:
    """What `GRPOTrainer._calculate_rewards` does with an `nn.Module` reward function (TRL 1.16)."""
    texts = [apply_chat_template({"messages": p + c}, tokenizer)["text"] for p, c in zip(prompts, completions)]
    inputs = tokenizer(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.inference_mode():
        return judge(**inputs).logits[:, 0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="Hub id, folder or 'tiny'")
    parser.add_argument("--num-refinement-blocks", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=4, help="B: prompts per step")
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--max-prompt-tokens", type=int, default=160)
    parser.add_argument("--max-response-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--dtypes", nargs="+", choices=("auto", *DTYPES), default=["auto"])
    args = parser.parse_args(argv)
    dtypes = list(dict.fromkeys(benchmark_dtype(choice) for choice in args.dtypes))

    folder = build_judge(
        args.backbone, Path(tempfile.mkdtemp(prefix="adajudge-reward-step-")), args.num_refinement_blocks
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    judges = {dtype: load_judge(folder, dtype=DTYPES[dtype]).eval() for dtype in dtypes}
    rewards_of = {dtype: AdaJudgeReward(judge, tokenizer) for dtype, judge in judges.items()}
    runs, max_diff = [], 0.0
    steps = {}
    for group_size in args.group_sizes:
        groups = grpo_groups(
            tokenizer, args.prompts, group_size, args.max_prompt_tokens, args.max_response_tokens, seed=group_size
        )
        prompts = [
            messages for messages, completions in groups for _ in completions
        ]  # TRL repeats each prompt G times
        completions = [[{"role": "assistant", "content": c}] for _, group in groups for c in group]
        steps[group_size] = (prompts, completions)
    variants = {}
    for dtype in dtypes:
        variants[f"trl_model/{dtype}"] = lambda p, c, d=dtype: trl_model_rewards(judges[d], tokenizer, p, c)
        variants[f"adajudge_reward/{dtype}"] = lambda p, c, d=dtype: torch.tensor(
            rewards_of[d](prompts=p, completions=c)
        )
    for score in variants.values():  # warm-up
        score(*steps[args.group_sizes[0]])
    max_diff_fp32 = 0.0
    for repeat in range(args.repeats):
        for group_size, (prompts, completions) in steps.items():
            shift = (repeat + group_size) % len(variants)  # which variant goes first rotates
            order = list(variants)[shift:] + list(variants)[:shift]
            rewards = {}
            for name in order:
                began = time.perf_counter()
                rewards[name] = variants[name](prompts, completions)
                seconds = time.perf_counter() - began
                runs.append({"variant": name, "group_size": group_size, "repeat": repeat, "seconds": seconds})
                print(f"repeat {repeat} G={group_size:2d} {name:20s} {seconds:6.2f} s", flush=True)
            for dtype in dtypes:
                difference = rewards[f"trl_model/{dtype}"] - rewards[f"adajudge_reward/{dtype}"]
                max_diff = max(max_diff, difference.abs().max().item())
                if dtype != "fp32" and "fp32" in dtypes:
                    difference = rewards[f"adajudge_reward/{dtype}"] - rewards["adajudge_reward/fp32"]
                    max_diff_fp32 = max(max_diff_fp32, difference.abs().max().item())
    summary = []
    for group_size, (prompts, _) in steps.items():
        by = {
            name: [r["seconds"] for r in runs if r["variant"] == name and r["group_size"] == group_size]
            for name in variants
        }
        for dtype in dtypes:
            trl, ours = by[f"trl_model/{dtype}"], by[f"adajudge_reward/{dtype}"]
            row = {"group_size": group_size, "items": len(prompts), "dtype": dtype, "trl_model": spread(trl),
                   "adajudge_reward": spread(ours), "speedup": spread([t / a for t, a in zip(trl, ours)])}  # fmt: skip
            if dtype != "fp32" and "fp32" in dtypes:  # this dtype's AdaJudgeReward against fp32's, per repetition
                row["speedup_vs_fp32"] = spread([f / a for f, a in zip(by["adajudge_reward/fp32"], ours)])
            summary.append(row)
    command = "python benchmarks/reward_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command, "backbone": args.backbone, "prompts": args.prompts, "hardware": hardware(),
              "runs": runs, "summary": summary, "max_reward_diff": max_diff,
              "max_reward_diff_vs_fp32": max_diff_fp32 if len(dtypes) > 1 else None}  # fmt: skip
    lines = [
        "# GRPO reward step: `AdaJudgeReward` (packed groups) vs `reward_funcs=judge` (TRL's padded batch)",
        "",
        f"Command: `{command}`. Backbone {args.backbone}, K={args.num_refinement_blocks}, {' and '.join(dtypes)} "
        f"(heads in fp32), CPU ({torch.get_num_threads()} torch threads); B={args.prompts} prompts of the embedded "
        f"HH-RLHF test split (≤ {args.max_prompt_tokens} tokens), completions ≤ {args.max_response_tokens} tokens; "
        f"{args.repeats} repetitions, variants interleaved. Median [min–max] seconds per reward step.",
        "",
        hardware_markdown(result["hardware"]),
        "",
        "| G | items | dtype | TRL, judge as reward_funcs | AdaJudgeReward | speed-up | AdaJudgeReward vs its fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        fmt = lambda s: f"{s['median']:.2f} [{s['min']:.2f}–{s['max']:.2f}]"  # noqa: E731
        lines.append(
            f"| {row['group_size']} | {row['items']} | {row['dtype']} | {fmt(row['trl_model'])} | "
            f"{fmt(row['adajudge_reward'])} | ×{fmt(row['speedup'])} | "
            + (f"×{fmt(row['speedup_vs_fp32'])} |" if "speedup_vs_fp32" in row else "– |")
        )
    lines += ["", f"Largest |reward difference| between the two paths in one dtype: {max_diff:.2e}."]
    if len(dtypes) > 1:
        lines[-1] += f" Between AdaJudgeReward in bf16 and in fp32: {max_diff_fp32:.2e}."
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "reward_step.json").write_text(json.dumps(result, indent=1))
    (args.output_dir / "reward_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
