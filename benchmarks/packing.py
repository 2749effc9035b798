"""Compute each prompt once: packed vs plain layouts, same model, same run.

1. Training step (forward + backward + AdamW, full fine-tuning, 8 pairs): plain rows [prompt; chosen] and
   [prompt; rejected] vs packed rows [prompt; chosen; rejected], on HH-RLHF-like pairs (the embedded data) and on
   long-prompt pairs whose prompt is as long as the two responses together.
2. Best-of-N scoring with N = 4, 16, 64 and prompt:response length ratios 1:1, 4:1, 16:1: N independent rows
   (length-batched) vs `score_packed_ids` (the prompt once per packed row).

Both layouts give the same rewards (checked here, and in tests/test_packing.py). Times are medians of `--reps`.
Best-of-N also reports its token bound, independent tokens / packed tokens: on a CPU, where cost is linear in
tokens, no layout gains more. `--dtypes fp32 bf16` times best-of-N with the backbone in each dtype (heads in fp32),
the dtypes interleaved within each repetition; default: the dtype `--dtype auto` picks on this CPU.

    python benchmarks/packing.py                        # SmolLM2-135M (resolved offline)
    python benchmarks/packing.py --backbone tiny --reps 1   # smoke run
    python benchmarks/packing.py --best-of-n-only --n 16 --ratios 4 --dtypes fp32 bf16 --reps 5 \
        --output-dir benchmarks/results/packing-dtypes
"""

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from hardware import DTYPES, benchmark_dtype, hardware, hardware_markdown
from transformers import AutoTokenizer

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.batching import DEFAULT_BATCH_TOKENS
from adajudge_hf.embedded_data import load_embedded_preferences
from adajudge_hf.packing import encode_packed, pack_responses, pad_packed, score_packed_ids


RESULTS = Path(__file__).resolve().parent / "results"


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_pairs_batch(pairs: list[tuple[list[int], list[int], list[int]]], pad: int) -> dict[str, torch.Tensor]:
    rows = [(p + c, len(p)) for p, c, _ in pairs] + [(p + r, len(p)) for p, _, r in pairs]
    width = max(len(ids) for ids, _ in rows)
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
        "prompt_lengths": torch.tensor([n for _, n in rows]),
    }


def train_step(model, optimizer, inputs) -> torch.Tensor:
    rewards = model(**inputs).logits.squeeze(-1)
    chosen, rejected = rewards.chunk(2)
    loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return rewards.detach()


def training_comparison(model, tokenizer, reps: int, pairs_per_step: int, response_length: int) -> list[dict]:
    pad = tokenizer.pad_token_id
    vocab = model.config.text_config.vocab_size
    generator = torch.Generator().manual_seed(0)

    def random_ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=generator).tolist()

    hh = load_embedded_preferences("train").select(range(pairs_per_step))
    hh_pairs = []
    for row in hh:
        ids, segments, _ = encode_packed(tokenizer, row["prompt"], [row["chosen"], row["rejected"]], max_length=512)
        hh_pairs.append(tuple([t for t, s in zip(ids, segments) if s == k] for k in range(3)))
    long_prompt = [
        (random_ids(2 * response_length), random_ids(response_length), random_ids(response_length))
        for _ in range(pairs_per_step)
    ]
    results = []
    for name, pairs in (
        ("HH-RLHF-like (embedded pairs)", hh_pairs),
        ("long prompt (prompt = chosen + rejected)", long_prompt),
    ):
        plain = plain_pairs_batch(pairs, pad)
        packed = pad_packed([pack_responses(p, [c, r]) for p, c, r in pairs], pad)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0 keeps the weights identical across steps
        model.train()
        torch.testing.assert_close(
            train_step(model, optimizer, packed), train_step(model, optimizer, plain), atol=1e-3, rtol=1e-3
        )
        plain_s = median_time(lambda plain=plain, optimizer=optimizer: train_step(model, optimizer, plain), reps)
        packed_s = median_time(lambda packed=packed, optimizer=optimizer: train_step(model, optimizer, packed), reps)
        plain_tokens, packed_tokens = int(plain["attention_mask"].sum()), int(packed["attention_mask"].sum())
        results.append(
            {
                "data": name,
                "pairs": len(pairs),
                "plain_tokens": plain_tokens,
                "packed_tokens": packed_tokens,
                "plain_s": plain_s,
                "packed_s": packed_s,
                "speedup": plain_s / packed_s,
            }
        )
        print(
            f"train step, {name}: plain {plain_s:.2f} s, packed {packed_s:.2f} s, x{plain_s / packed_s:.2f}",
            flush=True,
        )
    model.eval()
    return results


@torch.inference_mode()
def independent_scores(model, prompt: list[int], responses: list[list[int]], max_batch_tokens: int) -> torch.Tensor:
    rows_per_batch = max(1, max_batch_tokens // (len(prompt) + len(responses[0])))
    rewards = []
    for start in range(0, len(responses), rows_per_batch):
        chunk = responses[start : start + rows_per_batch]
        inputs = {
            "input_ids": torch.tensor([prompt + r for r in chunk]),
            "prompt_lengths": torch.tensor([len(prompt)] * len(chunk)),
        }
        rewards.append(model(**inputs).logits[:, 0])
    return torch.cat(rewards)


def best_of_n_comparison(
    models: dict[str, AdaJudgeForRewardModeling],
    reps: int,
    response_length: int,
    max_batch_tokens: int,
    row_tokens: int,
    sizes: list[int],
    ratios: list[int],
) -> list[dict]:
    """Per (ratio, N, dtype): independent vs packed seconds, median and min-max of `reps`; within a repetition every
    dtype and layout runs once, the order rotating, so machine noise falls on all of them alike."""
    vocab = next(iter(models.values())).config.text_config.vocab_size
    generator = torch.Generator().manual_seed(1)
    results = []
    for ratio in ratios:
        prompt = torch.randint(3, vocab, (ratio * response_length,), generator=generator).tolist()
        for n in sizes:
            responses = torch.randint(3, vocab, (n, response_length), generator=generator).tolist()
            runs = {}
            for dtype, model in models.items():
                packed = score_packed_ids(model, prompt, responses, max_batch_tokens=row_tokens)["rewards"]
                atol = 1e-3 if dtype == "fp32" else 3e-2  # bf16: tests/test_precision.py's tolerance
                independent = independent_scores(model, prompt, responses, max_batch_tokens).float()
                torch.testing.assert_close(packed, independent, atol=atol * max(1.0, independent.abs().max()), rtol=0)
                runs[(dtype, "independent")] = lambda m=model, p=prompt, r=responses: independent_scores(
                    m, p, r, max_batch_tokens
                )
                runs[(dtype, "packed")] = lambda m=model, p=prompt, r=responses: score_packed_ids(
                    m, p, r, max_batch_tokens=row_tokens
                )
            seconds = {key: [] for key in runs}
            keys = list(runs)
            for repeat in range(reps):
                for key in keys[repeat % len(keys) :] + keys[: repeat % len(keys)]:
                    began = time.perf_counter()
                    runs[key]()
                    seconds[key].append(time.perf_counter() - began)
            rows_tokens = len(prompt) + response_length
            packed_tokens = sum(
                len(prompt) + sum(len(r) for r in row) for row in _packed_rows(prompt, responses, row_tokens)
            )
            for dtype in models:
                independent_s, packed_s = seconds[(dtype, "independent")], seconds[(dtype, "packed")]
                speedups = [a / b for a, b in zip(independent_s, packed_s)]
                results.append(
                    {
                        "n": n,
                        "prompt_to_response": f"{ratio}:1",
                        "dtype": dtype,
                        "prompt_tokens": len(prompt),
                        "response_tokens": response_length,
                        "independent_s": statistics.median(independent_s),
                        "packed_s": statistics.median(packed_s),
                        "speedup": statistics.median(speedups),
                        "speedup_min": min(speedups),
                        "speedup_max": max(speedups),
                        "token_bound": n * rows_tokens / packed_tokens,
                        "reps": reps,
                    }
                )
                row = results[-1]
                print(f"best-of-{n} at {ratio}:1, {dtype}: independent {row['independent_s']:.2f} s, packed "
                      f"{row['packed_s']:.2f} s, x{row['speedup']:.2f} [{min(speedups):.2f}-{max(speedups):.2f}] "
                      f"of token bound x{row['token_bound']:.2f}", flush=True)  # fmt: skip
    return results


def _packed_rows(prompt: list[int], responses: list[list[int]], row_tokens: int) -> list[list[list[int]]]:
    """The rows `score_packed_ids` makes: responses in order, a new row when the next would pass `row_tokens`."""
    rows, current = [], []
    for ids in responses:
        if current and len(prompt) + sum(map(len, current)) + len(ids) > row_tokens:
            rows.append(current)
            current = []
        current.append(ids)
    return [*rows, current]


def write(results: dict, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "packing.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Shared-prompt packing ({results['backbone']}, {results['threads']} threads)", ""]
    lines += [f"Command: `{results['command']}`.", "", hardware_markdown(results["hardware"]), ""]
    if results["training"]:
        lines += [
            "| training data | pairs | plain tokens | packed tokens | plain s | packed s | speed-up |",
            "|---|---|---|---|---|---|---|",
        ]
    for r in results["training"]:
        lines.append(f"| {r['data']} | {r['pairs']} | {r['plain_tokens']} | {r['packed_tokens']} | {r['plain_s']:.2f} | "
                     f"{r['packed_s']:.2f} | **x{r['speedup']:.2f}** |")  # fmt: skip
    lines += [
        "",
        "Best-of-N: median of the repetitions, speed-up [min–max] per repetition; of bound = speed-up / token bound.",
        "",
        "| N | prompt:response | dtype | independent s | packed s | speed-up | token bound | of bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["best_of_n"]:
        lines.append(f"| {r['n']} | {r['prompt_to_response']} ({r['prompt_tokens']}:{r['response_tokens']} tokens) | "
                     f"{r['dtype']} | {r['independent_s']:.2f} | {r['packed_s']:.2f} | **x{r['speedup']:.2f}** "
                     f"[{r['speedup_min']:.2f}–{r['speedup_max']:.2f}] | x{r['token_bound']:.2f} | "
                     f"{r['speedup'] / r['token_bound']:.2f} |")  # fmt: skip
    (output_dir / "packing.md").write_text("\n".join(lines) + "\n")

    figure, axis = plt.subplots(figsize=(5, 3.2))
    for ratio in sorted({r["prompt_to_response"] for r in results["best_of_n"]}):
        for dtype in sorted({r["dtype"] for r in results["best_of_n"]}):
            rows = [r for r in results["best_of_n"] if r["prompt_to_response"] == ratio and r["dtype"] == dtype]
            axis.plot([r["n"] for r in rows], [r["speedup"] for r in rows], "o-", label=f"{ratio}, {dtype}")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("N responses")
    axis.set_ylabel("speed-up over independent scoring")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "packing.png", dpi=120)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="id, folder, or 'tiny'")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pairs-per-step", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=64, help="response tokens of the long-prompt pairs")
    parser.add_argument("--best-of-n-response-length", type=int, default=32)
    parser.add_argument(
        "--max-batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="padded tokens per independent batch"
    )
    parser.add_argument("--row-tokens", type=int, default=4096, help="max tokens of one packed best-of-N row")
    parser.add_argument("--output-dir", default=str(RESULTS))
    parser.add_argument("--dtypes", nargs="+", choices=("auto", *DTYPES), default=["auto"], help="best-of-N dtypes")
    parser.add_argument("--n", type=int, nargs="+", default=[4, 16, 64], help="best-of-N sizes")
    parser.add_argument("--ratios", type=int, nargs="+", default=[1, 4, 16], help="best-of-N prompt:response ratios")
    parser.add_argument("--best-of-n-only", action="store_true", help="skip the training-step comparison")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.backbone == "tiny":
        import tempfile

        from adajudge_hf.testing import save_tiny_causal_lm

        folder = save_tiny_causal_lm(Path(tempfile.mkdtemp()) / "tiny")
    else:
        from adajudge_hf.backbones import resolve_backbone

        folder = resolve_backbone(args.backbone)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = AdaJudgeForRewardModeling.from_backbone(folder, tokenizer=tokenizer, num_refinement_blocks=3)
    results = {
        "backbone": args.backbone,
        "threads": torch.get_num_threads(),
        "command": "python benchmarks/packing.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hardware": hardware(),
    }
    results["training"] = (
        []
        if args.best_of_n_only
        else training_comparison(model, tokenizer, args.reps, args.pairs_per_step, args.response_length)
    )
    model.eval()
    dtypes = dict.fromkeys(benchmark_dtype(choice) for choice in args.dtypes)
    models = {dtype: copy.deepcopy(model).to(DTYPES[dtype]) if dtype != "fp32" else model for dtype in dtypes}
    for judge in models.values():  # the heads compute in fp32 whatever the backbone's dtype, as when loaded
        judge.judge_head.float()
    results["best_of_n"] = best_of_n_comparison(
        models, args.reps, args.best_of_n_response_length, args.max_batch_tokens, args.row_tokens, args.n, args.ratios
    )
    write(results, Path(args.output_dir))
    return results


if __name__ == "__main__":
    main()
