"""Items per second of one AdaJudge judge: vLLM (offline and served) vs our transformers scorer vs `adajudge serve`.

    make .venv-vllm/.installed   # vLLM's CPU build in its own environment (see `make test-vllm`)
    .venv/bin/python benchmarks/vllm_throughput.py      # writes benchmarks/results/vllm_throughput.{json,md}

Same judge (saved once in the full form), same texts, four scorers:
1. `score_responses` (adajudge_hf.evaluation): length-sorted buckets under a token budget, in this process
   (.venv, the project's transformers).
2. `LLM(judge, runner="pooling").classify(texts)`: vLLM's CPU build in a worker process of `.venv-vllm`
   (`adajudge_hf.vllm` registered by its entry point), all texts at once.
3. `vllm serve judge --runner pooling` (`.venv-vllm`) and 4. `adajudge serve judge` (`.venv`): each gets the texts
   as verl's reward loop sends them, one text per `POST /classify` with `use_activation: false`, from `--concurrency`
   clients that send their next as soon as an answer is back.
The texts are the conversations rendered by the judge's chat template (what vLLM and verl receive); scorer 1 gets the
same conversations as messages. Every engine is loaded once (load times reported apart) and warmed up; the scorers
are interleaved, `--repeats` times each, in a rotating order; the table gives medians and the spread (min-max) and the
largest reward difference to scorer 1. The judge is SmolLM2-135M-Instruct (offline copy via `resolve_backbone`) with
the default heads (K = 3, adaptive pooling), randomised; the data are HH-RLHF harmless pairs shipped in the package
(chosen and rejected of each pair).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from adajudge_hf.batching import DEFAULT_BATCH_TOKENS
from adajudge_hf.testing import free_port


RESULTS = Path(__file__).resolve().parent / "results"
MARKER = "@@vllm-throughput "  # prefix of the worker's result lines (vLLM logs to the same stream)


def vllm_worker(judge: str, texts_file: str, max_model_len: int) -> None:
    """Runs in .venv-vllm: load the judge once, then time `classify` over all texts on every 'run' line of stdin."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM

    texts = json.loads(Path(texts_file).read_text())
    start = time.perf_counter()
    llm = LLM(model=judge, runner="pooling", dtype="float32", enforce_eager=True, max_model_len=max_model_len, seed=0)
    llm.classify(texts[:8], use_tqdm=False)  # warm-up
    print(MARKER + json.dumps({"load_seconds": time.perf_counter() - start}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        outputs = llm.classify(texts, use_tqdm=False)
        seconds = time.perf_counter() - start
        rewards = [output.outputs.probs[0] for output in outputs]
        print(MARKER + json.dumps({"seconds": seconds, "rewards": rewards}), flush=True)


def read_result(worker: subprocess.Popen) -> dict:
    for line in worker.stdout:
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    raise RuntimeError(f"the vLLM worker exited with code {worker.wait()} before reporting; see its log above")


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def start_server(command: list[str], url: str, log: Path, env: dict) -> subprocess.Popen:
    """Start a server process and wait (at most 10 minutes) until `GET /health` answers 200."""
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"{' '.join(command[:3])} exited with code {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise TimeoutError(f"{' '.join(command[:3])} not healthy in 600 s; see {log}")


def classify_one_per_request(url: str, model: str, texts: list[str], concurrency: int) -> tuple[float, list[float]]:
    """verl's call: one text per `POST /classify`, raw reward = `data[-1].probs[-1]`; `concurrency` clients."""

    def reward(text: str) -> float:
        answer = post(f"{url}/classify", {"model": model, "input": text, "use_activation": False})
        return answer["data"][-1]["probs"][-1]

    with ThreadPoolExecutor(concurrency) as clients:
        start = time.perf_counter()
        rewards = list(clients.map(reward, texts))
        return time.perf_counter() - start, rewards


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


SCORERS = {
    "transformers": "transformers `score_responses` (in process)",
    "vllm_offline": "vLLM `LLM.classify` (all texts at once)",
    "vllm_serve": "`vllm serve`, 1 text per /classify",
    "adajudge_serve": "`adajudge serve`, 1 text per /classify",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32, help="HH-RLHF pairs; 2 items (chosen, rejected) each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="clients of the two servers")
    parser.add_argument(
        "--max-batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="token budget of the transformers scorer"
    )
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--vllm-python", default=str(Path(".venv-vllm") / "bin" / "python"))
    parser.add_argument("--output", default=str(RESULTS / "vllm_throughput.json"))
    parser.add_argument("--vllm-worker", nargs=2, metavar=("JUDGE", "TEXTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vllm_worker:
        return vllm_worker(*args.vllm_worker, args.max_model_len)

    import torch
    from transformers import AutoTokenizer

    from adajudge_hf import AdaJudgeForRewardModeling, save_judge
    from adajudge_hf.backbones import resolve_backbone
    from adajudge_hf.embedded_data import load_embedded_preferences
    from adajudge_hf.evaluation import score_responses

    torch.set_num_threads(2)
    backbone = resolve_backbone()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    torch.manual_seed(0)
    judge = AdaJudgeForRewardModeling.from_backbone(str(backbone), dtype=torch.float32).eval()  # K = 3, adaptive
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in judge.judge_head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    cache = RESULTS / "cache" / "vllm_throughput"
    judge_dir = str(save_judge(judge, cache / "judge", form="full", tokenizer=tokenizer, overwrite=True))

    pairs = load_embedded_preferences("test", eval_size=args.pairs)
    prompts = [row["prompt"] for row in pairs for _ in range(2)]
    responses = [response for row in pairs for response in (row["chosen"], row["rejected"])]
    texts = [tokenizer.apply_chat_template(p + r, tokenize=False) for p, r in zip(prompts, responses)]
    num_tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    texts_file = cache / "texts.json"
    texts_file.write_text(json.dumps(texts))

    # vLLM's environment has its own transformers: no PYTHONPATH from ours; both servers get 2 GiB of KV cache.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "VLLM_CPU_KVCACHE_SPACE": "2"}
    load_seconds = {}
    start = time.perf_counter()
    worker = subprocess.Popen(
        [args.vllm_python, __file__, "--vllm-worker", judge_dir, str(texts_file)]
        + ["--max-model-len", str(args.max_model_len)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    load_seconds["vllm_offline"] = read_result(worker)["load_seconds"]
    urls, servers = {}, []
    try:
        vllm_port, adajudge_port = free_port(), free_port()
        urls["vllm_serve"] = f"http://127.0.0.1:{vllm_port}"
        # The module form of `vllm serve` (same arguments and app): vllm-cpu's `vllm` script fails on its --version.
        command = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", judge_dir]
        command += ["--runner", "pooling", "--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1"]
        command += ["--port", str(vllm_port), "--max-model-len", str(args.max_model_len), "--seed", "0"]
        start = time.perf_counter()
        servers.append(start_server(command, urls["vllm_serve"], cache / "vllm_serve.log", env))
        load_seconds["vllm_serve"] = time.perf_counter() - start
        urls["adajudge_serve"] = f"http://127.0.0.1:{adajudge_port}"
        command = [str(Path(sys.executable).parent / "adajudge"), "serve", judge_dir, "--device", "cpu"]
        command += ["--dtype", "float32", "--port", str(adajudge_port), "--log-level", "warning"]
        start = time.perf_counter()
        servers.append(start_server(command, urls["adajudge_serve"], cache / "adajudge_serve.log", {**os.environ}))
        load_seconds["adajudge_serve"] = time.perf_counter() - start

        def run(scorer: str, items: slice) -> tuple[float, list[float]]:
            if scorer == "transformers":
                begin = time.perf_counter()
                scored = score_responses(
                    judge,
                    tokenizer,
                    prompts[items],
                    responses[items],
                    max_batch_tokens=args.max_batch_tokens,
                    show_progress=False,
                )
                return time.perf_counter() - begin, scored.rewards.float().tolist()
            if scorer == "vllm_offline":
                worker.stdin.write("run\n")
                worker.stdin.flush()
                result = read_result(worker)
                return result["seconds"], result["rewards"]
            return classify_one_per_request(urls[scorer], judge_dir, texts[items], args.concurrency)

        for scorer in SCORERS:  # warm-up (the vLLM worker warmed up at load)
            if scorer != "vllm_offline":
                run(scorer, slice(0, 8))
        seconds = {scorer: [] for scorer in SCORERS}
        rewards = {}
        order = list(SCORERS)
        for repeat in range(args.repeats):
            for scorer in order[repeat % len(order) :] + order[: repeat % len(order)]:
                elapsed, rewards[scorer] = run(scorer, slice(None))
                seconds[scorer].append(elapsed)
            print(f"repeat {repeat + 1}: " + ", ".join(f"{s} {seconds[s][-1]:.1f} s" for s in SCORERS), flush=True)
    finally:
        worker.stdin.close()
        worker.wait(timeout=120)
        for server in servers:
            server.terminate()
            server.wait(timeout=60)

    items = len(texts)
    reference = torch.tensor(rewards["transformers"])
    results = {
        "command": "python benchmarks/vllm_throughput.py " + " ".join(sys.argv[1:]),
        "device": f"cpu, {os.cpu_count()} cores, fp32",
        "judge": "SmolLM2-135M-Instruct, K=3 adaptive (randomised heads)",
        "items": items,
        "tokens": num_tokens,
        "repeats": args.repeats,
        "concurrency": args.concurrency,
        "scorers": {
            scorer: {
                "what": what,
                "seconds": spread(seconds[scorer]),
                "items_per_second": items / statistics.median(seconds[scorer]),
                "tokens_per_second": num_tokens / statistics.median(seconds[scorer]),
                "speed_vs_transformers": statistics.median(seconds["transformers"])
                / statistics.median(seconds[scorer]),
                "load_seconds": load_seconds.get(scorer),
                "max_abs_reward_difference": (torch.tensor(rewards[scorer]) - reference).abs().max().item(),
            }
            for scorer, what in SCORERS.items()
        },
    }
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    table = [
        f"# AdaJudge in vLLM vs transformers vs adajudge serve (`{results['command']}`)",
        "",
        f"{results['judge']}; {items} HH-RLHF items, {num_tokens} tokens; {results['device']}; medians of "
        f"{args.repeats} interleaved runs (min-max); servers: {args.concurrency} clients, one text per request.",
        "",
        "| scorer | seconds | items/s | tokens/s | speed vs transformers | load (s) | max abs reward diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["scorers"].values():
        time_spread = row["seconds"]
        load = "-" if row["load_seconds"] is None else f"{row['load_seconds']:.0f}"
        table.append(
            f"| {row['what']} | {time_spread['median']:.1f} ({time_spread['min']:.1f}-{time_spread['max']:.1f}) | "
            f"{row['items_per_second']:.2f} | {row['tokens_per_second']:.0f} | x{row['speed_vs_transformers']:.2f} | "
            f"{load} | {row['max_abs_reward_difference']:.1e} |"
        )
    Path(args.output).with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
