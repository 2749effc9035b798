"""`AdaJudgeReward`: a judge as a reward function of TRL's `GRPOTrainer` / `RLOOTrainer`, packed or remote.

TRL calls a reward function with the B * G prompts and completions of a step, each prompt repeated for its G
completions. Passing the judge model itself (`reward_funcs=judge`) scores B * G full rows, each repeating its prompt.
`AdaJudgeReward(judge)` encodes each (prompt, completion) as in-process scoring does and scores the G completions of a
prompt as one packed row (the prompt is computed once), with the server's batching code. `AdaJudgeReward(url)` posts
each prompt group to `adajudge serve` servers instead (`/score`), asynchronously, so TRL runs it concurrently with
its other reward functions; several URLs (a list or comma-separated, one server per GPU) share the groups.

    from adajudge_hf.serve import AdaJudgeReward
    trainer = GRPOTrainer(model=policy, reward_funcs=AdaJudgeReward("org/adajudge-judge"), ...)
    trainer = GRPOTrainer(model=policy, reward_funcs=AdaJudgeReward("http://rm-0:5000,http://rm-1:5001"), ...)

Rewards equal those of the judge passed to TRL directly for conversational data (same tokens, the boundary from the
chat template). Plain-text pairs are encoded as `score_responses` encodes them (EOS appended). An empty completion
gets `None` (TRL turns it into NaN and leaves it out).
"""

import asyncio
import os
import random
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import aiohttp
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..batching import DEFAULT_BATCH_TOKENS, eval_mode, padding_id, prompt_groups
from ..precision import load_for_inference
from ..tokenization import Messages
from .batcher import DynamicBatcher
from .templates import ItemEncoder


def _is_url(value) -> bool:
    return isinstance(value, str) and value.strip().startswith(("http://", "https://"))


def _is_empty(completion: str | Messages) -> bool:
    if isinstance(completion, str):
        return not completion.strip()
    return not any(str(message.get("content", "")).strip() for message in completion)


class AdaJudgeReward:
    """Reward function for TRL: `AdaJudgeReward(judge, tokenizer)` in-process, `AdaJudgeReward(url)` remote.

    Args:
        judge_or_url: a loaded judge, a judge folder / Hub id (loaded with `load_judge`), or server URL(s).
        tokenizer: the judge's tokenizer (read from the folder when `judge_or_url` is a path).
        max_batch_tokens: padded tokens per forward pass (in-process).
        max_length: tokens per item; longer items lose the start of their prompt, as in `score_responses`.
        dtype: for a folder / Hub id, the dtype its backbone is loaded in on `device`: `"auto"` (bf16 where the
            device has bf16 units, else fp32; `adajudge_hf.precision`) or a dtype name. A loaded judge keeps its own.
        device: for a folder / Hub id, where it is loaded (a loaded judge stays where it is).
    """

    def __new__(cls, judge_or_url=None, *args, **kwargs):
        if cls is AdaJudgeReward and _is_url(judge_or_url):
            return super().__new__(AdaJudgeRemoteReward)
        return super().__new__(cls)

    def __init__(
        self,
        judge_or_url: PreTrainedModel | str | os.PathLike,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
        max_length: int | None = None,
        dtype: str = "auto",
        device: str = "cpu",
    ):
        if isinstance(judge_or_url, (str, os.PathLike)):
            judge, folder_tokenizer, _ = load_for_inference(judge_or_url, device, dtype, judge_only=True)
            tokenizer = tokenizer or folder_tokenizer
        else:
            judge = judge_or_url
        if tokenizer is None:
            raise ValueError("AdaJudgeReward(judge) needs the judge's tokenizer: pass `tokenizer=`.")
        self.__name__ = "adajudge"  # the name TRL logs the rewards under
        self.judge, self.tokenizer = judge, tokenizer
        self.encoder = ItemEncoder(tokenizer, max_length)
        self.batcher = DynamicBatcher(judge, padding_id(tokenizer), max_batch_tokens=max_batch_tokens)

    def __call__(
        self, prompts: list[str | Messages], completions: list[str | Messages], **kwargs
    ) -> list[float | None]:
        scoreable = [i for i, completion in enumerate(completions) if not _is_empty(completion)]
        items = [self.encoder.from_pair(prompts[i], completions[i])[0] for i in scoreable]
        with eval_mode(self.judge):
            scores = self.batcher.score_now(items)
        rewards: list[float | None] = [None] * len(completions)
        for index, score in zip(scoreable, scores):
            rewards[index] = score.reward
        return rewards


class AdaJudgeRemoteReward(AdaJudgeReward):
    """Async reward function posting each prompt group to `adajudge serve` servers (`POST /score`).

    Groups go to the servers in turn (one server per GPU scales out). Timeouts, connection errors and 503s (a full
    queue, a server warming up) are retried with jittered exponential backoff (`retry_delay` doubling up to
    `max_retry_delay`, at least the server's `Retry-After`), at most `max_retries` tries and `max_retry_seconds` in
    all, then a `ConnectionError` says what failed last; any other error raises at once with the server's message.
    `api_key` (default: `$ADAJUDGE_API_KEY`) is sent as `Authorization: Bearer <key>` to a server started with one.
    """

    def __init__(
        self,
        judge_or_url: str | Sequence[str],
        tokenizer: PreTrainedTokenizerBase | None = None,
        timeout: float = 180.0,
        max_retries: int = 8,
        max_retry_seconds: float = 900.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
        api_key: str | None = None,
    ):
        urls = judge_or_url.split(",") if isinstance(judge_or_url, str) else list(judge_or_url)
        self.urls = []
        for url in (u.strip() for u in urls if u.strip()):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{url!r} is not a server URL; use http://host:port (as `adajudge serve` prints).")
            self.urls.append(f"{parts.scheme}://{parts.netloc}/score")
        if not self.urls:
            raise ValueError("AdaJudgeReward got no server URL.")
        if max_retries < 1 or timeout <= 0:
            raise ValueError(f"Need max_retries >= 1 and timeout > 0; got {max_retries} and {timeout}.")
        self.__name__ = "adajudge"
        self.timeout, self.max_retries, self.max_retry_seconds = timeout, max_retries, max_retry_seconds
        self.retry_delay, self.max_retry_delay = retry_delay, max_retry_delay
        api_key = api_key or os.environ.get("ADAJUDGE_API_KEY")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def __call__(
        self, prompts: list[str | Messages], completions: list[str | Messages], **kwargs
    ) -> list[float | None]:
        rewards: list[float | None] = [None] * len(completions)
        groups = [
            [i for i in group if not _is_empty(completions[i])] for group in prompt_groups(prompts)
        ]  # fmt: skip
        groups = [group for group in groups if group]
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout, headers=self.headers) as session:
            answers = await asyncio.gather(
                *(
                    self._post(
                        session, self.urls[n % len(self.urls)], prompts[group[0]], [completions[i] for i in group]
                    )
                    for n, group in enumerate(groups)
                )
            )
        for group, answer in zip(groups, answers):
            for index, reward in zip(group, answer):
                rewards[index] = reward
        return rewards

    async def _post(self, session: aiohttp.ClientSession, url: str, prompt, responses) -> list[float]:
        body = {"prompt": prompt, "responses": responses}
        start = time.monotonic()
        for attempt in range(1, self.max_retries + 1):
            server_wait = 0.0
            try:
                async with session.post(url, json=body) as response:
                    if response.status == 200:
                        return (await response.json())["rewards"]
                    answer = await response.json(content_type=None) if response.content_length != 0 else None
                    detail = f"{response.status}: {(answer or {}).get('error', response.reason)}"
                    if response.status != 503:
                        raise ValueError(f"{url} answered {detail}")
                    server_wait = float(response.headers.get("Retry-After", 0) or 0)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as error:
                detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            backoff = min(self.retry_delay * 2 ** (attempt - 1), self.max_retry_delay)
            delay = max(backoff * random.uniform(0.5, 1.5), server_wait)
            elapsed = time.monotonic() - start
            if attempt == self.max_retries or elapsed + delay > self.max_retry_seconds:
                break
            await asyncio.sleep(delay)
        raise ConnectionError(
            f"{url} gave no reward after {attempt} tries in {time.monotonic() - start:.0f} s (last: {detail}); check "
            "that `adajudge serve` is running and reachable, or allow more with `max_retries` / `max_retry_seconds`."
        )
