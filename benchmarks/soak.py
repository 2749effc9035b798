"""Soak run of `adajudge serve`: minutes of mixed valid and invalid traffic with client disconnects.

A real `adajudge serve` process is loaded with `--clients` concurrent clients for `--minutes`. Each request is, at
random: an OpenRLHF `/get_reward` of 1-4 items (most of the traffic), a slime `/score` prompt group, a malformed or
ill-typed body, or a valid request whose client gives up after a few milliseconds (a disconnect). Every valid answer
is checked item by item, in order, against rewards computed in this process with `score_responses` before the run;
every invalid request must get its 4xx. The server's resident memory (VmRSS) is sampled throughout.

    python benchmarks/soak.py                                         # SmolLM2-135M, 10 minutes, 16 clients
    python benchmarks/soak.py --backbone tiny --minutes 0.5           # smoke run
"""

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import torch
from transformers import AutoTokenizer


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from adajudge_hf import load_judge  # noqa: E402
from adajudge_hf.evaluation import score_responses  # noqa: E402
from benchmarks.serving import RESULTS, build_judge, free_port, grpo_groups, start  # noqa: E402


ATOL = 1e-4  # fp32; batch composition changes summation order only
INVALID = [  # (body bytes, expected status)
    (b"{not json", 400),
    (json.dumps({"query": "a string, not a list"}).encode(), 422),
    (json.dumps({"query": [1, 2]}).encode(), 422),
    (json.dumps({"query": ["a", "b"], "prompts": ["a"]}).encode(), 422),
]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def soak(url: str, pool: list[dict], groups: list[dict], args, pid: int) -> dict:
    counts, failures, rss = Counter(), [], []
    deadline = time.monotonic() + args.minutes * 60
    timeout = aiohttp.ClientTimeout(total=300)

    def check(kind: str, expected: list[float], got: list[float]) -> None:
        if len(got) != len(expected) or any(abs(a - b) > ATOL for a, b in zip(got, expected)):
            failures.append({"kind": kind, "expected": expected, "got": got})

    async def client(session: aiohttp.ClientSession, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            draw = rng.random()
            if draw < 0.7:
                items = rng.sample(pool, rng.randint(1, 4))
                body = {"query": [i["query"] for i in items], "prompts": [i["prompt"] for i in items]}
                async with session.post(f"{url}/get_reward", json=body) as answer:
                    counts[f"get_reward {answer.status}"] += 1
                    if answer.status != 200:
                        failures.append({"kind": "get_reward", "status": answer.status, "text": await answer.text()})
                        continue
                    check("get_reward", [i["expected"] for i in items], (await answer.json())["rewards"])
            elif draw < 0.8:
                group = rng.choice(groups)
                async with session.post(f"{url}/score", json=group["body"]) as answer:
                    counts[f"score {answer.status}"] += 1
                    if answer.status != 200:
                        failures.append({"kind": "score", "status": answer.status, "text": await answer.text()})
                        continue
                    check("score", group["expected"], (await answer.json())["rewards"])
            elif draw < 0.9:
                body, status = rng.choice(INVALID)
                headers = {"content-type": "application/json"}
                async with session.post(f"{url}/get_reward", data=body, headers=headers) as answer:
                    counts[f"invalid {answer.status}"] += 1
                    if answer.status != status or not (await answer.json()).get("error"):
                        failures.append({"kind": "invalid", "expected_status": status, "status": answer.status})
            else:  # a client that gives up while its items are queued or being scored
                items = rng.sample(pool, rng.randint(1, 4))
                try:
                    async with session.post(
                        f"{url}/get_reward",
                        json={"query": [i["query"] for i in items]},
                        timeout=aiohttp.ClientTimeout(total=rng.uniform(0.005, 0.05)),
                    ) as answer:
                        await answer.read()
                        counts[f"disconnect-too-late {answer.status}"] += 1
                except asyncio.TimeoutError:
                    counts["disconnect"] += 1

    async def sample_memory() -> None:
        began = time.monotonic()
        while time.monotonic() < deadline:
            rss.append((round(time.monotonic() - began, 1), rss_mb(pid)))
            await asyncio.sleep(args.sample_seconds)
        rss.append((round(time.monotonic() - began, 1), rss_mb(pid)))

    async with aiohttp.ClientSession(timeout=timeout) as session:
        began = time.monotonic()
        await asyncio.gather(sample_memory(), *(client(session, seed) for seed in range(args.clients)))
        seconds = time.monotonic() - began
        async with session.get(f"{url}/health") as answer:
            healthy = answer.status == 200
        async with session.get(f"{url}/metrics") as answer:
            metrics = await answer.text()
    items = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("adajudge_items_total "))
    return {"seconds": seconds, "counts": dict(sorted(counts.items())), "failures": failures[:20],
            "num_failures": len(failures), "rss_mb": rss, "healthy_after": healthy, "items_scored": items}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="Hub id, folder or 'tiny'")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="adajudge-soak-"))
    folder = build_judge(args.backbone, workdir, num_refinement_blocks=2)
    judge, tokenizer = load_judge(folder).eval(), AutoTokenizer.from_pretrained(folder)
    conversations = grpo_groups(tokenizer, 12, 4, max_prompt=160, max_response=64, seed=1)
    prompts = [messages for messages, group in conversations for _ in group]
    responses = [[{"role": "assistant", "content": c}] for _, group in conversations for c in group]
    expected = score_responses(judge, tokenizer, prompts, responses, show_progress=False).rewards.tolist()
    render = lambda messages, **kw: tokenizer.apply_chat_template(messages, tokenize=False, **kw)  # noqa: E731
    pool = [
        {"query": render(p + r), "prompt": render(p, add_generation_prompt=True), "expected": e}
        for p, r, e in zip(prompts, responses, expected)
    ]
    groups = [
        {"body": {"prompt": messages, "responses": [[{"role": "assistant", "content": c}] for c in group]},
         "expected": expected[4 * n : 4 * n + 4]}
        for n, (messages, group) in enumerate(conversations)
    ]  # fmt: skip
    del judge
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "adajudge_hf.cli", "serve", str(folder), "--port", str(port), "--log-level",
               "warning"]  # fmt: skip
    process = start(command, url, workdir / "server.log")
    try:
        result = asyncio.run(soak(url, pool, groups, args, process.pid))
    finally:
        process.terminate()
        exit_code = process.wait(timeout=120)
    rss = [mb for _, mb in result["rss_mb"]]
    result.update(
        command="python benchmarks/soak.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        backbone=args.backbone,
        clients=args.clients,
        server_exit_code=exit_code,
        rss_start_mb=rss[0],
        rss_end_mb=rss[-1],
        rss_max_mb=max(rss),
        rss_after_1_min_mb=next((mb for t, mb in result["rss_mb"] if t >= 60), rss[-1]),
    )
    valid = sum(v for k, v in result["counts"].items() if k.startswith(("get_reward", "score")))
    lines = [
        "# Soak run of `adajudge serve`",
        "",
        f"Command: `{result['command']}`. Backbone {args.backbone}, K=2, fp32, CPU; {args.clients} concurrent "
        f"clients for {result['seconds'] / 60:.1f} min on loopback; server and clients on one machine.",
        "",
        f"- Requests by kind and status: {result['counts']}",
        f"- Valid requests: {valid}; answers lost, failed or not equal (in order, atol {ATOL}) to in-process "
        f"rewards: **{result['num_failures']}**; items scored by the server: {result['items_scored']:.0f}.",
        f"- Server RSS: {result['rss_start_mb']:.0f} MB at start (warmed up), {result['rss_after_1_min_mb']:.0f} MB "
        f"after 1 min, {result['rss_end_mb']:.0f} MB at end, max "
        f"{result['rss_max_mb']:.0f} MB (sampled every {args.sample_seconds:.0f} s; `soak.json` has the series).",
        f"- Healthy after the run: {result['healthy_after']}; exit code after SIGTERM: {exit_code}.",
    ]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "soak.json").write_text(json.dumps(result, indent=1))
    (args.output_dir / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)  # the reference rewards are computed before the server starts; keep the client light
    main()
