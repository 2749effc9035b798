"""Dynamic batching: items of concurrent requests are queued and scored together, prompt groups packed.

RL trainers send one item per request from many coroutines at once (OpenRLHF since v0.9.3), so the server must batch.
`DynamicBatcher` keeps a FIFO queue of items. A step starts when a replica of the model is idle and the queue holds
`max_batch_tokens` tokens or its oldest item has waited `max_wait_ms`, counted from the end of the last forward pass
when that is later (so the next items of the clients a pass answered join the following step).
A step takes items in arrival order up to the token budget, where an item whose prompt is already in the step costs
only its response tokens, because items sharing a prompt (a GRPO group's G completions) become one packed row
[prompt; r1; ...; rN] (`adajudge_hf.packing`; the model's `segment_ids`), which computes the prompt once. Rows go
through the model in length-bucketed forward passes (`length_buckets`) of at most `max_batch_tokens` padded tokens,
of which at most `max_padding` is padding (rows too different in length go in separate passes).
Rows in one pass may hold different numbers of responses: shorter rows get one-token filler responses, whose rewards
are dropped (`packing.packed_inputs`; a response sees only the prompt and itself, so fillers change nothing else).

Items whose boundary is unknown (left to `config.response_template`) and judges that cannot take packed inputs go
through plain padded rows. With several replicas of the model (one per device), each forward pass goes whole to an
idle replica, on that replica's own worker thread; an exception fails the items of that pass only, and the replica
keeps serving. Items whose request went away (client disconnect) are dropped before their pass.

The queue holds at most `max_queue` items: a request that arrives when it is full is refused (`QueueFull`, HTTP 503,
retryable); an admitted request larger than the room left enters in parts as the queue drains, so no request is
refused for its size alone.
"""

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field

import torch

from ..batching import DEFAULT_BATCH_TOKENS, ItemScore, item_scores, length_buckets, plain_inputs
from ..packing import pack_responses, packed_inputs
from ..tokenization import EncodedExample
from .metrics import ServeMetrics


logger = logging.getLogger(__name__)

TRIM_EVERY_S = 10.0
# Padding allowed per forward pass, as a fraction of its tokens. Rows of one step can differ a lot in length; on a CPU
# a padded token costs as much as a real one, while a bigger batch buys little (a row's cost is nearly flat in the
# batch size there), so splitting the pass is cheaper than padding it.
DEFAULT_MAX_PADDING = 0.2
# Items queued at most. Above any client's normal burst (256 concurrent one-item requests; larger requests enter in
# parts), while a few tens of thousands of encoded items stay well within a host's memory.
DEFAULT_MAX_QUEUE = 16384


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's `malloc_trim`; a no-op elsewhere).

    Passes of ever-new shapes leave freed activation buffers in glibc's heaps, so without it the resident memory of a
    long-running server creeps up towards the largest mix of shapes it has seen (measured: `benchmarks/soak.py`)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class QueueFull(RuntimeError):
    """The queue is full; retry after `retry_after` seconds (HTTP 503)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class BatchFailed(RuntimeError):
    """The forward pass holding this item raised (HTTP 500); other passes are unaffected."""


@dataclass
class _Job:
    item: EncodedExample
    future: asyncio.Future | None
    arrival: float

    @property
    def prompt_key(self) -> tuple[int, ...] | None:
        length = self.item.prompt_length
        return tuple(self.item.input_ids[:length]) if length else None


@dataclass
class _Pass:
    """One forward pass: packed rows (prompt ids, jobs) or plain rows (jobs), with or without known boundaries."""

    kind: str  # "packed", "plain" (prompt_lengths known) or "located" (the judge finds the response)
    rows: list = field(default_factory=list)

    @property
    def jobs(self) -> list[_Job]:
        """The pass's jobs in the order of its scores."""
        return [job for _, members in self.rows for job in members] if self.kind == "packed" else list(self.rows)

    def drop_abandoned(self) -> None:
        """Remove the jobs whose request went away (client disconnect, failed sibling)."""
        if self.kind == "packed":
            rows = [(key, [job for job in members if not job.future.done()]) for key, members in self.rows]
            self.rows = [(key, members) for key, members in rows if members]
        else:
            self.rows = [job for job in self.rows if not job.future.done()]


class DynamicBatcher:
    """Coalesce the items of concurrent requests into batched, packed forward passes of `models` (one replica per
    device; a single model is one replica)."""

    def __init__(
        self,
        models: torch.nn.Module | Sequence[torch.nn.Module],
        pad_token_id: int,
        max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
        max_wait_ms: float = 5.0,
        max_queue: int = DEFAULT_MAX_QUEUE,
        pack: bool = True,
        metrics: ServeMetrics | None = None,
        max_padding: float | None = DEFAULT_MAX_PADDING,
    ):
        if max_batch_tokens < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(
                f"Need max_batch_tokens >= 1, max_queue >= 1 and max_wait_ms >= 0; got {max_batch_tokens}, "
                f"{max_queue} and {max_wait_ms}."
            )
        if max_padding is not None and not 0 <= max_padding < 1:
            raise ValueError(f"`max_padding` must be in [0, 1) (a fraction of a pass's tokens), got {max_padding}.")
        self.models = [models] if isinstance(models, torch.nn.Module) else list(models)
        if not self.models:
            raise ValueError("DynamicBatcher needs at least one model.")
        self.pad_token_id = pad_token_id
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.max_padding = max_padding
        self.pack = pack and all(getattr(model, "supports_packed_inputs", False) for model in self.models)
        self.metrics = metrics
        self._pending: deque[_Job] = deque()
        self._pending_tokens = 0
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"adajudge-forward-{index}")
            for index in range(len(self.models))
        ]
        self._wakeup: asyncio.Event | None = None
        self._room: asyncio.Event | None = None  # set whenever the queue has room again
        self._idle: asyncio.Queue[int] | None = None  # replicas waiting for a pass
        self._task: asyncio.Task | None = None
        self._passes: set[asyncio.Task] = set()
        self._last_pass_end = 0.0
        self._last_trim = time.monotonic()
        self._items_per_second = 0.0  # smoothed, for Retry-After

    @property
    def model(self) -> torch.nn.Module:
        """The first replica (what the in-process path scores with)."""
        return self.models[0]

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._wakeup, self._room = asyncio.Event(), asyncio.Event()
        self._idle = asyncio.Queue()
        for replica in range(len(self.models)):
            self._idle.put_nowait(replica)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop after the running passes; queued items fail with a shutdown message."""
        tasks = [task for task in (self._task, *self._passes) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(BatchFailed("the server is shutting down"))
        for executor in self._executors:
            executor.shutdown(wait=True)

    async def warm_up(self, item: EncodedExample) -> None:
        """Score `item` once on every replica (first passes are slow: allocations, kernel choices)."""
        loop = asyncio.get_running_loop()
        job = _Job(item, loop.create_future(), time.monotonic())
        kind = "plain" if item.prompt_length is not None else "located"
        for replica, model in enumerate(self.models):
            start = time.perf_counter()
            await loop.run_in_executor(self._executors[replica], self._forward, _Pass(kind, [job]), model)
            if self.metrics is not None:
                self.metrics.observe_pass(1, 1, time.perf_counter() - start)

    def check_room(self, num_items: int) -> None:
        """Raise `QueueFull` when the queue is full (a request is refused on arrival or not at all)."""
        if len(self._pending) >= self.max_queue:
            rate = max(self._items_per_second, 1.0)
            raise QueueFull(
                f"the queue is full ({len(self._pending)} items, --max-queue {self.max_queue}); retry later",
                retry_after=max(1, round((len(self._pending) + num_items) / rate)),
            )

    async def score(self, items: Sequence[EncodedExample]) -> list[ItemScore]:
        """Scores of `items`, in order. The items enter the queue as it has room, in parts when they outnumber it.

        Raises `QueueFull` when the queue is full on arrival, `BatchFailed` when a pass holding one of them failed;
        when cancelled (or failed), the items not yet scored are dropped."""
        self.check_room(len(items))
        futures: list[asyncio.Future] = []
        try:
            while len(futures) < len(items):
                room = self.max_queue - len(self._pending)
                if room <= 0:
                    self._room.clear()
                    await self._room.wait()
                    continue
                futures += self._enqueue(items[len(futures) : len(futures) + room])
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()  # no-op for the scored ones

    def _enqueue(self, items: Sequence[EncodedExample]) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = []
        for item in items:
            job = _Job(item, loop.create_future(), now)
            self._pending.append(job)
            self._pending_tokens += len(item.input_ids)
            futures.append(job.future)
        self._set_queue_metric()
        self._wakeup.set()
        return futures

    def _set_queue_metric(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                continue
            replica = await self._idle.get()
            # Wait for company from the oldest item's arrival, or from the end of the last pass: the clients it
            # answered send their next items within milliseconds, and they should join this step, not the next.
            deadline = max(self._pending[0].arrival, self._last_pass_end) if self._pending else 0.0
            deadline += self.max_wait
            while self._pending_tokens < self.max_batch_tokens and (delay := deadline - time.monotonic()) > 0:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the cancellation `stop` sends
                # when a wake-up lands at the same moment, and the server then never shuts down.
                with suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()
                self._wakeup.clear()
            passes = self._plan(self._take())
            for index, forward_pass in enumerate(passes):
                if index:
                    replica = await self._idle.get()
                task = asyncio.get_running_loop().create_task(self._run_pass(forward_pass, replica))
                self._passes.add(task)
                task.add_done_callback(self._passes.discard)
            if not passes:
                self._idle.put_nowait(replica)
            if self._pending:
                self._wakeup.set()

    def _take(self) -> list[_Job]:
        """Jobs in arrival order up to the token budget; a job whose prompt is already taken costs its response."""
        jobs, prompts, tokens = [], set(), 0
        while self._pending:
            job = self._pending[0]
            if job.future.done():  # its request went away
                self._pending.popleft()
                self._pending_tokens -= len(job.item.input_ids)
                continue
            key = job.prompt_key if self.pack else None
            cost = len(job.item.input_ids) - (len(key) if key is not None and key in prompts else 0)
            if jobs and tokens + cost > self.max_batch_tokens:
                break
            self._pending.popleft()
            self._pending_tokens -= len(job.item.input_ids)
            jobs.append(job)
            prompts.add(key)
            tokens += cost
        if len(self._pending) < self.max_queue:
            self._room.set()
        self._set_queue_metric()
        return jobs

    def _plan(self, jobs: list[_Job]) -> list[_Pass]:
        """Forward passes for `jobs`: packed rows per shared prompt, plain rows for the rest, length-bucketed."""
        groups: dict[tuple[int, ...], list[_Job]] = {}
        plain, located = [], []
        for job in jobs:
            key = job.prompt_key
            if job.item.prompt_length is None:
                located.append(job)
            elif self.pack and key:
                groups.setdefault(key, []).append(job)
            else:
                plain.append(job)
        for key in [key for key, members in groups.items() if len(members) == 1]:
            plain += groups.pop(key)  # nothing to share: a plain row takes attention without a block mask
        rows = []  # (prompt ids, jobs) with at most max_batch_tokens tokens per row
        for key, members in groups.items():
            row, size = [], len(key)
            for job in members:
                response = len(job.item.input_ids) - len(key)
                if row and size + response > self.max_batch_tokens:
                    rows.append((list(key), row))
                    row, size = [], len(key)
                row.append(job)
                size += response
            rows.append((list(key), row))
        passes = []
        row_lengths = [len(key) + sum(len(j.item.input_ids) - len(key) for j in members) for key, members in rows]
        for bucket in length_buckets(row_lengths, self.max_batch_tokens, self.max_padding):
            passes.append(_Pass("packed", [rows[i] for i in bucket]))
        for kind, members in (("plain", plain), ("located", located)):
            lengths = [len(job.item.input_ids) for job in members]
            for bucket in length_buckets(lengths, self.max_batch_tokens, self.max_padding):
                passes.append(_Pass(kind, [members[i] for i in bucket]))
        return passes

    def score_now(self, items: Sequence[EncodedExample]) -> list[ItemScore]:
        """Score `items` right here on the first replica, in the passes a server step would make (the in-process
        reward path)."""
        jobs = [_Job(item, None, 0.0) for item in items]
        scores = {}
        for forward_pass in self._plan(jobs):
            scores.update(zip(map(id, forward_pass.jobs), self._forward(forward_pass, self.model)))
        return [scores[id(job)] for job in jobs]

    async def _run_pass(self, forward_pass: _Pass, replica: int) -> None:
        """Run one pass on `replica`'s worker thread and answer its jobs; the replica is idle again afterwards."""
        loop = asyncio.get_running_loop()
        try:
            forward_pass.drop_abandoned()
            jobs = forward_pass.jobs
            if not jobs:
                return
            start = time.perf_counter()
            try:
                scores = await loop.run_in_executor(
                    self._executors[replica], self._forward, forward_pass, self.models[replica]
                )
            except asyncio.CancelledError:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(BatchFailed("the server is shutting down"))
                raise
            except Exception as error:  # fail this pass only; the replica keeps serving
                logger.exception("A forward pass of %d items on replica %d failed", len(jobs), replica)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(BatchFailed(f"scoring failed: {type(error).__name__}: {error}"))
                return
            seconds = time.perf_counter() - start
            rate = len(jobs) * len(self.models) / max(seconds, 1e-6)
            self._items_per_second = 0.8 * self._items_per_second + 0.2 * rate
            for job, score in zip(jobs, scores):
                if not job.future.done():
                    job.future.set_result(score)
            if self.metrics is not None:
                self.metrics.observe_pass(len(jobs), len(forward_pass.rows), seconds)
        finally:
            self._last_pass_end = time.monotonic()
            if self._last_pass_end - self._last_trim > TRIM_EVERY_S:  # a few ms, queued on the replica's thread
                self._last_trim = self._last_pass_end
                loop.run_in_executor(self._executors[replica], release_freed_memory)
            self._idle.put_nowait(replica)
            self._wakeup.set()

    @torch.inference_mode()
    def _forward(self, forward_pass: _Pass, model: torch.nn.Module) -> list[ItemScore]:
        """Run one pass of `model` on the calling (worker) thread; scores in the order of the pass's jobs."""
        if forward_pass.kind == "packed":
            rows = [
                pack_responses(prompt_ids, [job.item.input_ids[len(prompt_ids) :] for job in members])
                for prompt_ids, members in forward_pass.rows
            ]
            inputs, order = packed_inputs(rows, self.pad_token_id)
        else:
            items = [job.item for job in forward_pass.rows]
            inputs, order = plain_inputs(items, self.pad_token_id, prompt_lengths=forward_pass.kind == "plain"), None
        outputs = model(**{key: value.to(model.device) for key, value in inputs.items()})
        return item_scores(outputs, order)
