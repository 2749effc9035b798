"""What bf16 does on this CPU: one forward of the SmolLM2-135M judge (K=2) in fp32 and in bf16, same inputs.

The cases are those every throughput figure rests on: one item (a naive server's row), 8 items in one batch, and one
GRPO group of 8 completions packed as [prompt; c1; ...; c8] (`segment_ids`, the block mask `adajudge serve` and
best-of-N use). The backbone is in the dtype, the heads in fp32 (as `load_judge(dtype=...)` loads them). Every
repetition runs every (case, dtype) once, the order rotating; median and min–max of milliseconds per item, and the
bf16 / fp32 time ratio per repetition. The results files name the CPU and its `lscpu` bf16 flags: bf16 is fast only
where the CPU has AMX-BF16 or AVX512-BF16 units.

    python benchmarks/dtype_forward.py                    # writes results/dtype-forward.json and .md
    python benchmarks/dtype_forward.py --backbone tiny --repeats 1   # smoke run
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hardware import DTYPES, hardware, hardware_markdown

from adajudge_hf.packing import pack_responses


RESULTS = Path(__file__).resolve().parent / "results"


def cases(vocab: int, prompt: int, response: int, group: int) -> dict[str, tuple[int, dict]]:
    """name -> (items, model inputs)."""
    generator = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=generator).tolist()  # noqa: E731
    prompt_ids, responses = ids(prompt), [ids(response) for _ in range(group)]
    packed_ids, segments = pack_responses(prompt_ids, responses)
    return {
        f"1 item x {prompt + response} tokens": (
            1,
            {"input_ids": torch.tensor([prompt_ids + responses[0]]), "prompt_lengths": torch.tensor([prompt])},
        ),
        f"{group} items x {prompt + response} tokens, one batch": (
            group,
            {
                "input_ids": torch.tensor([prompt_ids + r for r in responses]),
                "prompt_lengths": torch.tensor([prompt] * group),
            },
        ),  # fmt: skip
        f"{group} items packed in one row of {len(packed_ids)} tokens": (
            group,
            {"input_ids": torch.tensor([packed_ids]), "segment_ids": torch.tensor([segments])},
        ),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="Hub id, folder or 'tiny'")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=66, help="the serving benchmark's median prompt")
    parser.add_argument("--response-tokens", type=int, default=44, help="items of 110 tokens, as there")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from adajudge_hf import AdaJudgeForRewardModeling
    from adajudge_hf.backbones import resolve_backbone
    from adajudge_hf.testing import save_tiny_causal_lm

    folder = (
        save_tiny_causal_lm(Path(tempfile.mkdtemp()) / "tiny") if args.backbone == "tiny" else resolve_backbone(args.backbone)
    )  # fmt: skip
    models = {}
    for name, dtype in DTYPES.items():
        torch.manual_seed(0)  # the same heads
        models[name] = AdaJudgeForRewardModeling.from_backbone(folder, num_refinement_blocks=2, dtype=dtype).eval()
    inputs = cases(
        models["fp32"].config.text_config.vocab_size, args.prompt_tokens, args.response_tokens, args.group_size
    )
    runs = [(case, dtype) for case in inputs for dtype in models]
    seconds = {run: [] for run in runs}
    rewards = {}
    with torch.inference_mode():
        for case, dtype in runs:  # warm-up, and the rewards each dtype gives
            rewards[(case, dtype)] = models[dtype](**inputs[case][1]).logits[:, 0].float()
        for repeat in range(args.repeats):
            for case, dtype in runs[repeat % len(runs) :] + runs[: repeat % len(runs)]:
                began = time.perf_counter()
                models[dtype](**inputs[case][1])
                seconds[(case, dtype)].append(time.perf_counter() - began)
            print(
                f"repeat {repeat}: " + ", ".join(f"{c} {d} {s[-1]:.2f}s" for (c, d), s in seconds.items()), flush=True
            )
    spread = lambda v: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}  # noqa: E731
    rows = []
    for case, (items, _) in inputs.items():
        fp32, bf16 = seconds[(case, "fp32")], seconds[(case, "bf16")]
        rows.append(
            {
                "case": case,
                "items": items,
                "fp32_ms_per_item": spread([1000 * s / items for s in fp32]),
                "bf16_ms_per_item": spread([1000 * s / items for s in bf16]),
                "bf16_over_fp32_time": spread([b / f for b, f in zip(bf16, fp32)]),
                "max_abs_reward_difference": (rewards[(case, "bf16")] - rewards[(case, "fp32")]).abs().max().item(),
            }
        )
    result = {
        "command": "python benchmarks/dtype_forward.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "backbone": args.backbone,
        "hardware": hardware(),
        "rows": rows,
    }
    fmt = lambda s, d=0: f"{s['median']:.{d}f} [{s['min']:.{d}f}–{s['max']:.{d}f}]"  # noqa: E731
    lines = [
        "# One judge forward in fp32 and in bf16 on this CPU",
        "",
        f"Command: `{result['command']}`. {args.backbone} judge, K=2, random heads in fp32; {args.repeats} "
        "repetitions, every (case, dtype) once per repetition, order rotating; median [min–max].",
        "",
        hardware_markdown(result["hardware"]),
        "",
        "| case | fp32 ms/item | bf16 ms/item | bf16 time / fp32 time | max abs reward diff |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {fmt(row['fp32_ms_per_item'])} | {fmt(row['bf16_ms_per_item'])} | "
            f"×{fmt(row['bf16_over_fp32_time'], 2)} | {row['max_abs_reward_difference']:.1e} |"
        )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "dtype-forward.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.output_dir / "dtype-forward.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
