"""`adajudge evaluate`: score a reward model on RM-Bench, JudgeBench or preference pairs and write the report.

    adajudge evaluate --model org/judge --benchmark rm-bench --output-dir eval/rm-bench
    adajudge evaluate --model ./judge --benchmark judgebench --data JudgeBench/data --split gpt --output-dir eval/jb
    adajudge evaluate --model length-baseline --benchmark pairs --data test.jsonl.gz --output-dir eval/length
    accelerate launch --num_processes 8 -m adajudge_hf.cli evaluate --model ./judge --benchmark rm-bench ...

The files written are described in `adajudge_hf.evaluation.report`.
"""

import argparse
import shlex
import sys

from ..cli import accept_underscore_flags, handle_errors
from ..precision import DTYPE_CHOICES, load_for_inference
from .benchmarks import BENCHMARKS
from .data import JUDGEBENCH_SPLITS
from .progress import ScoringInterrupted
from .report import LENGTH_BASELINE, evaluate_length_baseline, evaluate_model, format_summary
from .scoring import DEFAULT_BATCH_TOKENS, distributed_state


LOCAL_DATA_COLUMNS = """local --data files (.json / .jsonl / .parquet, optionally .gz, or a folder of them) need the
official columns:
  rm-bench        id, prompt, chosen, rejected (3 responses each), domain (or files named <domain>_filtered.json,
                  as in the official repository: chat, code, math, safety-refuse, safety-response)
  judgebench      pair_id, source, question, response_model, response_A, response_B, label
  reward-bench-2  id, subset, prompt, chosen (list of correct completions), rejected (list), num_correct
                  (= len(chosen); Ties ids are ref:<n> / tied:<n>)
  reward-bench    id, subset, prompt, chosen, rejected (strings; split `filtered` on the Hub)
  pairs           chosen, rejected, and optionally prompt (strings or chat messages)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adajudge evaluate",
        description="Score a reward model on a benchmark with its official metrics; write metrics.json,\n"
        "rewards.jsonl and, for AdaJudge judges, a routing report (routing.json / .md / .png).",
        epilog=LOCAL_DATA_COLUMNS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help=f"a local folder or Hub id of an AdaJudge judge or any sequence-classification reward model, or "
        f"'{LENGTH_BASELINE}' (the longer response wins)",
    )
    parser.add_argument(
        "--benchmark",
        required=True,
        choices=BENCHMARKS,
        help="what to score, with its official metric: rm-bench (THU-KEG/RM-Bench), judgebench "
        "(ScalerLab/JudgeBench), reward-bench-2 (allenai/reward-bench-2), reward-bench (allenai/reward-bench), or "
        "pairs (your own preference pairs: accuracy); the columns a local --data file needs are listed below",
    )
    parser.add_argument(
        "--data",
        help="Hub dataset id, or a local file / folder in the official format (default: the benchmark's official "
        "Hub dataset, e.g. THU-KEG/RM-Bench or allenai/reward-bench-2; required for pairs)",
    )
    parser.add_argument("--output-dir", required=True, help="folder for the report files")
    parser.add_argument(
        "--split",
        help=f"dataset split: JudgeBench {' or '.join(JUDGEBENCH_SPLITS)} (default gpt, the leaderboard's); for "
        "Hub data, the split to read (RM-Bench: train, RewardBench 2: test, RewardBench: filtered, pairs: test)",
    )
    parser.add_argument(
        "--max-length", type=int, help="encode at most this many tokens, cutting the prompt from the left"
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=DEFAULT_BATCH_TOKENS,
        help="padded tokens per forward pass (default: %(default)s); lower it on out-of-memory errors",
    )
    parser.add_argument(
        "--limit",
        type=int,
        help="keep the first N items of each RM-Bench domain / JudgeBench category / RewardBench (2) subset, or the "
        "first N pairs",
    )
    parser.add_argument(
        "--share-prompts",
        action="store_true",
        help="encode each item's prompt once for all its responses (packed rows; AdaJudge judges only, same rewards)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="weights dtype; auto (default): bfloat16 where the device has bf16 units (Ampere+ GPUs, CPUs with "
        "AMX-BF16 / AVX512-BF16), else float32. The heads compute in float32 either way; metrics.json records the "
        "choice and why",
    )
    return accept_underscore_flags(parser)


@handle_errors("evaluate")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_batch_tokens < 1:
        raise ValueError(f"--max-batch-tokens must be >= 1, got {args.max_batch_tokens}.")
    common = {"split": args.split, "limit": args.limit}
    try:
        if args.model == LENGTH_BASELINE:
            result = evaluate_length_baseline(args.benchmark, args.data, args.output_dir, **common)
        else:
            model, tokenizer, precision = load_for_inference(args.model, distributed_state().device, args.dtype)
            if distributed_state().is_main_process:
                print(f"adajudge evaluate: computing in {precision.name} ({precision.reason})", file=sys.stderr)
            result = evaluate_model(
                model,
                tokenizer,
                args.benchmark,
                args.data,
                args.output_dir,
                max_length=args.max_length,
                max_batch_tokens=args.max_batch_tokens,
                share_prompts=args.share_prompts,
                checkpoint=args.model,
                precision=precision,
                command=shlex.join(["adajudge", "evaluate", *(sys.argv[1:] if argv is None else argv)]),
                **common,
            )
    except ScoringInterrupted as interrupt:  # Ctrl-C: say what was kept and how to resume
        if distributed_state().is_main_process:
            print(f"adajudge evaluate: {interrupt}", file=sys.stderr)
        return 130
    if distributed_state().is_main_process:
        print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
