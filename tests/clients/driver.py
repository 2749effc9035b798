"""Run one RL stack's released reward client in its own interpreter, as that stack runs it.

Started by `tests/clients/conftest.py` with `PYTHONPATH=.clients/<client>-<version>:.clients/deps` on top of the
project's interpreter, so the client's own package (installed with `pip install --no-deps --target`) is the one
imported. It reads one job per line (JSON) from the pipe `ADAJUDGE_JOBS_FD` names and answers one line per job on
its original stdout; whatever the client prints or logs goes to stderr.

What is called, unmodified, from the installed packages:

- OpenRLHF <= 0.9.0: the rollout-to-reward path of `experience_maker`: `SamplesGenerator.tokenize_fn` (prompt ids,
  cut to `prompt_max_len` by the tokenizer), `remove_pad_token` + `batch_decode(..., skip_special_tokens=False)`
  (the queries, as `make_experience` builds them), `remote_rm_utils.RemoteRewardModel.get_rewards` (split over the
  URLs, `request_api_wrapper` per part) and `update_samples_with_rewards` (rewards, scores, extra_logs per sample).
- OpenRLHF 0.9.1-0.11.x: `utils.agent.SingleTurnAgentExecutor.execute` with a stand-in generation engine: it
  tokenizes the prompt, cuts it from the left, decodes prompt + generated ids and calls `_fetch_rewards_via_http`.
- verl 0.9.1: `RewardLoopWorker.compute_score_batch` -> `compute_score_disrm` -> `_preprocess_reward_inputs` +
  `_post_request` on a worker built without Hydra (its config, router address and tokenizers set directly; the
  tokenizers loaded with verl's own `hf_tokenizer`).
- slime is not on the package index, so `slime_remote_rm` below is a reproduction (not slime's code) of
  `slime/rollout/rm_hub/__init__.py` `remote_rm` as read in THUDM/slime: one POST of `{"prompt", "response",
  "label"}` per sample on a shared aiohttp session (64 connections, 120 s total), 10 tries with
  `min(2**k, 30) + random()` s between them, then `sample.reward[args.reward_key]` (`--reward-key reward`).

Stubbed modules, because they need a GPU stack or a cluster and play no part in how the reward request is built or
sent: `ray` (no cluster here: `ray.remote` runs functions and actor methods in a thread pool and `ray.get` waits on
them, which keeps OpenRLHF 0.9's parts posted concurrently; every other `ray` name, used only at import time, is an
inert placeholder), `flash_attn` (CUDA kernels, imported by OpenRLHF's model code) and `vllm` (the generation
engine; the tests stand in for its output with token ids they choose). Nothing else is stubbed.

Only the clients' timeouts may be shortened, so that the slow-server case takes seconds: OpenRLHF 0.9's
`requests.post(..., timeout=180)` and 0.11's `aiohttp.ClientTimeout(total=180)` are the literals replaced when a job
sets `timeout`; the retry counts and sleeps stay the clients' own.
"""

import asyncio
import concurrent.futures
import contextlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import json
import os
import random
import sys
import traceback
import types
from types import SimpleNamespace


STUBBED = ("ray", "flash_attn", "vllm")


class _Placeholder:
    """Any attribute, call, subscript or base class: what a stubbed module hands out at import time."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, item):
        return _Placeholder(f"{self._name}.{item}")

    def __call__(self, *args, **kwargs):
        return _Placeholder(f"{self._name}()")

    def __getitem__(self, item):
        return self

    def __mro_entries__(self, bases):
        return (object,)

    def __repr__(self):
        return f"<stub {self._name}>"


_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=64)


class _RemoteFunction:
    def __init__(self, function):
        self._function = function

    def remote(self, *args, **kwargs):
        return _POOL.submit(self._function, *args, **kwargs)

    def options(self, **_):
        return self


class _ActorHandle:
    def __init__(self, instance):
        self._instance = instance

    def __getattr__(self, item):
        return _RemoteFunction(getattr(self._instance, item))


class _ActorClass:
    def __init__(self, cls):
        self._cls = cls

    def remote(self, *args, **kwargs):
        return _ActorHandle(self._cls(*args, **kwargs))

    def options(self, **_):
        return self


def _ray_remote(*args, **kwargs):
    if len(args) == 1 and not kwargs and callable(args[0]):
        target = args[0]
        return _ActorClass(target) if isinstance(target, type) else _RemoteFunction(target)
    return _ray_remote  # `@ray.remote(num_cpus=...)`


def _ray_get(refs, timeout=None):
    if isinstance(refs, list):
        return [ref.result(timeout=timeout) for ref in refs]
    return refs.result(timeout=timeout)


class _StubModule(types.ModuleType):
    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Placeholder(f"{self.__name__}.{item}")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []
        if module.__name__ == "ray":
            module.remote, module.get = _ray_remote, _ray_get
            module.is_initialized = lambda: True


def install_stubs() -> None:
    """First on the meta path: a real install of a stubbed module is shadowed too."""
    sys.meta_path.insert(0, _StubFinder())


# --- how each stack turns a rollout into reward requests ----------------------------------------------------------


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def prompt_text(tokenizer, sample: dict) -> str:
    """The prompt as the stack's dataset renders it: the policy's chat template with the generation prompt, or the
    plain text of a run without a chat template."""
    if "prompt_text" in sample:
        return sample["prompt_text"]
    return tokenizer.apply_chat_template(sample["messages"], tokenize=False, add_generation_prompt=True)


def generated_ids(tokenizer, response: str, max_tokens: int) -> tuple[list[int], str]:
    """What the policy's engine returns for `response`: its ids and the end-of-turn id, cut at `max_tokens`."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(ids) > max_tokens:
        return ids[:max_tokens], "length"
    return ids, "stop"


class _Engine:
    """Stands in for OpenRLHF's vLLM engine actor for one sample: `generate` answers with that sample's ids."""

    def __init__(self, tokenizer, response: str):
        self.tokenizer, self.response = tokenizer, response

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        ids, finish = generated_ids(self.tokenizer, self.response, sampling_params.max_tokens)
        output = SimpleNamespace(token_ids=ids, text=self.tokenizer.decode(ids), finish_reason=finish, logprobs=None)
        return SimpleNamespace(outputs=[output])


@contextlib.contextmanager
def literal_timeout(module, name: str, timeout: float | None):
    """Within the block, the client's hard-coded timeout is `timeout`: `module.<name>` is a view of the same library
    whose `requests.post` / `aiohttp.ClientTimeout` gets `timeout` in place of the literal. None: left alone."""
    library = getattr(module, name)
    if timeout is None:
        yield
        return
    view = types.ModuleType(f"{library.__name__}-short-timeout")
    view.__dict__.update(library.__dict__)
    if name == "requests":
        view.post = lambda *args, **kwargs: library.post(*args, **{**kwargs, "timeout": timeout})
    else:
        view.ClientTimeout = lambda **kwargs: library.ClientTimeout(**{**kwargs, "total": timeout})
    setattr(module, name, view)
    try:
        yield
    finally:
        setattr(module, name, library)


def run_openrlhf_batch(job: dict) -> list[dict]:
    """OpenRLHF <= 0.9.0: a whole rollout batch through `RemoteRewardModel.get_rewards`."""
    import torch
    from openrlhf.trainer.ppo_utils import experience_maker
    from openrlhf.utils import remote_rm_utils
    from openrlhf.utils.utils import remove_pad_token

    tokenizer = load_tokenizer(job["tokenizer"])
    samples = job["samples"]
    prompts = [prompt_text(tokenizer, s) for s in samples]
    labels = [s.get("label") for s in samples]
    prompt_max_len, max_new_tokens = job["prompt_max_len"], job["max_new_tokens"]
    prompt_ids = experience_maker.SamplesGenerator.tokenize_fn(
        SimpleNamespace(tokenizer=tokenizer), prompts, prompt_max_len, padding=False
    )["input_ids"]
    samples_list = []
    for ids, prompt, label, sample in zip(prompt_ids, prompts, labels, samples):
        output_ids, finish = generated_ids(tokenizer, sample["response"], max_new_tokens)
        sequences = torch.tensor(list(ids) + output_ids)[: prompt_max_len + max_new_tokens]
        info = {  # what `_generate_vllm` records before the rewards come
            "response_length": torch.tensor([len(output_ids)]),
            "total_length": torch.tensor([float(len(sequences))]),
            "response_clip_ratio": torch.tensor([finish == "length"]),
        }
        samples_list.append(
            experience_maker.Experience(
                sequences=sequences.unsqueeze(0),
                attention_mask=torch.ones_like(sequences).unsqueeze(0),
                prompts=[prompt],
                labels=[label],
                info=info,
            )
        )
    own_keys = {"response_length", "total_length", "response_clip_ratio", "reward", "score"}
    queries = sum(
        [
            tokenizer.batch_decode(remove_pad_token(s.sequences, s.attention_mask), skip_special_tokens=False)
            for s in samples_list
        ],
        [],
    )
    model = remote_rm_utils.RemoteRewardModel.remote(SimpleNamespace(micro_rollout_batch_size=8), job["urls"])
    try:
        with literal_timeout(remote_rm_utils, "requests", job.get("timeout")):
            rewards_info = _ray_get(model.get_rewards.remote(queries, prompts, labels))
    except Exception as error:  # the released client gives up: in a run this stops training
        return [{"error": f"{type(error).__name__}: {error}", "query": q} for q in queries]
    experience_maker.update_samples_with_rewards(rewards_info, samples_list)
    return [
        {
            "reward": s.rewards.tolist(),
            "score": s.scores.tolist(),
            "extra_logs": {k: v.tolist() for k, v in s.info.items() if k not in own_keys},
            "query": query,
        }
        for s, query in zip(samples_list, queries)
    ]


def run_openrlhf_agent(job: dict) -> list[dict]:
    """OpenRLHF 0.9.1-0.11.x: one `SingleTurnAgentExecutor.execute` per sample, all in flight at once."""
    from openrlhf.utils import agent

    tokenizer = load_tokenizer(job["tokenizer"])
    samples = job["samples"]
    prompts = [prompt_text(tokenizer, s) for s in samples]
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=job["urls"])

    async def rollout():
        sampling_params = SimpleNamespace(max_tokens=job["max_new_tokens"], logprobs=None)
        return await asyncio.gather(
            *(
                executor.execute(
                    p, s.get("label"), sampling_params, job["max_length"], tokenizer, _Engine(tokenizer, s["response"])
                )
                for p, s in zip(prompts, samples)
            )
        )

    with literal_timeout(agent, "aiohttp", job.get("timeout")):
        outputs = asyncio.run(rollout())
    return [
        {
            "reward": output["reward"],
            "score": output["scores"],
            "extra_logs": output["extra_logs"],
            "truncated": output.get("truncated"),
            "query": tokenizer.decode(output["observation_tokens"], skip_special_tokens=False),
        }
        for output in outputs
    ]


def run_verl(job: dict) -> list[dict]:
    """verl 0.9.1: `RewardLoopWorker.compute_score_batch` on a batch laid out as verl's rollout leaves it."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.protocol import DataProto
    from verl.utils import hf_tokenizer

    worker = RewardLoopWorker.__new__(RewardLoopWorker)
    worker.config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {"path": None},
                "reward_model": {"enable": True, "model_path": job["judge"], "rollout": {"name": "vllm"}},
            }
        }
    )
    worker.reward_router_address = job["router"]
    worker.input_tokenizer = hf_tokenizer(job["tokenizer"], trust_remote_code=True)
    worker.reward_model_tokenizer = hf_tokenizer(job["judge"], trust_remote_code=True)  # as `_init_reward_fn`
    tokenizer = worker.input_tokenizer
    samples, response_length, prompt_length = job["samples"], job["max_new_tokens"], job["prompt_max_len"]
    prompt_rows, response_rows, masks = [], [], []
    for sample in samples:
        prompt_ids = tokenizer(prompt_text(tokenizer, sample), add_special_tokens=False)["input_ids"][-prompt_length:]
        output_ids, _ = generated_ids(tokenizer, sample["response"], response_length)
        pad = tokenizer.pad_token_id
        left, right = prompt_length - len(prompt_ids), response_length - len(output_ids)
        prompt_rows.append([pad] * left + prompt_ids)  # verl left-pads prompts and right-pads responses
        response_rows.append(output_ids + [pad] * right)
        masks.append([0] * left + [1] * len(prompt_ids) + [1] * len(output_ids) + [0] * right)
    raw_prompts = np.empty(len(samples), dtype=object)
    for i, sample in enumerate(samples):
        raw_prompts[i] = sample["messages"]
    data = DataProto.from_dict(
        tensors={
            "prompts": torch.tensor(prompt_rows),
            "responses": torch.tensor(response_rows),
            "attention_mask": torch.tensor(masks),
        },
        non_tensors={"raw_prompt": raw_prompts},
    )

    try:
        outputs = asyncio.run(worker.compute_score_batch(data))
    except Exception as error:  # verl gives up: in a run this fails the step
        return [{"error": f"{type(error).__name__}: {error}"} for _ in samples]
    return [{"reward": output["reward_score"]} for output in outputs]


async def slime_remote_rm(url: str, sample: SimpleNamespace, session, max_retries: int = 10):
    """Reproduction of slime's `remote_rm` (see the module docstring): the answer's whole JSON, retried."""
    payload = {"prompt": sample.prompt, "response": sample.response, "label": sample.label}
    for attempt in range(max_retries):
        try:
            async with session.post(url, json=payload) as answer:
                answer.raise_for_status()
                return await answer.json()
        except Exception:
            if attempt + 1 >= max_retries:
                raise
            await asyncio.sleep(min(2**attempt, 30) + random.random())


def run_slime(job: dict) -> list[dict]:
    """slime: the templated prompt (or the message list) and the generated text with its end-of-turn token kept."""
    import aiohttp

    tokenizer = load_tokenizer(job["tokenizer"])
    samples = []
    for sample in job["samples"]:
        output_ids, _ = generated_ids(tokenizer, sample["response"], job["max_new_tokens"])
        prompt = sample["messages"]
        if not job.get("messages_prompt"):
            prompt = prompt_text(tokenizer, sample)
        response = tokenizer.decode(output_ids, skip_special_tokens=False)
        samples.append(SimpleNamespace(prompt=prompt, response=response, label=sample.get("label")))

    async def rollout():
        connector = aiohttp.TCPConnector(limit=64, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=job.get("timeout") or 120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            return await asyncio.gather(
                *(slime_remote_rm(job["urls"][0], s, session) for s in samples), return_exceptions=True
            )

    results = []
    for answer in asyncio.run(rollout()):
        if isinstance(answer, BaseException):
            results.append({"error": f"{type(answer).__name__}: {answer}"})
        else:  # `--reward-key reward`: the float slime trains on
            results.append({"reward": answer[job.get("reward_key", "reward")], "answer": answer})
    return results


RUNNERS = {
    "openrlhf-batch": run_openrlhf_batch,
    "openrlhf-agent": run_openrlhf_agent,
    "verl": run_verl,
    "slime": run_slime,
}


def main() -> None:
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the clients' prints must not mix with the answers
    install_stubs()
    package = os.environ.get("ADAJUDGE_CLIENT_PACKAGE")
    version = importlib.metadata.version(package) if package else None
    answers.write(json.dumps({"ready": True, "package": package, "version": version}) + "\n")
    answers.flush()
    for line in os.fdopen(int(os.environ["ADAJUDGE_JOBS_FD"])):
        job = json.loads(line)
        try:
            result = {"samples": RUNNERS[job["runner"]](job)}
        except Exception:
            result = {"crash": traceback.format_exc()}
        answers.write(json.dumps(result) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
