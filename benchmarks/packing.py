"""Compute each prompt once: packed vs plain layouts, same model, same run.

1. Training step (forward + backward + AdamW, full fine-tuning, 8 pairs): plain rows [prompt; chosen] and
   [prompt; rejected] vs packed rows [prompt; chosen; rejected], on HH-RLHF-like pairs (the embedded data) and on
   long-prompt pairs whose prompt is as long as the two responses together.
2. Best-of-N scoring with N = 4, 16, 64 and prompt:response length ratios 1:1, 4:1, 16:1: N independent rows
   (length-batched) vs `score_packed_ids` (the prompt once per packed row).

Both layouts give the same rewards (checked here, and in tests/test_packing.py). Times are medians of `--reps`.

    python benchmarks/packing.py                        # SmolLM2-135M (resolved offline)
    python benchmarks/packing.py --backbone tiny --reps 1   # smoke run
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from adajudge_hf import AdaJudgeForRewardModeling
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
def independent_scores(model, prompt: list[int], responses: list[list[int]], batch_tokens: int) -> torch.Tensor:
    rows_per_batch = max(1, batch_tokens // (len(prompt) + len(responses[0])))
    rewards = []
    for start in range(0, len(responses), rows_per_batch):
        chunk = responses[start : start + rows_per_batch]
        inputs = {
            "input_ids": torch.tensor([prompt + r for r in chunk]),
            "prompt_lengths": torch.tensor([len(prompt)] * len(chunk)),
        }
        rewards.append(model(**inputs).logits[:, 0])
    return torch.cat(rewards)


def best_of_n_comparison(model, reps: int, response_length: int, batch_tokens: int, row_tokens: int) -> list[dict]:
    vocab = model.config.text_config.vocab_size
    generator = torch.Generator().manual_seed(1)
    results = []
    for ratio in (1, 4, 16):
        prompt = torch.randint(3, vocab, (ratio * response_length,), generator=generator).tolist()
        for n in (4, 16, 64):
            responses = torch.randint(3, vocab, (n, response_length), generator=generator).tolist()
            packed = score_packed_ids(model, prompt, responses, max_tokens_per_row=row_tokens)["rewards"]
            torch.testing.assert_close(
                packed, independent_scores(model, prompt, responses, batch_tokens), atol=1e-3, rtol=1e-3
            )
            independent_s = median_time(
                lambda p=prompt, r=responses: independent_scores(model, p, r, batch_tokens), reps
            )
            packed_s = median_time(
                lambda p=prompt, r=responses: score_packed_ids(model, p, r, max_tokens_per_row=row_tokens), reps
            )
            results.append(
                {
                    "n": n,
                    "prompt_to_response": f"{ratio}:1",
                    "prompt_tokens": len(prompt),
                    "response_tokens": response_length,
                    "independent_s": independent_s,
                    "packed_s": packed_s,
                    "speedup": independent_s / packed_s,
                }
            )
            print(f"best-of-{n} at {ratio}:1: independent {independent_s:.2f} s, packed {packed_s:.2f} s, "
                  f"x{independent_s / packed_s:.2f}", flush=True)  # fmt: skip
    return results


def write(results: dict, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "packing.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Shared-prompt packing ({results['backbone']}, {results['threads']} threads)", ""]
    lines += [
        "| training data | pairs | plain tokens | packed tokens | plain s | packed s | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["training"]:
        lines.append(f"| {r['data']} | {r['pairs']} | {r['plain_tokens']} | {r['packed_tokens']} | {r['plain_s']:.2f} | "
                     f"{r['packed_s']:.2f} | **x{r['speedup']:.2f}** |")  # fmt: skip
    lines += ["", "| N | prompt:response | independent s | packed s | speed-up |", "|---|---|---|---|---|"]
    for r in results["best_of_n"]:
        lines.append(f"| {r['n']} | {r['prompt_to_response']} ({r['prompt_tokens']}:{r['response_tokens']} tokens) | "
                     f"{r['independent_s']:.2f} | {r['packed_s']:.2f} | **x{r['speedup']:.2f}** |")  # fmt: skip
    (output_dir / "packing.md").write_text("\n".join(lines) + "\n")

    figure, axis = plt.subplots(figsize=(5, 3.2))
    for ratio in ("1:1", "4:1", "16:1"):
        rows = [r for r in results["best_of_n"] if r["prompt_to_response"] == ratio]
        axis.plot([r["n"] for r in rows], [r["speedup"] for r in rows], "o-", label=f"prompt:response {ratio}")
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
    parser.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per independent batch")
    parser.add_argument("--row-tokens", type=int, default=4096, help="max tokens of one packed best-of-N row")
    parser.add_argument("--output-dir", default=str(RESULTS))
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
    results = {"backbone": args.backbone, "threads": torch.get_num_threads()}
    results["training"] = training_comparison(model, tokenizer, args.reps, args.pairs_per_step, args.response_length)
    results["best_of_n"] = best_of_n_comparison(
        model.eval(), args.reps, args.best_of_n_response_length, args.batch_tokens, args.row_tokens
    )
    write(results, Path(args.output_dir))
    return results


if __name__ == "__main__":
    main()
