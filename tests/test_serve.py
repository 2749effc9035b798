"""`adajudge serve`: every endpoint, rewards equal to in-process scoring whatever the batching, the template cases,
the faults, and the TRL reward function. In-process through httpx's ASGI transport unless a real socket matters."""

import asyncio
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import torch
import uvicorn
from conftest import asgi_client

from adajudge_hf import AdaJudgeForRewardModeling, testing
from adajudge_hf.evaluation import score_responses
from adajudge_hf.modeling import find_response_template
from adajudge_hf.serve import AdaJudgeReward, ChatTemplateParser, LoadedJudge, ServeConfig, create_app
from adajudge_hf.testing import free_port, make_tiny_tokenizer
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
    kwargs.setdefault("response_template", find_response_template(tokenizer))  # as `from_backbone` sets it
    return testing.make_tiny_judge(tokenizer, seed, random_heads=True, **kwargs)


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

    @property
    def dtype(self):
        return self.judge.dtype

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
def running_server(app, health: bool = True):
    """Serve `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL once it is healthy. A server
    that never starts, or never answers /health, is a RuntimeError rather than a test that carries on."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.01)
        if not server.started:
            raise RuntimeError("The test server never started (within 10 s); its error is in the log above.")
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        healthy = not health
        for _ in range(1000 if health else 0):
            if httpx.get(f"{url}/health").status_code == 200:
                healthy = True
                break
            time.sleep(0.01)
        if not healthy:
            raise RuntimeError(f"The test server at {url} started but /health never answered 200 (within 10 s).")
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


# --- The clients as released: texts as they build them, the judge's reward of the conversation -------------------


def client_query(tokenizer, prompt, response: str, ending: str = "eos") -> tuple[str, str, str]:
    """(query, prompt text, the response the judge should score) as an RL client builds them: prompt ids with the
    generation prompt, then the generated ids, decoded with special tokens. `ending`: "eos" (generation stopped at the
    end-of-turn token), "cut" (`max_tokens` cut it, no EOS)."""
    prompt_ids = list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"])
    output_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if ending == "cut":
        output_ids = output_ids[: max(1, len(output_ids) // 2)]
    else:
        output_ids = output_ids + [tokenizer.eos_token_id]
    scored = tokenizer.decode(output_ids, skip_special_tokens=True)
    return tokenizer.decode(prompt_ids + output_ids), tokenizer.decode(prompt_ids), scored


def turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def close(actual, expected, rtol=1e-5):
    torch.testing.assert_close(torch.tensor(actual), torch.as_tensor(expected).float(), rtol=rtol, atol=1e-6)


@pytest.fixture(scope="module")
def llama3():
    return make_tiny_tokenizer("llama3")


@pytest.mark.parametrize("ending", ["eos", "cut"])
@pytest.mark.parametrize("policy", ["chatml", "llama3"])
def test_openrlhf_queries_get_the_reward_of_the_conversation(judge, chatml, llama3, policy, ending):
    """OpenRLHF's query ends where generation stopped (`...Paris.<|im_end|>` or mid-word), in the policy's template;
    the reward is the judge's reward of that conversation in its own template, with no `--policy-tokenizer` for a
    known template family."""
    policy_tokenizer = {"chatml": chatml, "llama3": llama3}[policy]
    prompts, responses = conversations()
    built = [client_query(policy_tokenizer, p, r[0]["content"], ending) for p, r in zip(prompts, responses)]
    if policy == "chatml" and ending == "eos":
        assert built[0][0].endswith("<|im_end|>") and not built[0][0].endswith("\n")
    expected = score_responses(judge, chatml, prompts, [turn(s) for _, _, s in built], show_progress=False)

    async def run():
        async with asgi_client(serve(judge, chatml)) as client:
            with_prompts = await client.post(
                "/get_reward", json={"query": [q for q, _, _ in built], "prompts": [p for _, p, _ in built]}
            )
            one_each = await asyncio.gather(
                *(
                    client.post("/get_reward", json={"query": [q], "prompts": [p], "labels": [None]})
                    for q, p, _ in built
                )
            )
            return with_prompts, one_each

    with_prompts, one_each = asyncio.run(run())
    assert with_prompts.status_code == 200, with_prompts.text
    close(with_prompts.json()["rewards"], expected.rewards)
    close([answer.json()["rewards"][0] for answer in one_each], expected.rewards)
    assert with_prompts.json()["extra_logs"]["judge/scored_as_is"] == [0.0] * len(built)


def test_verl_classify_without_bos_and_slime_score_get_the_reward_of_the_conversation(llama3):
    """verl renders with the judge's template and strips the leading BOS; slime sends the templated prompt (or the
    messages) and a response that keeps the EOS text. Both get the reward of the conversation, EOS not doubled."""
    judge = make_tiny_judge(llama3, seed=3)
    prompts, responses = conversations()
    answers = [r[0]["content"] for r in responses]
    expected = score_responses(judge, llama3, prompts, responses, show_progress=False).rewards
    verl = [render(llama3, p, r).removeprefix(llama3.bos_token) for p, r in zip(prompts, responses)]
    assert not verl[0].startswith(llama3.bos_token)

    async def run():
        async with asgi_client(serve(judge, llama3)) as client:
            classify = await client.post("/classify", json={"model": "judge", "input": verl, "use_activation": False})
            templated = [
                await client.post(
                    "/score", json={"prompt": render(llama3, p), "response": a + llama3.eos_token, "label": ""}
                )
                for p, a in zip(prompts, answers)
            ]
            messages = [
                await client.post("/score", json={"prompt": p, "response": a + llama3.eos_token, "label": ""})
                for p, a in zip(prompts, answers)
            ]
            return classify, templated, messages

    classify, templated, messages = asyncio.run(run())
    assert classify.status_code == 200, classify.text
    close([d["probs"][0] for d in classify.json()["data"]], expected)
    close([answer.json()["reward"] for answer in templated], expected)
    close([answer.json()["reward"] for answer in messages], expected)
    assert not any(answer.json()["scored_as_is"] for answer in templated + messages)


def test_bf16_judge_serves_the_reward_of_the_conversation(chatml):
    judge = make_tiny_judge(chatml, seed=4).to(torch.bfloat16)
    prompts, responses = conversations()
    built = [client_query(chatml, p, r[0]["content"]) for p, r in zip(prompts, responses)]
    expected = score_responses(judge, chatml, prompts, [turn(s) for _, _, s in built], show_progress=False).rewards

    async def run():
        async with asgi_client(serve(judge, chatml, max_wait_ms=0, pack=False)) as client:
            return await client.post("/get_reward", json={"query": [q for q, _, _ in built]})

    answer = asyncio.run(run())
    assert answer.status_code == 200, answer.text
    torch.testing.assert_close(torch.tensor(answer.json()["rewards"]), expected, atol=0.03, rtol=0)


def test_score_as_is_scores_the_text_exactly_as_sent(judge, chatml):
    prompt = [{"role": "user", "content": QUESTIONS[0]}]
    query, prompt_text, scored = client_query(chatml, prompt, "Paris.")
    ids = chatml(query, add_special_tokens=False)["input_ids"]
    prompt_length = len(chatml(prompt_text, add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        as_sent = judge(input_ids=torch.tensor([ids]), prompt_lengths=torch.tensor([prompt_length])).logits[0, 0]
    conversation = score_responses(judge, chatml, [prompt], [turn(scored)], show_progress=False).rewards[0]
    assert abs(as_sent - conversation) > 1e-4  # the trailing "\n" of the template matters to the judge

    async def run():
        answers = []
        for score_as_is in (True, False):
            async with asgi_client(serve(judge, chatml, score_as_is=score_as_is)) as client:
                reward = await client.post("/get_reward", json={"query": [query], "prompts": [prompt_text]})
                answers.append((reward, (await client.get("/info")).json()))
        return answers

    (as_is, as_is_info), (recovered, recovered_info) = asyncio.run(run())
    assert as_is.json()["rewards"][0] == pytest.approx(as_sent.item(), rel=1e-5)
    assert recovered.json()["rewards"][0] == pytest.approx(conversation.item(), rel=1e-5)
    assert as_is_info["texts"] == "scored as sent" and as_is_info["chat_template_parsers"] == []
    assert recovered_info["texts"] == "recovered as conversations"
    assert (
        recovered_info["chat_template_parsers"][0] == "judge" and "llama3" in recovered_info["chat_template_parsers"]
    )


def test_a_text_no_parser_recognises_is_scored_as_is_and_counted(judge, chatml):
    plain = "Question: what is the capital of France? Answer: Paris."
    known = client_query(chatml, [{"role": "user", "content": "Hi"}], "Hello!")[0]

    async def run():
        async with asgi_client(serve(judge, chatml)) as client:
            answer = await client.post("/get_reward", json={"query": [plain, known, plain]})
            return answer, (await client.get("/metrics")).text

    answer, metrics = asyncio.run(run())
    assert answer.status_code == 200
    assert answer.json()["extra_logs"]["judge/scored_as_is"] == [1.0, 0.0, 1.0]
    assert metric(metrics, "adajudge_scored_as_is_total") == 2
    with torch.inference_mode():
        ids = torch.tensor([chatml(plain, add_special_tokens=False)["input_ids"]])
        assert answer.json()["rewards"][0] == pytest.approx(judge(input_ids=ids).logits[0, 0].item(), rel=1e-5)


def test_a_prompt_the_client_cut_is_still_scored(judge, chatml):
    """OpenRLHF cuts an over-long prompt's ids from the left but posts the whole prompt text: the query is the truth,
    its first (cut) message is scored as what is left of it."""
    prompt = [{"role": "user", "content": "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100. What is the capital of France?"}]
    query, prompt_text, scored = client_query(chatml, prompt, "Paris.")
    cut_query = query[30:]  # inside the user's message
    left = prompt[0]["content"][30 - len("<|im_start|>user\n") :]
    assert cut_query.startswith(left) and not cut_query.startswith(prompt_text)
    expected = score_responses(
        judge, chatml, [[{"role": "user", "content": left}]], [turn(scored)], show_progress=False
    )

    async def run():
        async with asgi_client(serve(judge, chatml)) as client:
            return await client.post("/get_reward", json={"query": [cut_query], "prompts": [prompt_text]})

    answer = asyncio.run(run())
    assert answer.status_code == 200, answer.text
    close(answer.json()["rewards"], expected.rewards)


def test_activation_and_use_activation_both_apply_the_sigmoid(judge, chatml):
    text = render(chatml, [{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "Hello!"}])

    async def run():
        async with asgi_client(serve(judge, chatml)) as client:
            return {
                name: (await client.post("/classify", json={"input": [text], **flag})).json()["data"][0]["probs"][0]
                for name, flag in {
                    "raw": {}, "use_activation": {"use_activation": True}, "activation": {"activation": True},
                    "use_activation off": {"use_activation": False, "activation": True},
                }.items()
            }  # fmt: skip

    probs = asyncio.run(run())
    assert probs["use_activation"] == probs["activation"] == pytest.approx(torch.tensor(probs["raw"]).sigmoid().item())
    assert probs["use_activation off"] == probs["raw"]  # the newer name wins


def test_a_full_queue_answers_503_with_retry_after_and_bigger_requests_enter_in_parts(judge, chatml):
    gate = Gate(judge)
    gate.release.set()  # let the warm-up through
    prompts, responses = conversations()
    queries = [render(chatml, p, r) for p, r in zip(prompts, responses)]
    expected = score_responses(judge, chatml, prompts, responses, show_progress=False).rewards

    async def run():
        async with asgi_client(serve(gate, chatml, max_queue=4, max_wait_ms=0, max_batch_tokens=64)) as client:
            gate.release.clear()
            gate.entered.clear()
            busy = asyncio.create_task(client.post("/get_reward", json={"query": queries[:1]}))
            await asyncio.to_thread(gate.entered.wait, 10)  # the model holds the first request
            big = asyncio.create_task(client.post("/get_reward", json={"query": queries}))  # 14 items, queue of 4
            await asyncio.sleep(0.2)
            refused = await client.post("/get_reward", json={"query": queries[:1]})
            gate.release.set()
            return await busy, await big, refused

    busy, big, refused = asyncio.run(run())
    assert busy.status_code == big.status_code == 200
    close(big.json()["rewards"], expected)  # every item, in order
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    assert "--max-queue" in refused.json()["error"]


class CountingReplica(FailOnToken):
    """A replica that counts its forward passes and can fail its `fail_on`-th one (a stand-in for an OOM)."""

    def __init__(self, judge, fail_on: int | None = None):
        super().__init__(judge, token=-1)
        self.calls, self.fail_on = 0, fail_on

    def forward(self, **inputs):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("simulated failure on one replica")
        return self.judge(**inputs)


def test_replicas_share_one_queue_with_the_same_rewards_in_order(judge, chatml):
    import copy

    first, second = CountingReplica(judge), CountingReplica(copy.deepcopy(judge), fail_on=2)  # 1: warm-up
    prompts, responses = conversations(group_size=6)
    queries = [render(chatml, p, r) for p, r in zip(prompts, responses)]
    expected = score_responses(judge, chatml, prompts, responses, show_progress=False).rewards
    app = create_app(
        LoadedJudge(first, chatml, replicas=[second], info={"name": "tiny"}),
        ServeConfig(max_wait_ms=0, max_batch_tokens=48, pack=False),
    )

    async def run():
        async with asgi_client(app) as client:
            answers = await asyncio.gather(*(client.post("/get_reward", json={"query": [q]}) for q in queries))
            again = await asyncio.gather(*(client.post("/get_reward", json={"query": [q]}) for q in queries))
            return answers, again, (await client.get("/info")).json()

    answers, again, info = asyncio.run(run())
    failed = [i for i, answer in enumerate(answers) if answer.status_code != 200]
    assert failed and all(answers[i].status_code == 500 for i in failed)  # only the failed pass's requests
    assert "simulated failure" in answers[failed[0]].json()["error"]
    assert len(failed) < len(queries)
    ok = [i for i in range(len(queries)) if i not in failed]
    close([answers[i].json()["rewards"][0] for i in ok], expected[ok])
    assert [answer.status_code for answer in again] == [200] * len(queries)  # both replicas keep serving
    close([answer.json()["rewards"][0] for answer in again], expected)
    assert first.calls > 2 and second.calls > 2  # both took passes
    assert info["devices"] == ["cpu", "cpu"]


def test_load_for_serving_puts_one_replica_on_each_device(tmp_path, chatml):
    from adajudge_hf import save_judge
    from adajudge_hf.serve import load_for_serving

    save_judge(make_tiny_judge(chatml), tmp_path / "judge", form="full", tokenizer=chatml)
    loaded = load_for_serving(str(tmp_path / "judge"), device="cpu,cpu")
    assert len(loaded.models) == 2 and loaded.models[0] is not loaded.models[1]
    for a, b in zip(loaded.models[0].parameters(), loaded.models[1].parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


# --- Who may call it ---------------------------------------------------------------------------------------------


def test_an_api_key_guards_every_endpoint_but_health(judge, chatml):
    body = {"query": [render(chatml, [{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "Yo"}])]}

    async def run():
        app = serve(judge, chatml, api_key="s3cret")
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://judge", timeout=30) as client:
                while (await client.get("/health")).status_code != 200:  # open without a key
                    await asyncio.sleep(0.01)
                good = {"Authorization": "Bearer s3cret"}
                return {
                    "none": await client.post("/get_reward", json=body),
                    "wrong": await client.post("/get_reward", json=body, headers={"Authorization": "Bearer nope"}),
                    "metrics": await client.get("/metrics"),
                    "info": await client.get("/info"),
                    "good": await client.post("/get_reward", json=body, headers=good),
                    "good info": await client.get("/info", headers=good),
                }

    answers = asyncio.run(run())
    for name in ("none", "wrong", "metrics", "info"):
        assert answers[name].status_code == 401, name
        assert "Authorization: Bearer" in answers[name].json()["error"]
    assert answers["good"].status_code == 200 and answers["good info"].json()["api_key_required"] is True


def test_remote_reward_sends_the_api_key(judge, chatml, monkeypatch):
    prompt, completion = [{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "Hello!"}]
    expected = score_responses(judge, chatml, [prompt], [completion], show_progress=False).rewards
    with running_server(serve(judge, chatml, api_key="s3cret"), health=False) as url:
        with pytest.raises(ValueError, match="401"):
            asyncio.run(
                AdaJudgeReward(url, max_retries=30, retry_delay=0.1)(prompts=[prompt], completions=[completion])
            )
        monkeypatch.setenv("ADAJUDGE_API_KEY", "s3cret")
        rewards = asyncio.run(
            AdaJudgeReward(url, max_retries=30, retry_delay=0.1)(prompts=[prompt], completions=[completion])
        )
    close(rewards, expected)


def test_bodies_and_item_counts_over_the_limits_get_413_before_parsing(judge, chatml):
    async def run():
        async with asgi_client(serve(judge, chatml, max_body_bytes=2000, max_items_per_request=3)) as client:

            async def chunks():  # no Content-Length: the bound holds while reading
                for _ in range(10):
                    yield b'{"query": ["' + b"x" * 500 + b'"]}'

            return {
                "declared": await client.post("/get_reward", json={"query": ["x" * 3000]}),
                "streamed": await client.post("/get_reward", content=chunks()),
                "items": await client.post("/get_reward", json={"query": ["a", "b", "c", "d"]}),
                "responses": await client.post("/score", json={"prompt": "Hi", "responses": ["a", "b", "c", "d"]}),
                "within": await client.post("/get_reward", json={"query": ["a b", "c d", "e f"]}),
            }

    answers = asyncio.run(run())
    assert answers["declared"].status_code == answers["streamed"].status_code == 413
    assert "--max-body-bytes" in answers["declared"].json()["error"]
    assert answers["items"].status_code == answers["responses"].status_code == 413
    assert "--max-items-per-request" in answers["items"].json()["error"]
    assert answers["within"].status_code == 200


def test_serving_beyond_loopback_without_a_key_warns(tmp_path, caplog, monkeypatch):
    from adajudge_hf.cli import main

    monkeypatch.delenv("ADAJUDGE_API_KEY", raising=False)

    for host, key, warned in (("0.0.0.0", [], True), ("0.0.0.0", ["--api-key", "k"], False), ("127.0.0.1", [], False)):
        caplog.clear()
        assert main(["serve", str(tmp_path / "missing"), "--host", host, *key]) == 2
        assert ("without an API key" in caplog.text) == warned, host


# --- AdaJudgeReward(url): retries --------------------------------------------------------------------------------


def test_remote_reward_retries_timeouts_and_503_then_gives_up_clearly(judge, chatml):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    calls = []
    stub = FastAPI()

    @stub.post("/score")
    async def flaky(body: dict):
        calls.append(time.monotonic())
        if len(calls) == 1:
            await asyncio.sleep(1.0)  # past the client's timeout
        if len(calls) <= 2:
            return JSONResponse({"error": "the queue is full"}, status_code=503, headers={"Retry-After": "0"})
        return {"rewards": [0.5] * len(body["responses"])}

    prompt = [{"role": "user", "content": "Hi"}]
    with running_server(stub, health=False) as url:
        remote = AdaJudgeReward(url, timeout=0.3, max_retries=4, retry_delay=0.01)
        assert asyncio.run(remote(prompts=[prompt, prompt], completions=["a", "b"])) == [0.5, 0.5]
    assert len(calls) == 3

    down = AdaJudgeReward(f"http://127.0.0.1:{free_port()}", max_retries=3, retry_delay=0.01)
    began = time.monotonic()
    with pytest.raises(ConnectionError, match="gave no reward after 3 tries"):
        asyncio.run(down(prompts=[prompt], completions=["a"]))
    assert time.monotonic() - began < 5
    bounded = AdaJudgeReward(f"http://127.0.0.1:{free_port()}", max_retries=100, retry_delay=0.2, max_retry_seconds=1)
    with pytest.raises(ConnectionError, match="tries in"):
        asyncio.run(bounded(prompts=[prompt], completions=["a"]))


SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_a_judge_whose_bos_is_its_turn_header_gets_verl_texts_right():
    """SmolLM2's tokenizer: BOS is `<|im_start|>` and the template adds a default system turn. verl strips the BOS,
    so the text starts `system\\n...`; it is read with the BOS put back. A custom system turn is kept."""
    tokenizer = make_tiny_tokenizer("chatml")
    tokenizer.bos_token, tokenizer.chat_template = "<|im_start|>", SMOLLM2_TEMPLATE
    judge = make_tiny_judge(tokenizer, seed=5)
    prompts, responses = conversations()
    prompts[1] = [{"role": "system", "content": "Be brief."}, *prompts[1]]
    expected = score_responses(judge, tokenizer, prompts, responses, show_progress=False).rewards
    verl = [render(tokenizer, p, r).removeprefix("<|im_start|>") for p, r in zip(prompts, responses)]
    built = [client_query(tokenizer, p, r[0]["content"]) for p, r in zip(prompts, responses)]

    async def run():
        async with asgi_client(serve(judge, tokenizer)) as client:
            classify = await client.post("/classify", json={"input": verl, "use_activation": False})
            openrlhf = await client.post("/get_reward", json={"query": [q for q, _, _ in built]})
            return classify, openrlhf

    classify, openrlhf = asyncio.run(run())
    close([d["probs"][0] for d in classify.json()["data"]], expected)
    close(openrlhf.json()["rewards"], expected)
    assert openrlhf.json()["extra_logs"]["judge/scored_as_is"] == [0.0] * len(built)


def test_a_burst_of_256_one_item_requests_is_never_refused_by_default(judge, chatml):
    """OpenRLHF 0.11 posts one sample per coroutine and does not read Retry-After: the default queue takes the burst."""
    prompts, responses = conversations()
    queries = [render(chatml, p, r) for p, r in zip(prompts, responses)] * 20  # 280 requests
    expected = score_responses(judge, chatml, prompts, responses, show_progress=False).rewards.repeat(20)

    async def run():
        async with asgi_client(serve(judge, chatml)) as client:
            return await asyncio.gather(*(client.post("/get_reward", json={"query": [q]}) for q in queries))

    answers = asyncio.run(run())
    assert [answer.status_code for answer in answers] == [200] * len(queries)
    close([answer.json()["rewards"][0] for answer in answers], expected)
