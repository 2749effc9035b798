"""The RL stacks' released reward clients against a real `adajudge serve` on 127.0.0.1: every reward the client ends
up with equals the judge's reward of the conversation its rollout holds (in-process `score_responses`, relative 1e-5
in fp32), nothing lost, order kept.

Each client runs from its own package off the index in its own interpreter (`driver.py` says what is called and
which GPU-only modules are stubbed); slime, not on the index, through a reproduction of its `remote_rm`. Queries
are built the way the clients build them: the policy's chat template with the generation prompt, the generated ids
with the end-of-turn id (or cut by `max_tokens` without it), decoded with the special tokens kept.
"""

import pytest
import torch
from harness import (
    CLIENTS,
    LateRelay,
    Server,
    assert_rewards_equal,
    client_process,
    expected_rewards,
    generated_ids,
    rewards_of,
)
from transformers import AutoTokenizer

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.checkpoint import save_judge
from adajudge_hf.evaluation import score_responses
from adajudge_hf.testing import make_tiny_tokenizer, save_tiny_causal_lm


MAX_NEW_TOKENS = 16
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
BREAD = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I bake bread?"}]
SAMPLES = [  # two GRPO-like groups, then lone prompts; the long answers are cut by MAX_NEW_TOKENS
    {"messages": FRANCE, "response": "Paris.", "label": "Paris"},
    {"messages": FRANCE, "response": "The capital of France is Paris, a city with old bridges and a big river."},
    {"messages": BREAD, "response": "Mix flour, water, salt and yeast, then knead and bake."},
    {"messages": BREAD, "response": "Knead and bake."},
    {"messages": [{"role": "user", "content": "Is 2+2 equal to 4?"}], "response": "Yes."},
    {"messages": [{"role": "user", "content": "Write a polite refusal."}], "response": "I cannot help with that."},
]
ALL_CLIENTS = list(CLIENTS)
OPENRLHF = [name for name in CLIENTS if name.startswith("openrlhf")]


# --- judges, servers, clients ---------------------------------------------------------------------------------------


class Judge:
    """A judge in memory (for the expected rewards), saved as `adajudge serve` reads it, and the folder of a policy
    tokenizer with the judge's chat template (a policy model's own folder, not the judge's)."""

    def __init__(self, model, tokenizer, folder, policy_folder):
        self.model, self.tokenizer, self.folder, self.policy_folder = model, tokenizer, folder, policy_folder


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("clients")


@pytest.fixture(scope="session")
def tiny_judge(workdir) -> Judge:
    """A tiny random ChatML judge with random heads (every head path contributes to the reward)."""
    from conftest import randomize_head

    backbone = save_tiny_causal_lm(workdir / "tiny-backbone", template="chatml")
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    torch.manual_seed(0)
    model = AdaJudgeForRewardModeling.from_backbone(
        backbone, tokenizer=tokenizer, num_refinement_blocks=2, head_hidden_size=16, dtype=torch.float32
    )
    model = randomize_head(model.eval())
    folder = save_judge(model, workdir / "tiny-judge", form="full", tokenizer=tokenizer)
    return Judge(model, tokenizer, folder, policy_folder=backbone)


@pytest.fixture(scope="session")
def smollm2_judge(workdir) -> Judge:
    """SmolLM2-135M-Instruct (offline: the packaged copy) with random heads, saved as heads over that backbone."""
    from conftest import randomize_head

    from adajudge_hf.backbones import resolve_backbone

    backbone = resolve_backbone()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    torch.manual_seed(0)
    model = AdaJudgeForRewardModeling.from_backbone(backbone, tokenizer=tokenizer, dtype=torch.float32)
    model = randomize_head(model.eval())
    folder = save_judge(model, workdir / "smollm2-judge", form="heads", tokenizer=tokenizer)
    return Judge(model, tokenizer, folder, policy_folder=backbone)


@pytest.fixture(scope="session")
def llama3_policy(workdir):
    """A Llama-3-template policy tokenizer (the judge is ChatML), saved where clients and servers load it from."""
    tokenizer = make_tiny_tokenizer("llama3")
    folder = workdir / "llama3-policy"
    tokenizer.save_pretrained(folder)
    return tokenizer, folder


@pytest.fixture(scope="session")
def servers(workdir, tiny_judge, llama3_policy):
    """`servers(name)`: the `adajudge serve` processes of these tests, started on first use, stopped at the end."""
    started = {}
    flags = {
        "tiny": (),
        "tiny-2": (),
        "tiny-3": (),
        "tiny-policy-flag": ("--policy-tokenizer", str(llama3_policy[1])),
        "tiny-small-queue": ("--max-queue", "4", "--max-wait-ms", "20"),
        "tiny-replicas": ("--device", "cpu,cpu"),
        "tiny-keyed": ("--api-key", "a-key-none-of-these-clients-can-send"),
    }

    def get(name: str, judge: Judge | None = None) -> Server:
        if name not in started:
            folder = (judge or tiny_judge).folder
            started[name] = Server(folder, *flags.get(name, ()), log=workdir / f"server-{name}.log")
        return started[name]

    yield get
    for server in started.values():
        server.stop()


@pytest.fixture(scope="session")
def clients(workdir):
    """`clients(name)`: the driver process of a released client, started on first use."""
    started = {}

    def get(name: str):
        if name not in started:
            started[name] = client_process(CLIENTS[name], workdir)
        return started[name]

    yield get
    for process in started.values():
        process.close()


def job(name: str, urls: list[str], policy_folder, samples, judge: Judge, **extra) -> dict:
    """A rollout for client `name`: where it posts (the servers' base URLs, as that client is configured with them)
    and what it generated."""
    runner = CLIENTS[name].runner
    if runner.startswith("openrlhf"):
        where = {"urls": [f"{url}/get_reward" for url in urls]}
    elif runner == "slime":
        where = {"urls": [f"{urls[0]}/score"]}
    else:  # verl's reward router address, host:port
        where = {"router": urls[0].removeprefix("http://"), "judge": str(judge.folder)}
    return {
        **where,
        "tokenizer": str(policy_folder),
        "samples": samples,
        "max_new_tokens": MAX_NEW_TOKENS,
        "prompt_max_len": 1024,
        "max_length": 2048,
        **extra,
    }


def test_the_samples_hold_ended_and_cut_responses():
    """The rollouts below mix responses that ended (EOS id) and responses cut by max_tokens (no EOS)."""
    for tokenizer in (make_tiny_tokenizer("chatml"), make_tiny_tokenizer("llama3")):
        finishes = [generated_ids(tokenizer, s["response"], MAX_NEW_TOKENS)[1] for s in SAMPLES]
        assert "stop" in finishes and "length" in finishes, finishes


# --- the cases -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_CLIENTS)
def test_policy_template_equal_to_the_judges(name, clients, servers, tiny_judge):
    """A ChatML policy, a ChatML judge, one URL: answers that ended at the EOS id and answers cut by max_tokens."""
    client = clients(name)
    results = client.run(job(name, [servers("tiny").url], tiny_judge.policy_folder, SAMPLES, tiny_judge))
    expected = expected_rewards(tiny_judge.model, tiny_judge.tokenizer, tiny_judge.tokenizer, SAMPLES, MAX_NEW_TOKENS)
    assert_rewards_equal(results, expected, client)


@pytest.mark.parametrize("server", ["known family", "--policy-tokenizer"])
@pytest.mark.parametrize("name", ALL_CLIENTS)
def test_llama3_policy_chatml_judge(name, server, clients, servers, tiny_judge, llama3_policy):
    """The policy renders Llama-3, the judge was trained on ChatML: the reward is the judge's of the conversation."""
    policy, policy_folder = llama3_policy
    served = servers("tiny" if server == "known family" else "tiny-policy-flag")
    client = clients(name)
    results = client.run(job(name, [served.url], policy_folder, SAMPLES, tiny_judge))
    expected = expected_rewards(tiny_judge.model, tiny_judge.tokenizer, policy, SAMPLES, MAX_NEW_TOKENS)
    assert_rewards_equal(results, expected, client)


@pytest.mark.parametrize("batch", [1, len(SAMPLES)])
@pytest.mark.parametrize("name", OPENRLHF)
def test_three_urls(name, batch, clients, servers, tiny_judge):
    """`--reward.remote_url a,b,c`: 0.9 splits the batch (a part can be empty), 0.9.1-0.11.0 post the one sample to
    the first URL and empty lists to the others, 0.11.2 rotates."""
    urls = [servers(n).url for n in ("tiny", "tiny-2", "tiny-3")]
    client = clients(name)
    samples = SAMPLES[:batch]
    results = client.run(job(name, urls, tiny_judge.policy_folder, samples, tiny_judge))
    expected = expected_rewards(tiny_judge.model, tiny_judge.tokenizer, tiny_judge.tokenizer, samples, MAX_NEW_TOKENS)
    assert_rewards_equal(results, expected, client)


@pytest.mark.parametrize("name", ["openrlhf-0.11.0", "openrlhf-0.11.2"])
def test_prompt_cut_by_the_client(name, clients, servers, tiny_judge):
    """OpenRLHF cuts an over-long prompt's ids from the left and posts the uncut prompt text. Cut at the turn
    boundary, the query holds the user turn and the answer: that conversation's reward. Cut inside a turn: a reward
    all the same (the query is the truth; the uncut prompt is no longer what the policy answered)."""
    tokenizer = tiny_judge.tokenizer
    full = len(
        tokenizer(tokenizer.apply_chat_template(BREAD, tokenize=False, add_generation_prompt=True))["input_ids"]
    )
    system = len(tokenizer(tokenizer.apply_chat_template(BREAD[:1], tokenize=False))["input_ids"])
    at_boundary = {**SAMPLES[3], "scored_messages": BREAD[1:]}
    client = clients(name)
    for kept, samples in ((full - system, [at_boundary]), (full - system + 3, [SAMPLES[3]])):
        results = client.run(
            job(
                name,
                [servers("tiny").url],
                tiny_judge.policy_folder,
                samples,
                tiny_judge,
                max_length=kept + MAX_NEW_TOKENS,
            )
        )
        assert not results[0]["query"].startswith("<|im_start|>system"), results[0]["query"]  # the client cut it
        if "scored_messages" in samples[0]:
            assert results[0]["query"].startswith("<|im_start|>user\n"), results[0]["query"]
            expected = expected_rewards(tiny_judge.model, tokenizer, tokenizer, samples, MAX_NEW_TOKENS)
            assert_rewards_equal(results, expected, client)
        else:
            reward = rewards_of(results)[0]
            assert isinstance(reward, float) and reward == reward, (results, client.tail())


@pytest.mark.parametrize("name", ALL_CLIENTS)
def test_more_items_than_the_servers_queue(name, clients, servers, tiny_judge):
    """A rollout three times `--max-queue`: one request (OpenRLHF 0.9) admitted in parts, or a burst of concurrent
    requests (the others) that fills the queue; every sample gets its reward."""
    samples = [dict(sample, label=str(i)) for i, sample in enumerate(SAMPLES * 2)]
    client = clients(name)
    results = client.run(job(name, [servers("tiny-small-queue").url], tiny_judge.policy_folder, samples, tiny_judge))
    expected = expected_rewards(tiny_judge.model, tiny_judge.tokenizer, tiny_judge.tokenizer, samples, MAX_NEW_TOKENS)
    assert_rewards_equal(results, expected, client)


@pytest.mark.parametrize("name", ALL_CLIENTS)
def test_server_down_then_up(name, clients, servers, tiny_judge):
    """The client starts while nothing listens on its URL (connection refused) and the server comes up within the
    client's retries: every reward arrives."""
    relay = LateRelay(servers("tiny").port, opens_after=1.5)
    try:
        client = clients(name)
        results = client.run(job(name, [relay.url], tiny_judge.policy_folder, SAMPLES, tiny_judge))
    finally:
        relay.close()
    expected = expected_rewards(tiny_judge.model, tiny_judge.tokenizer, tiny_judge.tokenizer, SAMPLES, MAX_NEW_TOKENS)
    assert_rewards_equal(results, expected, client)


@pytest.mark.parametrize("name", ALL_CLIENTS)
def test_server_slower_than_the_client_timeout(name, clients, servers, tiny_judge):
    """The server stalls (SIGSTOP) for longer than the client's timeout (2 s where the client has one; verl waits
    without one): the client's retries get every reward, and the server scores what came in while it stalled."""
    server = servers("tiny")
    client = clients(name)
    rollout = job(name, [server.url], tiny_judge.policy_folder, SAMPLES, tiny_judge, timeout=2.0)
    resume = server.paused(3.0)
    try:
        results = client.run(rollout)
    finally:
        resume.join()
    expected = expected_rewards(tiny_judge.model, tiny_judge.tokenizer, tiny_judge.tokenizer, SAMPLES, MAX_NEW_TOKENS)
    assert_rewards_equal(results, expected, client)


@pytest.fixture(scope="session")
def smollm2_expected(smollm2_judge):
    judge = smollm2_judge
    return expected_rewards(judge.model, judge.tokenizer, judge.tokenizer, SAMPLES, MAX_NEW_TOKENS)


@pytest.mark.slow  # a 135M backbone: seconds per rollout on a CPU (`make test-clients` runs it)
@pytest.mark.parametrize("name", ALL_CLIENTS)
def test_smollm2_judge(name, clients, servers, smollm2_judge, smollm2_expected):
    """A SmolLM2-135M judge, its own tokenizer as the policy's."""
    client = clients(name)
    server = servers("smollm2", smollm2_judge)
    results = client.run(job(name, [server.url], smollm2_judge.policy_folder, SAMPLES, smollm2_judge))
    assert_rewards_equal(results, smollm2_expected, client)


def test_one_url_many_replicas(clients, servers, tiny_judge):
    """OpenRLHF 0.11.0 sends everything to its first URL: one server with `--device cpu,cpu` behind it."""
    client = clients("openrlhf-0.11.0")
    samples = SAMPLES * 2
    results = client.run(
        job("openrlhf-0.11.0", [servers("tiny-replicas").url], tiny_judge.policy_folder, samples, tiny_judge)
    )
    expected = expected_rewards(tiny_judge.model, tiny_judge.tokenizer, tiny_judge.tokenizer, samples, MAX_NEW_TOKENS)
    assert_rewards_equal(results, expected, client)


@pytest.mark.parametrize("name", OPENRLHF)
def test_extra_logs_cannot_hide_the_clients_own_metrics(name, clients, servers, tiny_judge):
    """OpenRLHF merges `extra_logs` into its per-sample metrics next to its own (`truncated`, `reward`, ...): every
    key the judge adds is under `judge/`, with pi per expert, alpha per depth candidate and the truncation flag."""
    client = clients(name)
    results = client.run(job(name, [servers("tiny").url], tiny_judge.policy_folder, SAMPLES, tiny_judge))
    answer = [{"role": "assistant", "content": "Paris."}]
    experts = score_responses(tiny_judge.model, tiny_judge.tokenizer, [FRANCE], [answer], show_progress=False).experts
    for result in results:
        keys = set(result["extra_logs"])
        assert keys and all(key.startswith("judge/") for key in keys), keys
        assert "judge/truncated" in keys
        assert any(key.startswith("judge/pi/") for key in keys) and any(k.startswith("judge/alpha/") for k in keys)
        assert {f"judge/pi/{e}" for e in experts} <= keys
    if CLIENTS[name].runner == "openrlhf-agent":  # the client's own flag: the cut answers hit max_tokens
        finishes = [generated_ids(tiny_judge.tokenizer, s["response"], MAX_NEW_TOKENS)[1] for s in SAMPLES]
        assert [r["truncated"] for r in results] == [f == "length" for f in finishes]


@pytest.mark.parametrize("name", ["openrlhf-0.11.2", "verl-0.9.1"])
def test_a_server_with_an_api_key_refuses_clients_that_send_none(name, clients, servers, tiny_judge):
    """None of the released clients can send an `Authorization` header: against `--api-key` they are refused (401),
    never scored; OpenRLHF's sample gets no reward, verl (4xx: not retried) gives up."""
    server = servers("tiny-keyed")
    client = clients(name)
    results = client.run(job(name, [server.url], tiny_judge.policy_folder, SAMPLES[:2], tiny_judge))
    assert rewards_of(results) == [None, None], results
    assert "401" in client.tail(), client.tail()
    assert _counter(server.metrics_with_key("a-key-none-of-these-clients-can-send"), "adajudge_items_total") <= 1


def _counter(metrics: str, fragment: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if not line.startswith("#") and fragment in line.split("{")[0].split(" ")[0] and "_created" not in line
    )


@pytest.mark.parametrize("name", ["openrlhf-0.9.0", "openrlhf-0.11.2"])
def test_a_query_no_template_recognises_is_scored_as_is_and_counted(name, clients, servers, tiny_judge):
    """A plain-text prompt (no chat template, as a run without `--apply_chat_template` sends): scored as is, and
    counted in `/metrics` and in `extra_logs["judge/scored_as_is"]`."""
    server = servers("tiny")
    before = _counter(server.metrics(), "as_is")
    client = clients(name)
    samples = [{**SAMPLES[0], "prompt_text": "Question: what is the capital of France?\nAnswer:"}]
    results = client.run(job(name, [server.url], tiny_judge.policy_folder, samples, tiny_judge))
    reward = rewards_of(results)[0]
    assert isinstance(reward, float), (results, client.tail())
    assert results[0]["extra_logs"]["judge/scored_as_is"] in ([1.0], 1.0, [[1.0]]), results[0]["extra_logs"]
    assert _counter(server.metrics(), "as_is") == before + 1


def test_slime_needs_its_reward_key(clients, servers, tiny_judge):
    """slime keeps the whole `/score` answer as the reward unless run with `--reward-key reward`: the answer is a JSON
    object whose `reward` is the float slime trains on."""
    client = clients("slime-reproduction")
    results = client.run(
        job("slime-reproduction", [servers("tiny").url], tiny_judge.policy_folder, SAMPLES[:1], tiny_judge)
    )
    answer = results[0]["answer"]
    assert isinstance(answer, dict) and isinstance(answer["reward"], float)


@pytest.mark.parametrize("name", ["slime-reproduction"])
def test_slime_message_list_prompt(name, clients, servers, tiny_judge):
    """slime can post the prompt as its message list, with the response text still ending in the EOS text."""
    client = clients(name)
    results = client.run(
        job(name, [servers("tiny").url], tiny_judge.policy_folder, SAMPLES, tiny_judge, messages_prompt=True)
    )
    expected = expected_rewards(tiny_judge.model, tiny_judge.tokenizer, tiny_judge.tokenizer, SAMPLES, MAX_NEW_TOKENS)
    assert_rewards_equal(results, expected, client)
