"""`adajudge demo` (what `make demo` runs) in each dtype: wall time, peak memory, and whether the table changes.

Each dtype runs the whole demo in a fresh process under `/usr/bin/time -v` (wall clock, maximum resident set size),
one after the other, alternating which goes first over `--repeats`. The held-out accuracies of every judge are
compared between the dtypes pair by pair: for each judge, the paired difference in held-out correctness (bf16 − fp32)
with a 95 % bootstrap interval over the held-out pairs (`adajudge_hf.comparison.hierarchical_bootstrap`, one seed),
and how many pairs change verdict. Then the packaged fp32 judge (SmolLM2 backbone, trained heads) scores the held-out
pairs with its backbone in fp32 and in bf16: the distribution of |bf16 − fp32| rewards on a real judge.

    python benchmarks/demo_timing.py                       # fp32 and bf16, the demo's defaults; ~10-40 min here
    python benchmarks/demo_timing.py --demo-args --backbone tiny --train-pairs 24 --eval-pairs 12   # smoke run
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hardware import DTYPES, hardware, hardware_markdown

from adajudge_hf.comparison import hierarchical_bootstrap


RESULTS = Path(__file__).resolve().parent / "results"
JUDGE_DIRS = {  # the demo's table rows and their report folders (`adajudge_hf.demo._slug`)
    "last-token linear (stock RM readout)": "last-token-linear",
    "last-token MLP": "last-token-mlp",
    "mean MLP": "mean-mlp",
    "attention MLP": "attention-mlp",
    "AdaJudge": "adajudge",
}


def run_demo(dtype: str, output_dir: Path, demo_args: list[str], timeout: int) -> dict:
    """One `adajudge demo --dtype ...` under `/usr/bin/time -v`, its output kept in `output_dir/demo.log`."""
    command = [sys.executable, "-m", "adajudge_hf.cli", "demo", *demo_args, "--output-dir", str(output_dir)]
    command += ["--dtype", str(DTYPES[dtype]).removeprefix("torch.")]
    process = subprocess.Popen(
        ["/usr/bin/time", "-v", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: a timeout stops the demo too, not only `time`
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # recorded as such: a run past the limit is a result too
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"timed_out": True, "wall_s": timeout, "peak_rss_mb": None, "demo_seconds": None, "summary": None}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "demo.log").write_text(stdout + stderr)
    if process.returncode != 0:
        raise RuntimeError(f"demo in {dtype} failed ({process.returncode}): see {output_dir / 'demo.log'}")
    return finished_run(output_dir)


def finished_run(output_dir: Path) -> dict:
    """A finished demo run read back from its folder: wall time and peak RSS from `/usr/bin/time -v` in its log."""
    log = (output_dir / "demo.log").read_text()
    elapsed = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", log).group(1)
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1))
    summary = json.loads((output_dir / "summary.json").read_text())
    return {
        "timed_out": False,
        "wall_s": sum(float(part) * 60**power for power, part in enumerate(reversed(elapsed.split(":")))),
        "peak_rss_mb": peak_kb / 1024,
        "demo_seconds": summary["seconds"],
        "summary": summary,
    }


def held_out_correct(output_dir: Path, judge_dir: str) -> torch.Tensor:
    records = (output_dir / "eval" / judge_dir / "pairs" / "rewards.jsonl").read_text().splitlines()
    return torch.tensor([float(json.loads(line)["correct"]) for line in records])


def reward_differences(judge_dir: Path, output_dir: Path, max_length: int | None) -> dict:
    """The packaged judge's held-out rewards with the backbone in fp32 and in bf16 (heads fp32 both times), encoded
    at the demo's `max_length`."""
    from adajudge_hf import load_judge
    from adajudge_hf.evaluation import evaluate_model

    rewards, seconds = {}, {}
    for dtype in ("fp32", "bf16"):
        judge = load_judge(judge_dir, dtype=DTYPES[dtype])
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(judge_dir)
        began = time.perf_counter()
        result = evaluate_model(
            judge, tokenizer, "pairs", str(output_dir / "held_out.jsonl"), max_length=max_length, show_progress=False
        )
        seconds[dtype] = time.perf_counter() - began
        rewards[dtype] = torch.tensor(
            [r for rec in result.records for r in (rec["score_chosen"], rec["score_rejected"])]
        )
    difference = (rewards["bf16"] - rewards["fp32"]).abs()
    verdicts = lambda r: r[0::2] > r[1::2]  # noqa: E731
    return {
        "items": len(difference),
        "max": difference.max().item(),
        "p50": difference.median().item(),
        "p90": difference.quantile(0.9).item(),
        "p99": difference.quantile(0.99).item(),
        "reward_std_fp32": rewards["fp32"].std().item(),
        "verdicts_changed": int((verdicts(rewards["bf16"]) != verdicts(rewards["fp32"])).sum()),
        "seconds": seconds,
    }


def write_held_out(summary: dict, path: Path, limit: int | None) -> None:
    """The demo's held-out pairs (the first `limit` of them) as a pairs file, re-drawn the way the demo draws them."""
    from adajudge_hf.demo import load_pairs

    arguments = summary["arguments"]
    _, held_out = load_pairs(arguments["data"], arguments["train_pairs"], arguments["eval_pairs"], arguments["seed"])
    if limit is not None:
        held_out = held_out.select(range(min(limit, len(held_out))))
    held_out.to_json(str(path))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one demo run may take")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--finished-run", nargs=2, action="append", default=[], metavar=("DTYPE", "FOLDER"),
        help="take repeat 0 of DTYPE from FOLDER, a finished run's folder (its demo.log and summary.json), not run it",
    )  # fmt: skip
    parser.add_argument(
        "--reward-pairs", type=int, help="held-out pairs the fp32 judge scores in both dtypes (default: all; 0: none)"
    )
    parser.add_argument("--demo-args", nargs=argparse.REMAINDER, default=[], help="passed to `adajudge demo`")
    args = parser.parse_args(argv)
    finished = {dtype: Path(folder) for dtype, folder in args.finished_run}
    workdir = Path(tempfile.mkdtemp(prefix="adajudge-demo-timing-"))
    runs = []
    for repeat in range(args.repeats):
        order = args.dtypes if repeat % 2 == 0 else args.dtypes[::-1]
        for dtype in order:
            if repeat == 0 and dtype in finished:
                output_dir = finished[dtype]
                run = finished_run(output_dir)
            else:
                output_dir = workdir / f"{dtype}-{repeat}"
                run = run_demo(dtype, output_dir, args.demo_args, args.timeout)
            run.update(dtype=dtype, repeat=repeat, output_dir=str(output_dir))
            runs.append(run)
            print(
                f"repeat {repeat} {dtype}: {run['wall_s']:.0f} s wall, peak {run['peak_rss_mb']:,.0f} MiB", flush=True
            )
    first = {r["dtype"]: r for r in runs if r["repeat"] == 0 and not r["timed_out"]}
    parity, rewards = {}, None
    if {"fp32", "bf16"} <= set(first):
        dirs = {dtype: Path(run["output_dir"]) for dtype, run in first.items()}
        for name, judge_dir in JUDGE_DIRS.items():
            correct = {dtype: held_out_correct(dirs[dtype], judge_dir) for dtype in ("fp32", "bf16")}
            diff, low, high = hierarchical_bootstrap(correct["bf16"][None], correct["fp32"][None])
            parity[name] = {
                "fp32": 100 * correct["fp32"].mean().item(),
                "bf16": 100 * correct["bf16"].mean().item(),
                "diff": 100 * diff,
                "ci_low": 100 * low,
                "ci_high": 100 * high,
                "pairs_changed": int((correct["bf16"] != correct["fp32"]).sum()),
                "pairs": len(correct["fp32"]),
            }
    if "fp32" in first and args.reward_pairs != 0:  # the packaged fp32 judge's backbone in each dtype
        fp32_dir = Path(first["fp32"]["output_dir"])
        write_held_out(first["fp32"]["summary"], workdir / "held_out.jsonl", args.reward_pairs)
        max_length = first["fp32"]["summary"]["arguments"]["max_length"]
        rewards = reward_differences(fp32_dir / "judge", workdir, max_length)
    for run in runs:
        summary = run.pop("summary")
        run["table"] = summary["table"] if summary else None
    result = {
        "command": "python benchmarks/demo_timing.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "demo_command": "adajudge demo " + " ".join(args.demo_args) + " --dtype <float32|bfloat16>",
        "hardware": hardware(),
        "runs": runs,
        "held_out_parity": parity,
        "packaged_judge_reward_difference": rewards,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "demo-timing.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    lines = [
        "# `make demo` (`adajudge demo`) by dtype: wall time, peak memory, held-out accuracy",
        "",
        f"Command: `{result['command']}` (each run: `{result['demo_command']}` in a fresh process under "
        "`/usr/bin/time -v`, dtypes one after the other, alternating first over repetitions).",
        "",
        hardware_markdown(result["hardware"]),
        "",
        "| repeat | dtype | wall time | peak RSS | demo's own total |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        if run["timed_out"]:
            lines.append(f"| {run['repeat']} | {run['dtype']} | > {run['wall_s'] / 60:.0f} min (stopped) | – | – |")
            continue
        lines.append(
            f"| {run['repeat']} | {run['dtype']} | {run['wall_s'] / 60:.1f} min | {run['peak_rss_mb']:,.0f} MiB | "
            f"{run['demo_seconds'] / 60:.1f} min |"
        )
    for run in runs:
        if run["table"] is None or run["repeat"]:
            continue
        lines += [
            "",
            f"The table `adajudge demo` printed in {run['dtype']} (held-out pairs, 95 % Wilson interval; difference to "
            "AdaJudge with its 95 % paired bootstrap interval; the validation check kept):",
            "",
            "| judge | held-out accuracy | variant − AdaJudge | best epoch |",
            "|---|---|---|---|",
        ]
        for name, row in run["table"].items():
            held_out, difference = row["held-out pairs"], row.get("difference_to_adajudge")
            versus = (
                f"{difference['diff']:+.1f} [{difference['ci_low']:+.1f}, {difference['ci_high']:+.1f}]"
                if difference
                else "–"
            )
            lines.append(
                f"| {name} | {held_out['accuracy']:.1f} [{held_out['ci_low']:.1f}, {held_out['ci_high']:.1f}] | "
                f"{versus} | {row['best_epoch']} |"
            )
    if parity:
        lines += [
            "",
            "Held-out accuracy per judge (each dtype trains its own heads on its own features, same seed), and the "
            "paired difference bf16 − fp32 over the same held-out pairs with its 95 % bootstrap interval:",
            "",
            "| judge | fp32 | bf16 | bf16 − fp32 (95 % CI) | pairs changing verdict |",
            "|---|---|---|---|---|",
        ]
        for name, row in parity.items():
            lines.append(
                f"| {name} | {row['fp32']:.1f} | {row['bf16']:.1f} | {row['diff']:+.1f} [{row['ci_low']:+.1f}, "
                f"{row['ci_high']:+.1f}] | {row['pairs_changed']} of {row['pairs']} |"
            )
    if rewards:
        lines += [
            "",
            f"The packaged fp32 AdaJudge judge (trained heads) scoring the {rewards['items']} held-out items with its "
            f"backbone in fp32 and in bf16 (heads fp32 both times): |bf16 − fp32| reward median {rewards['p50']:.2e}, "
            f"p90 {rewards['p90']:.2e}, p99 {rewards['p99']:.2e}, max {rewards['max']:.2e} (the fp32 rewards' std "
            f"{rewards['reward_std_fp32']:.2e}); {rewards['verdicts_changed']} pair verdicts change. Scoring took "
            f"{rewards['seconds']['fp32']:.0f} s in fp32, {rewards['seconds']['bf16']:.0f} s in bf16.",
        ]
    (args.output_dir / "demo-timing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(workdir, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
