"""Reward-server load test: `adajudge serve` against a naive per-request server, closed loop, on loopback.

OpenRLHF's trainer (since v0.9.3) posts one sample per request from many rollout coroutines at once, and its
`serve_rm` scores each request as it arrives, blocking its event loop, with no batching across requests. Both servers
here run the same judge in their own process; C concurrent clients each post one item per request
(`{"query": [text], "prompts": [prompt]}`, OpenRLHF's body) and send the next as soon as the answer is back. Items
come in GRPO groups: G completions of one prompt, consecutive, so a group is in flight together as rollouts finish.

- `adajudge`: the real `adajudge serve JUDGE` process (dynamic batching, prompt groups packed into one row).
- `naive`: `serve_rm`'s way, in this file (`--serve-naive`): each request is tokenised and scored on arrival, left
  padded, inside the async handler, so requests are served one at a time.
- `naive-fp32` (when `--dtype` is not fp32): the naive server in fp32, the baseline of a user who never switched.

`--dtype fp32|bf16` is the weights' dtype of `adajudge serve`, the naive server and the offline bound (the heads compute
in fp32 either way); `auto` (the default) takes what `adajudge serve --dtype auto` picks on this CPU, bf16 only where it
has AMX-BF16 / AVX512-BF16 units. The results files name the CPU and its `lscpu` flags.

Each repetition runs every concurrency level on both servers, alternating which goes first, on the same items. Per
(server, C): items/s, p50/p99 latency, and for `adajudge` the mean items per forward pass (from `/metrics`). The
rewards of both servers are compared item by item (same judge, so they must agree).

    python benchmarks/serving.py                                     # SmolLM2-135M, C = 1 8 32 64, 3 repetitions
    python benchmarks/serving.py --dtype bf16                        # + the fp32 naive server; results/serving-bf16
    python benchmarks/serving.py --backbone tiny --concurrency 1 8 --repeats 1   # seconds-long smoke run
"""

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import torch
from hardware import DTYPES, benchmark_dtype, hardware, hardware_markdown

from adajudge_hf.testing import free_port


RESULTS = Path(__file__).parent / "results"


# --- the judge and the workload ----------------------------------------------------------------------------------


def build_judge(backbone: str, folder: Path, num_refinement_blocks: int) -> Path:
    """A judge around `backbone` with random heads (throughput does not depend on their values), saved as full."""
    from transformers import AutoTokenizer

    from adajudge_hf import AdaJudgeForRewardModeling, save_judge
    from adajudge_hf.backbones import resolve_backbone
    from adajudge_hf.testing import save_tiny_causal_lm

    path = save_tiny_causal_lm(folder / "backbone") if backbone == "tiny" else resolve_backbone(backbone)
    torch.manual_seed(0)
    judge = AdaJudgeForRewardModeling.from_backbone(path, num_refinement_blocks=num_refinement_blocks)
    return save_judge(judge.eval(), folder / "judge", form="full", tokenizer=AutoTokenizer.from_pretrained(path))


def grpo_groups(
    tokenizer, num_prompts: int, group_size: int, max_prompt: int, max_response: int, seed: int, min_prompt: int = 0
):
    """`num_prompts` conversations of the embedded HH-RLHF test split (`min_prompt` to `max_prompt` tokens rendered),
    each with `group_size` completions drawn from the split's answers (cut to `max_response` tokens):
    [(messages, [str])]."""
    from adajudge_hf.embedded_data import load_embedded_preferences

    rows = load_embedded_preferences("test")
    rng = random.Random(seed)
    answers = [row[key][-1]["content"] for row in rows for key in ("chosen", "rejected")]
    answers = [tokenizer.decode(tokenizer(a, add_special_tokens=False)["input_ids"][:max_response]) for a in answers]
    answers = [a for a in answers if a.strip()]
    groups = []
    for row in rows:
        rendered = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        if min_prompt <= len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) <= max_prompt:
            groups.append((row["prompt"], rng.sample(answers, group_size)))
        if len(groups) == num_prompts:
            return groups
    raise ValueError(f"only {len(groups)} prompts have {min_prompt}-{max_prompt} tokens")


def grpo_items(tokenizer, num_prompts: int, group_size: int, max_prompt: int, max_response: int, seed: int,
               min_prompt: int = 0):  # fmt: skip
    """The groups as whole conversations rendered with the judge's chat template: [(query text, prompt text)]. The
    server reads a query as the conversation it holds and scores the judge's rendering of it, so the naive server,
    which scores the text as sent, gets the same tokens."""
    items = []
    groups = grpo_groups(tokenizer, num_prompts, group_size, max_prompt, max_response, seed, min_prompt)
    for messages, completions in groups:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for completion in completions:
            turns = messages + [{"role": "assistant", "content": completion}]
            items.append((tokenizer.apply_chat_template(turns, tokenize=False), prompt))
    return items


# --- the naive server (OpenRLHF serve_rm's way) ------------------------------------------------------------------


def serve_naive(judge_folder: str, port: int, dtype: str) -> None:
    """Score each request on arrival in the handler (blocking the event loop), as `openrlhf.cli.serve_rm` does."""
    import uvicorn
    from fastapi import FastAPI, Request
    from transformers import AutoTokenizer

    from adajudge_hf import load_judge

    judge = load_judge(judge_folder, dtype=DTYPES[dtype]).eval()
    tokenizer = AutoTokenizer.from_pretrained(judge_folder)
    app = FastAPI()

    @app.post("/get_reward")
    async def get_reward(request: Request):
        queries = (await request.json())["query"]
        inputs = tokenizer(queries, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        with torch.inference_mode():
            rewards = judge(**inputs).logits[:, 0].tolist()
        return {"rewards": rewards, "scores": [1 / (1 + pow(2.718281828459045, -r)) for r in rewards]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# --- the bound: the same work without a server -------------------------------------------------------------------


def offline_bound(
    judge_folder: Path, items: list[tuple[str, str]], group_size: int, step: int, repeats: int, dtype: str
) -> dict:
    """Where the limit lies on this machine: the same items scored in-process, with no HTTP and no waiting.

    `per_item`: one forward per item, the naive server's work. `per_group`: one packed row per GRPO group, each
    prompt computed once. `per_step`: `step` items at a time in the passes `adajudge serve` plans for a step. The
    ratios per_item / per_group and per_item / per_step bound what any server can gain here by sharing prompts and
    batching. In another dtype than fp32, `per_item_fp32` is the fp32 naive server's work, and per_item_fp32 /
    per_step the bound against it. Seconds per variant and repetition, variants interleaved."""
    from transformers import AutoTokenizer

    from adajudge_hf import load_judge
    from adajudge_hf.serve.batcher import DynamicBatcher
    from adajudge_hf.serve.templates import ItemEncoder

    judge = load_judge(judge_folder, dtype=DTYPES[dtype]).eval()
    fp32_judge = load_judge(judge_folder, dtype=torch.float32).eval() if dtype != "fp32" else None
    tokenizer = AutoTokenizer.from_pretrained(judge_folder)
    encoder = ItemEncoder(tokenizer)
    encoded = [encoder.from_query(query, prompt)[0] for query, prompt in items]
    batcher = DynamicBatcher(judge, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    @torch.inference_mode()
    def per_item(model, items=encoded):
        for item in items:
            input_ids = torch.tensor([item.input_ids])  # (1, L)
            model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))

    def in_steps(size: int):
        for start in range(0, len(encoded), size):
            batcher.score_now(encoded[start : start + size])

    variants = {
        "per_item": lambda: per_item(judge),
        "per_group": lambda: in_steps(group_size),
        "per_step": lambda: in_steps(step),
    }
    if fp32_judge is not None:
        variants["per_item_fp32"] = lambda: per_item(fp32_judge)
    seconds = {name: [] for name in variants}
    in_steps(step)  # warm-up
    for model in (judge, fp32_judge):
        if model is not None:
            per_item(model, encoded[:2])
    for repeat in range(repeats):
        for name, run in variants.items():
            began = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - began)
        print(
            f"offline bound, repeat {repeat}: " + ", ".join(f"{n} {s[-1]:.2f}s" for n, s in seconds.items()),
            flush=True,
        )
    ratios = {
        name: spread([a / b for a, b in zip(seconds["per_item"], seconds[name])]) for name in ("per_group", "per_step")
    }
    if fp32_judge is not None:
        ratios["per_step_vs_fp32"] = spread([a / b for a, b in zip(seconds["per_item_fp32"], seconds["per_step"])])
    prompts = {tuple(item.input_ids[: item.prompt_length or 0]) for item in encoded}
    tokens = {  # what each way computes: every item whole, or each prompt once and every response
        "per_item": sum(len(item.input_ids) for item in encoded),
        "per_group": sum(len(prompt) for prompt in prompts)
        + sum(len(item.input_ids) - (item.prompt_length or 0) for item in encoded),
    }
    return {
        "items": len(items),
        "step": step,
        "seconds": {name: spread(values) for name, values in seconds.items()},
        "ratio": ratios,
        "tokens": tokens,
    }


# --- the load generator ------------------------------------------------------------------------------------------


def start(command: list[str], url: str, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{command[:4]} exited: see {log}"
        try:
            import urllib.request

            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{command[:4]} did not become healthy in 300 s")


async def closed_loop(url: str, items: list[tuple[str, str]], concurrency: int) -> dict:
    """`concurrency` clients, one item per request, each sending its next as soon as an answer is back."""
    rewards: list[float | None] = [None] * len(items)
    latencies = []
    pending = iter(range(len(items)))
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def client(session):
        for index in pending:  # one shared iterator: the clients take items in order
            query, prompt = items[index]
            sent = time.perf_counter()
            async with session.post(f"{url}/get_reward", json={"query": [query], "prompts": [prompt]}) as answer:
                body = await answer.json()
                assert answer.status == 200, body
            latencies.append(time.perf_counter() - sent)
            rewards[index] = body["rewards"][0]

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    latencies.sort()
    return {
        "items": len(items),
        "seconds": seconds,
        "items_per_s": len(items) / seconds,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "rewards": rewards,
    }


def batch_counts(url: str) -> tuple[float, float]:
    """(items scored, forward passes) so far, from the server's Prometheus text."""
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    value = lambda name: sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))  # noqa: E731
    return value("adajudge_batch_items_sum"), value("adajudge_batch_items_count")


def summarize(runs: list[dict], levels: list[int], servers: list[str]) -> list[dict]:
    """Per C: each server's figures, and adajudge / naive (same dtype) and, when measured, adajudge / naive-fp32, per
    repetition."""
    rows = []
    for concurrency in levels:
        by = {
            server: [r for r in runs if r["server"] == server and r["concurrency"] == concurrency]
            for server in servers
        }
        row = {"concurrency": concurrency}
        for baseline, suffix in (("naive", ""), ("naive-fp32", "_vs_naive_fp32")):
            if baseline in by:
                pairs = list(zip(by["adajudge"], by[baseline]))
                row["throughput_ratio" + suffix] = spread([a["items_per_s"] / n["items_per_s"] for a, n in pairs])
                row["p99_ratio" + suffix] = spread([a["p99_s"] / n["p99_s"] for a, n in pairs])
        for server, server_runs in by.items():
            row[server] = {key: spread([r[key] for r in server_runs]) for key in ("items_per_s", "p50_s", "p99_s")}
        row["adajudge"]["items_per_pass"] = spread([r["items_per_pass"] for r in by["adajudge"]])
        rows.append(row)
    return rows


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def write_report(result: dict, output_dir: Path) -> None:
    dtype = result["dtype"]
    with_fp32 = "throughput_ratio_vs_naive_fp32" in result["summary"][0]
    bound = result.get("offline_bound")
    lines = [
        f"# Reward server under load, {dtype}: `adajudge serve` vs a naive per-request server",
        "",
        f"Command: `{result['command']}`. {result['setup']}",
        "",
        hardware_markdown(result["hardware"]),
        "",
        f"Median over repetitions, [min–max] across them; ratio = adajudge / naive ({dtype}), per repetition"
        + ("; vs fp32 naive = adajudge / the naive server in fp32" if with_fp32 else "")
        + (f"; of bound = the ratio's median / the offline bound's ({bound['step']}-item steps)" if bound else "")
        + ".",
        "",
        "| C | naive items/s | adajudge items/s | throughput ratio | "
        + ("vs fp32 naive (items/s) | " if with_fp32 else "")
        + ("of bound | " if bound else "")
        + "naive p50 / p99 s | adajudge p50 / p99 s | p99 ratio | items per pass |",
        "|---|---|---|---|" + ("---|" if with_fp32 else "") + ("---|" if bound else "") + "---|---|---|---|",
    ]
    fmt = lambda s, d=2: f"{s['median']:.{d}f} [{s['min']:.{d}f}–{s['max']:.{d}f}]"  # noqa: E731
    for row in result["summary"]:
        naive, ours = row["naive"], row["adajudge"]
        cells = [str(row["concurrency"]), fmt(naive["items_per_s"]), fmt(ours["items_per_s"])]
        cells.append(f"×{fmt(row['throughput_ratio'])}")
        if with_fp32:
            cells.append(f"×{fmt(row['throughput_ratio_vs_naive_fp32'])} ({fmt(row['naive-fp32']['items_per_s'])})")
        if bound:
            cells.append(f"{row['throughput_ratio']['median'] / bound['ratio']['per_step']['median']:.2f}")
        cells += [
            f"{naive['p50_s']['median']:.2f} / {naive['p99_s']['median']:.2f}",
            f"{ours['p50_s']['median']:.2f} / {ours['p99_s']['median']:.2f}",
            f"×{fmt(row['p99_ratio'])}",
            fmt(ours["items_per_pass"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Largest |reward difference| between adajudge and the naive server in {dtype} on the same item: "
        f"{result['max_reward_diff']:.2e}"
        + (
            f"; between adajudge ({dtype}) and the fp32 naive server: {result['max_reward_diff_vs_fp32']:.2e}."
            if with_fp32
            else "."
        ),
    ]
    if bound:
        seconds, ratio = bound["seconds"], bound["ratio"]
        lines += [
            "",
            f"**Offline bound** (where the limit lies): the same {bound['items']} items scored in-process, no HTTP, no "
            f"waiting, {seconds['per_item']['n']} repetitions interleaved, seconds median [min–max]: one forward per item (the naive server's work) "
            f"{fmt(seconds['per_item'])}; one packed row per GRPO group {fmt(seconds['per_group'])} "
            f"(×{fmt(ratio['per_group'])}); {bound['step']} items per step as `adajudge serve` plans them "
            f"{fmt(seconds['per_step'])} (×{fmt(ratio['per_step'])}). These ratios bound what sharing prompts and "
            "batching can gain on this machine for this workload; a server adds HTTP, tokenisation and waiting on top. "
            f"Tokens computed: {bound['tokens']['per_item']:,} item by item, {bound['tokens']['per_group']:,} with each "
            f"prompt once (×{bound['tokens']['per_item'] / bound['tokens']['per_group']:.2f}).",
        ]
        if "per_item_fp32" in seconds:
            lines[-1] += (
                f" The fp32 naive server's work (one fp32 forward per item) {fmt(seconds['per_item_fp32'])}: "
                f"{dtype} steps are ×{fmt(ratio['per_step_vs_fp32'])} faster than that."
            )
    (output_dir / "serving.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    levels = [row["concurrency"] for row in result["summary"]]
    for server in result["servers"]:
        stats = [row[server]["items_per_s"] for row in result["summary"]]
        median = [s["median"] for s in stats]
        errors = [[m - s["min"] for m, s in zip(median, stats)], [s["max"] - m for m, s in zip(median, stats)]]
        axis.errorbar(levels, median, yerr=errors, marker="o", capsize=3, label=server)
    axis.set(xscale="log", xlabel="concurrent clients (one item per request)", ylabel="items / s")
    axis.set_xticks(levels, [str(level) for level in levels])
    axis.legend()
    axis.set_title(f"Closed-loop throughput, {dtype}, GRPO groups of {result['group_size']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(output_dir / "serving.png", dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="Hub id, folder or 'tiny'")
    parser.add_argument("--num-refinement-blocks", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--group-size", type=int, default=8, help="completions per prompt (GRPO's G)")
    parser.add_argument("--items", type=int, default=32, help="items per run at least; 2 * C when more")
    parser.add_argument("--min-prompt-tokens", type=int, default=0)
    parser.add_argument("--max-prompt-tokens", type=int, default=160)
    parser.add_argument("--max-response-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="adajudge serve --max-wait-ms")
    parser.add_argument("--bound-step", type=int, default=32, help="items per step of the offline bound (0: skip it)")
    parser.add_argument(
        "--dtype", choices=("auto", *DTYPES), default="auto", help="weights dtype (auto: adajudge serve's choice here)"
    )
    parser.add_argument("--output-dir", type=Path, help="default: results/serving-<dtype>")
    parser.add_argument("--serve-naive", metavar="JUDGE", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dtype = benchmark_dtype(args.dtype)
    if args.serve_naive:
        return serve_naive(args.serve_naive, args.port, dtype)
    output_dir = args.output_dir or RESULTS / f"serving-{dtype}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops the servers too (the finally below)

    from transformers import AutoTokenizer

    workdir = Path(tempfile.mkdtemp(prefix="adajudge-serving-"))
    judge = build_judge(args.backbone, workdir, args.num_refinement_blocks)
    tokenizer = AutoTokenizer.from_pretrained(judge)
    most = max(max(args.items, 2 * c) for c in args.concurrency)
    num_prompts = -(-most // args.group_size)
    items = grpo_items(
        tokenizer, num_prompts, args.group_size, args.max_prompt_tokens, args.max_response_tokens, 0,
        args.min_prompt_tokens,
    )  # fmt: skip
    lengths = [len(tokenizer(q, add_special_tokens=False)["input_ids"]) for q, _ in items]
    prompt_lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for _, p in items[:: args.group_size]]
    bound = None
    if args.bound_step:  # before the servers start, on an idle machine
        count = max(args.items, 2 * args.bound_step)
        bound = offline_bound(judge, items[: count - count % args.group_size], args.group_size, args.bound_step,
                              args.repeats, dtype)  # fmt: skip
    names = ["naive", "adajudge"] + (["naive-fp32"] if dtype != "fp32" else [])
    ports = {name: free_port() for name in names}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    naive = lambda name, dtype: [sys.executable, __file__, "--serve-naive", str(judge), "--port", str(ports[name]),  # noqa: E731
                                 "--dtype", dtype]  # fmt: skip
    servers = {
        "naive": naive("naive", dtype),
        "adajudge": [sys.executable, "-m", "adajudge_hf.cli", "serve", str(judge), "--port", str(ports["adajudge"]),
                     "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning",
                     "--dtype", str(DTYPES[dtype]).removeprefix("torch.")],
    }  # fmt: skip
    if "naive-fp32" in names:
        servers["naive-fp32"] = naive("naive-fp32", "fp32")
    processes = {name: start(command, urls[name], workdir / f"{name}.log") for name, command in servers.items()}
    runs, max_diff, max_diff_fp32 = [], 0.0, 0.0
    try:
        for name in servers:  # warm-up: first requests pay for allocations
            asyncio.run(closed_loop(urls[name], items[: 2 * args.group_size], 4))
        for repeat in range(args.repeats):
            for concurrency in args.concurrency:
                count = max(args.items, 2 * concurrency)
                count -= count % args.group_size
                run_items = items[:count]
                shift = (repeat + concurrency) % len(servers)  # which server goes first rotates
                order = [*servers][shift:] + [*servers][:shift]
                rewards = {}
                for name in order:
                    before = batch_counts(urls[name]) if name == "adajudge" else None
                    run = asyncio.run(closed_loop(urls[name], run_items, concurrency))
                    rewards[name] = run.pop("rewards")
                    run.update(server=name, concurrency=concurrency, repeat=repeat)
                    if before is not None:
                        after = batch_counts(urls[name])
                        run["items_per_pass"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
                    runs.append(run)
                    print(
                        f"repeat {repeat} C={concurrency:3d} {name:8s} {run['items_per_s']:7.2f} items/s  "
                        f"p50 {run['p50_s']:.2f}s p99 {run['p99_s']:.2f}s"
                        + (f"  {run['items_per_pass']:.1f} items/pass" if "items_per_pass" in run else ""),
                        flush=True,
                    )
                max_diff = max(max_diff, max(abs(a - b) for a, b in zip(rewards["naive"], rewards["adajudge"])))
                if "naive-fp32" in rewards:
                    differences = [abs(a - b) for a, b in zip(rewards["naive-fp32"], rewards["adajudge"])]
                    max_diff_fp32 = max(max_diff_fp32, *differences)
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(timeout=60)
    result = {
        "command": "python benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setup": (
            f"Backbone {args.backbone}, K={args.num_refinement_blocks}, {dtype} on CPU ({os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads); client and both servers on one machine (loopback). "
            f"GRPO groups of {args.group_size}; prompts {min(prompt_lengths)}–{max(prompt_lengths)} tokens "
            f"(median {statistics.median(prompt_lengths):.0f}), items {min(lengths)}–{max(lengths)} tokens "
            f"(median {statistics.median(lengths):.0f}); {args.repeats} repetitions, servers alternating; "
            f"items per run max({args.items}, 2·C); adajudge serve --max-wait-ms {args.max_wait_ms}."
        ),
        "dtype": dtype,
        "hardware": hardware(),
        "group_size": args.group_size,
        "servers": list(servers),
        "runs": runs,
        "summary": summarize(runs, args.concurrency, list(servers)),
        "max_reward_diff": max_diff,
        "max_reward_diff_vs_fp32": max_diff_fp32 if "naive-fp32" in servers else None,
        "offline_bound": bound,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "serving.json").write_text(json.dumps(result, indent=1))
    write_report(result, output_dir)
    print((output_dir / "serving.md").read_text())
    return result


if __name__ == "__main__":
    main()
