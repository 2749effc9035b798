"""`adajudge serve`: every endpoint, rewards equal to in-process scoring whatever the batching, the template cases,
the faults, and the TRL reward function. In-process through httpx's ASGI transport unless a real socket matters."""

import asyncio
import threading
import time
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest
import torch
import uvicorn
from conftest import randomize_head

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.evaluation import score_responses
from adajudge_hf.modeling import find_response_template
from adajudge_hf.serve import AdaJudgeReward, ChatTemplateParser, LoadedJudge, ServeConfig, create_app
from adajudge_hf.testing import make_tiny_judge_config, make_tiny_tokenizer
from adajudge_hf.tokenization import encode_prompt_response


QUESTIONS = ["What is the capital of France?", "How do I bake bread?", "Is 2+2 equal to 4?"]
ANSWERS = ["Paris.", "The capital of France is Paris.", "Mix flour, water, salt and yeast.", "Yes.", "No, it is 5."]


def conversations(group_size: int = 4) -> tuple[list, list]:
    """GRPO-like prompt groups (each question with `group_size` answers) followed by two lone items."""
    prompts, responses = [], []
    for q, question in enumerate(QUESTIONS):
        for a in range(group_size):
            prompts.append([{"role": "user", "content": question}])
            responses.append([{"role": "assistant", "content": ANSWERS[(q + a) % len(ANSWERS)]}])
    prompts += [[{"role": "user", "content": "Write a polite refusal."}], [{"role": "user", "content": "Hi"}]]
    responses += [[{"role": "assistant", "content": "I cannot help."}], [{"role": "assistant", "content": "Hello!"}]]
    return prompts, responses


def make_tiny_judge(tokenizer, seed: int = 0, **kwargs) -> AdaJudgeForRewardModeling:
    torch.manual_seed(seed)
    kwargs.setdefault("response_template", find_response_template(tokenizer))  # as `from_backbone` sets it
    config = make_tiny_judge_config(tokenizer, **kwargs)
    model = AdaJudgeForRewardModeling._from_config(config, attn_implementation="sdpa")
    return randomize_head(model.eval(), seed=seed)


@pytest.fixture(scope="module")
def chatml():
    return make_tiny_tokenizer("chatml")


@pytest.fixture(scope="module")
def judge(chatml):
    model = make_tiny_judge(chatml)
    assert model.supports_packed_inputs
    return model


def render(tokenizer, prompt, response=None) -> str:
    if response is None:
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(prompt + response, tokenize=False)


@asynccontextmanager
async def asgi_client(app):
    """The app with its lifespan running, once it reports healthy."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://judge", timeout=30) as client:
            deadline = time.monotonic() + 60
            while (await client.get("/health")).status_code != 200:
                assert time.monotonic() < deadline, "the server did not warm up within 60 s"
                await asyncio.sleep(0.01)
            yield client


def serve(judge, tokenizer, policy_tokenizer=None, **config) -> object:
    return create_app(LoadedJudge(judge, tokenizer, policy_tokenizer, info={"name": "tiny"}), ServeConfig(**config))


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


@pytest.mark.parametrize(
    "config",
    [
        {"max_wait_ms": 50},  # everything coalesces into packed passes
        {"max_wait_ms": 0, "max_batch_tokens": 64},  # small, split passes
        {"max_wait_ms": 50, "pack": False},  # plain padded rows
        {"max_wait_ms": 50, "pack": False, "max_padding": 0.0},  # rows of unequal length in separate passes
    ],
)
def test_get_reward_one_item_per_request_equals_in_process_scoring(judge, chatml, config):
    prompts, responses = conversations()
    expected = score_responses(judge, chatml, prompts, responses, show_progress=False)

    async def run():
        async with asgi_client(serve(judge, chatml, **config)) as client:
            answers = await asyncio.gather(
                *(
                    client.post("/get_reward", json={"query": [render(chatml, p, r)], "prompts": [render(chatml, p)]})
                    for p, r in zip(prompts, responses)
                )
            )
            return answers, (await client.get("/metrics")).text

    answers, metrics = asyncio.run(run())
    assert all(answer.status_code == 200 for answer in answers), answers[0].text
    rewards = torch.tensor([answer.json()["rewards"][0] for answer in answers])
    torch.testing.assert_close(rewards, expected.rewards, atol=1e-5, rtol=0)
    pi = torch.tensor(
        [[answer.json()["extra_logs"][f"judge/pi/{e}"][0] for e in expected.experts] for answer in answers]
    )
    torch.testing.assert_close(pi, expected.routing_weights, atol=1e-5, rtol=0)
    alpha = [answer.json()["extra_logs"]["judge/alpha/H(1)"][0] for answer in answers]
    torch.testing.assert_close(torch.tensor(alpha), expected.depth_weights[:, 0], atol=1e-5, rtol=0)
    scores = torch.tensor([answer.json()["scores"][0] for answer in answers])
    torch.testing.assert_close(scores, expected.rewards.sigmoid(), atol=1e-6, rtol=0)
    passes, items = metric(metrics, "adajudge_batch_items_count"), metric(metrics, "adajudge_batch_items_sum")
    assert items == len(prompts) + 1  # the warm-up item too
    if config["max_wait_ms"] and config.get("max_padding") != 0.0:  # concurrent requests shared forward passes
        assert passes < items / 2
    if config.get("pack", True) and config["max_wait_ms"]:  # a prompt group went in as one row
        assert metric(metrics, "adajudge_batch_rows_sum") < items


def test_a_request_with_many_queries_keeps_their_order(judge, chatml):
    prompts, responses = conversations()
    expected = score_responses(judge, chatml, prompts, responses, show_progress=False)
    body = {
        "query": [render(chatml, p, r) for p, r in zip(prompts, responses)],
        "labels": ["unused"] * len(prompts),
    }  # no prompts: the judge finds each response from its response template

    async def run():
        async with asgi_client(serve(judge, chatml)) as client:
            return await client.post("/get_reward", json=body)

    answer = asyncio.run(run())
    assert answer.status_code == 200, answer.text
    torch.testing.assert_close(torch.tensor(answer.json()["rewards"]), expected.rewards, atol=1e-5, rtol=0)
    assert answer.json()["extra_logs"]["judge/truncated"] == [0.0] * len(prompts)


def test_score_items_groups_and_classify_equal_in_process_scoring(judge, chatml):
    prompts, responses = conversations()
    expected = score_responses(judge, chatml, prompts, responses, show_progress=False)
    texts = ["What is the capital of France?", "How do I bake bread?"]
    text_answers = [" Paris.", " Knead and bake."]
    expected_text = score_responses(judge, chatml, texts, text_answers, show_progress=False)

    async def run():
        async with asgi_client(serve(judge, chatml)) as client:
            single = await client.post("/score", json={"prompt": prompts[0], "response": responses[0], "label": 1})
            group = await client.post("/score", json={"prompt": prompts[4], "responses": responses[4:8]})
            plain = [
                await client.post("/score", json={"prompt": t, "response": a}) for t, a in zip(texts, text_answers)
            ]
            classify = await client.post(
                "/classify",
                json={"model": "tiny", "input": [render(chatml, prompts[1], responses[1])], "use_activation": False},
            )
            info = await client.get("/info")
            return single, group, plain, classify, info

    single, group, plain, classify, info = asyncio.run(run())
    assert single.status_code == group.status_code == classify.status_code == 200
    assert single.json()["reward"] == pytest.approx(expected.rewards[0].item(), abs=1e-5)
    assert list(single.json()["routing_weights"]) == list(expected.experts)
    torch.testing.assert_close(torch.tensor(group.json()["rewards"]), expected.rewards[4:8], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        torch.tensor([answer.json()["reward"] for answer in plain]), expected_text.rewards, atol=1e-5, rtol=0
    )
    data = classify.json()["data"]
    assert data[0]["index"] == 0 and data[0]["num_classes"] == 1
    assert data[0]["probs"][0] == pytest.approx(expected.rewards[1].item(), abs=1e-5)
    assert classify.json()["usage"]["prompt_tokens"] > 0
    assert info.json()["num_refinement_blocks"] == 2 and info.json()["packing"] is True


@pytest.mark.parametrize("template", ["chatml", "llama3", "phi3"])
def test_chat_template_parser_recovers_the_conversation(template):
    tokenizer = make_tiny_tokenizer(template)
    parser = ChatTemplateParser(tokenizer)
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6, of course."},
    ]
    assert parser.parse(tokenizer.apply_chat_template(chat, tokenize=False)) == chat
    # A generated query: the prompt with its generation prompt, then the completion and the end-of-turn token.
    query = (
        tokenizer.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True) + "4" + tokenizer.eos_token
    )
    assert parser.parse(query) == chat[:3]


def test_policy_template_differs_from_the_judge_template(judge, chatml):
    """Llama-3-style policy, ChatML judge: rewards equal scoring the same conversation in the judge's template."""
    llama3 = make_tiny_tokenizer("llama3")
    prompts, responses = conversations()
    queries = [render(llama3, p) + r[0]["content"] + llama3.eos_token for p, r in zip(prompts, responses)]
    assert not queries[0].startswith("<|im_start|>")

    async def run():
        async with asgi_client(serve(judge, chatml, policy_tokenizer=llama3)) as client:
            openrlhf = await client.post(
                "/get_reward", json={"query": queries, "prompts": [render(llama3, p) for p in prompts]}
            )
            slime = await client.post("/score", json={"prompt": render(llama3, prompts[0]), "response": "Paris."})
            return openrlhf, slime

    openrlhf, slime = asyncio.run(run())
    assert openrlhf.status_code == 200, openrlhf.text
    direct = []
    for p, r in zip(prompts, responses):
        encoded = encode_prompt_response(chatml, p, r)
        with torch.no_grad():
            direct.append(
                judge(
                    input_ids=torch.tensor([encoded.input_ids]), prompt_lengths=torch.tensor([encoded.prompt_length])
                ).logits[0, 0]
            )
    torch.testing.assert_close(torch.tensor(openrlhf.json()["rewards"]), torch.stack(direct), atol=1e-5, rtol=0)
    assert slime.json()["reward"] == pytest.approx(direct[0].item(), abs=1e-5)


class FailOnToken(torch.nn.Module):
    """Wrap a judge so that a forward pass holding `token` raises (a stand-in for an out-of-memory error)."""

    def __init__(self, judge, token: int):
        super().__init__()
        self.judge, self.token = judge, token
        self.config, self.supports_packed_inputs = judge.config, judge.supports_packed_inputs

    @property
    def device(self):
        return self.judge.device

    def forward(self, **inputs):
        if (inputs["input_ids"] == self.token).any():
            raise RuntimeError("simulated failure")
        return self.judge(**inputs)


def test_faults_answer_4xx_5xx_with_a_message_and_the_server_keeps_serving(judge, chatml):
    prompts, responses = conversations()
    good = {"query": [render(chatml, prompts[0], responses[0])], "prompts": [render(chatml, prompts[0])]}
    poison = chatml("Why #", add_special_tokens=False)["input_ids"][-1]  # only the poisoned request holds " #"
    assert poison not in chatml(good["query"][0], add_special_tokens=False)["input_ids"]
    poisoned = {"query": [render(chatml, [{"role": "user", "content": "Why #"}], responses[0])]}

    async def run():
        app = serve(FailOnToken(judge, poison), chatml, max_length=48, max_queue=8)
        async with asgi_client(app) as client:
            post = client.post
            answers = {
                "malformed": await post(
                    "/get_reward", content=b"{not json", headers={"content-type": "application/json"}
                ),
                "wrong type": await post("/get_reward", json={"query": "a string, not a list"}),
                "mismatch": await post("/get_reward", json={"query": ["a", "b"], "prompts": ["a"]}),
                "not its prompt": await post("/get_reward", json={"query": ["hello"], "prompts": ["bye"]}),
                "empty response": await post("/score", json={"prompt": "Hi", "response": "  "}),
                "both fields": await post("/score", json={"prompt": "Hi", "response": "a", "responses": ["b"]}),
                "more than the queue": await post("/get_reward", json={"query": good["query"] * 9}),
                "long": await post("/score", json={"prompt": "word " * 60, "response": " end"}),
                "failing pass": await post("/get_reward", json=poisoned),
                "after": await post("/get_reward", json=good),
            }
            return answers

    answers = asyncio.run(run())
    expected = {
        "malformed": 400, "wrong type": 422, "mismatch": 422, "not its prompt": 200,
        "empty response": 422, "both fields": 422, "more than the queue": 200, "long": 200, "failing pass": 500, "after": 200,
    }  # fmt: skip
    assert {name: answer.status_code for name, answer in answers.items()} == expected
    for name, answer in answers.items():
        if answer.status_code != 200:
            assert answer.json()["error"], name
    assert "prompts" in answers["mismatch"].json()["error"]
    assert "simulated failure" in answers["failing pass"].json()["error"]
    assert len(answers["more than the queue"].json()["rewards"]) == 9  # admitted in parts, not refused forever
    assert answers["long"].json()["truncated"] is True
    cut = score_responses(judge, chatml, ["word " * 60], [" end"], max_length=48, show_progress=False)
    assert answers["long"].json()["reward"] == pytest.approx(cut.rewards[0].item(), abs=1e-5)


def test_over_long_items_are_refused_with_413_when_asked(judge, chatml):
    async def run():
        async with asgi_client(serve(judge, chatml, max_length=48, refuse_overlong=True)) as client:
            return await client.post("/get_reward", json={"query": ["short"] + ["word " * 60]})

    answer = asyncio.run(run())
    assert answer.status_code == 413
    assert "query[1]" in answer.json()["error"] and "max_length=48" in answer.json()["error"]


def test_reward_function_equals_passing_the_judge_to_trl(judge, chatml):
    """TRL's model path: chat template, right padding, `judge(**inputs).logits[:, 0]`; same rewards packed."""
    prompts, responses = conversations(group_size=8)
    texts = [render(chatml, p, r) for p, r in zip(prompts, responses)]
    inputs = chatml(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.inference_mode():
        trl_rewards = judge(**inputs).logits[:, 0]
    reward = AdaJudgeReward(judge, chatml)
    rewards = reward(prompts=prompts, completions=responses, completion_ids=None, trainer_state=None)
    torch.testing.assert_close(torch.tensor(rewards), trl_rewards, atol=1e-5, rtol=0)
    empty = reward(prompts=prompts[:2], completions=[responses[0], [{"role": "assistant", "content": ""}]])
    assert empty[1] is None and empty[0] == pytest.approx(rewards[0], abs=1e-6)


# --- Real sockets: disconnects, two servers behind a client split, SIGTERM ---------------------------------------


@contextmanager
def running_server(app):
    """Serve `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started:
                break
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        for _ in range(1000):
            if httpx.get(f"{url}/health").status_code == 200:
                break
            time.sleep(0.01)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class Gate(FailOnToken):
    """Wrap a judge so that forward passes wait until `release` is set (a busy model)."""

    def __init__(self, judge):
        super().__init__(judge, token=-1)
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, **inputs):
        self.entered.set()
        assert self.release.wait(timeout=30)
        return self.judge(**inputs)


def test_a_client_that_disconnects_costs_nothing_else(judge, chatml):
    gate = Gate(judge)
    gate.release.set()  # let the warm-up through
    prompts, responses = conversations()
    body = lambda i: {"query": [render(chatml, prompts[i], responses[i])]}  # noqa: E731

    async def run(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            gate.release.clear()
            gate.entered.clear()
            busy = asyncio.create_task(client.post("/get_reward", json=body(0)))
            await asyncio.to_thread(gate.entered.wait, 10)  # the model is busy with the first request
            with pytest.raises(httpx.TimeoutException):  # this client gives up while its item is queued
                await client.post("/get_reward", json=body(1), timeout=0.3)
            gate.release.set()
            first, after = await busy, await client.post("/get_reward", json=body(2))
            return first, after, (await client.get("/metrics")).text

    with running_server(serve(gate, chatml, max_wait_ms=0)) as url:
        first, after, metrics = asyncio.run(run(url))
    assert first.status_code == after.status_code == 200
    assert metric(metrics, "adajudge_items_total") == 3  # warm-up, first, after: the abandoned item was never scored


def test_two_servers_behind_a_client_split(judge, chatml):
    """One server per device, the client shards: OpenRLHF's comma-separated URLs and `AdaJudgeReward(urls)`."""
    prompts, responses = conversations()
    expected = score_responses(judge, chatml, prompts, responses, show_progress=False).rewards
    queries = [render(chatml, p, r) for p, r in zip(prompts, responses)]

    async def openrlhf_split(urls):  # OpenRLHF splits a batch evenly over the URLs and posts the parts at once
        size = -(-len(queries) // len(urls))
        async with httpx.AsyncClient(timeout=30) as client:
            parts = await asyncio.gather(
                *(
                    client.post(f"{url}/get_reward", json={"query": queries[i * size : (i + 1) * size]})
                    for i, url in enumerate(urls)
                )
            )
        return [reward for part in parts for reward in part.json()["rewards"]]

    with running_server(serve(judge, chatml)) as first, running_server(serve(judge, chatml)) as second:
        split = asyncio.run(openrlhf_split([first, second]))
        remote = AdaJudgeReward(f"{first}/get_reward,{second}")
        remote_rewards = asyncio.run(remote(prompts=prompts, completions=responses))
        served = [metric(httpx.get(f"{url}/metrics").text, "adajudge_items_total") for url in (first, second)]
    torch.testing.assert_close(torch.tensor(split), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(remote_rewards), expected, atol=1e-5, rtol=0)
    assert all(count > len(prompts) / 2 for count in served)  # both servers did their share


def test_remote_reward_reports_server_errors(judge, chatml):
    with running_server(serve(judge, chatml)) as url:
        remote = AdaJudgeReward(url, max_retries=2)
        with pytest.raises(ValueError, match="422"):
            asyncio.run(
                remote(prompts=[[{"role": "user", "content": "Hi"}]], completions=[[{"role": 1, "content": "x"}]])
            )
    with pytest.raises(ValueError, match="not a server URL"):
        AdaJudgeReward("http://")


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(tmp_path, chatml):
    """`adajudge serve` in a subprocess: requests in flight when SIGTERM arrives are all answered, then it exits."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from adajudge_hf import save_judge

    judge = make_tiny_judge(chatml)
    save_judge(judge, tmp_path / "judge", form="full", tokenizer=chatml)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "adajudge_hf.cli", "serve", str(tmp_path / "judge"), "--port", str(port),
         "--max-wait-ms", "200"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read().decode()
            time.sleep(0.1)
        prompts, responses = conversations()
        queries = [render(chatml, p, r) for p, r in zip(prompts, responses)]

        async def run():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                posts = [asyncio.create_task(client.post("/get_reward", json={"query": [q]})) for q in queries]
                await asyncio.sleep(0.1)  # the requests are queued (the server waits 200 ms for company)
                process.send_signal(signal.SIGTERM)
                return await asyncio.gather(*posts)

        answers = asyncio.run(run())
        assert [answer.status_code for answer in answers] == [200] * len(queries)
        # uvicorn re-raises the captured SIGTERM once drained, so the exit is "terminated", after every answer
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_cli_reports_a_missing_judge_in_one_line(tmp_path, capsys):
    from adajudge_hf.cli import main

    assert main(["serve", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert "missing" in error and "Traceback" not in error


def test_metrics_are_prometheus_text(judge, chatml):
    async def run():
        async with asgi_client(serve(judge, chatml)) as client:
            await client.post("/score", json={"prompt": "Hi", "response": " there"})
            return (await client.get("/metrics")).text

    text = asyncio.run(run())
    assert 'adajudge_requests_total{endpoint="/score",status="200"} 1.0' in text
    for name in ("adajudge_queue_depth", "adajudge_request_latency_seconds_bucket", "adajudge_batch_items_bucket"):
        assert name in text


def test_an_empty_shard_gets_empty_lists_with_every_log_key(judge, chatml):
    """OpenRLHF 0.9.1-0.11.0 split one sample over every URL, so all URLs but the first get empty lists."""

    async def run():
        async with asgi_client(serve(judge, chatml)) as client:
            empty = await client.post("/get_reward", json={"query": [], "prompts": [], "labels": []})
            one = await client.post(
                "/get_reward",
                json={"query": ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"]},
            )
            return empty, one

    empty, one = asyncio.run(run())
    assert empty.status_code == 200, empty.text
    assert empty.json()["rewards"] == [] and empty.json()["scores"] == []
    assert set(empty.json()["extra_logs"]) == set(one.json()["extra_logs"])
    assert all(values == [] for values in empty.json()["extra_logs"].values())
    assert all(key.startswith("judge/") for key in one.json()["extra_logs"])  # never hides a client's own metric
