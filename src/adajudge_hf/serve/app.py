"""The HTTP server: the reward endpoints RL stacks call, on FastAPI, in front of a `DynamicBatcher`.

| endpoint | who calls it | body -> answer |
|---|---|---|
| `POST /get_reward` | OpenRLHF `--reward.remote_url` | `{"query": [str], "prompts": [str]?, "labels": [...]?}` -> `{"rewards", "scores", "extra_logs"}` |
| `POST /score` | slime, `AdaJudgeReward(url)` | `{"prompt", "response"}` (text or messages) -> `{"reward", "score", ...}`; `{"prompt", "responses": [...]}` (a prompt group) -> `{"rewards", "scores", ...}` |
| `POST /classify` | verl (vLLM's classify API) | `{"model", "input": [str], "use_activation" or "activation"}` -> `{"data": [{"index", "probs": [r], "num_classes": 1}], "usage"}` |
| `GET /health` | load balancers | 200 once the judge is loaded and warmed up, else 503 |
| `GET /metrics` | Prometheus | requests, items, texts scored as is, batch sizes, queue depth, latencies |
| `GET /info` | people | judge, form, dtype, devices, K, experts, how texts are read, limits |

Texts are read as conversations and scored in the judge's own chat template (`templates.ItemEncoder`), so the reward
is the judge's reward of the conversation whatever template the policy used and wherever generation stopped.
`rewards` are the judge's raw rewards; `scores` are sigmoid(reward) in [0, 1] (OpenRLHF filters on them);
`extra_logs` (lists, one value per query) carries `judge/pi/<expert>`, `judge/alpha/<H(k)>`, `judge/truncated` (1 for
an item cut to `max_length`) and `judge/scored_as_is` (1 for a text no chat-template parser recognised); the prefix
keeps them apart from the client's own metrics. An empty `query` list gets empty lists (OpenRLHF sends empty shards).

Errors answer `{"error": message}`: 400 malformed JSON, 401 a missing or wrong API key, 413 a body or item count over
the limits (and over-long items when refused), 422 wrong types or unscoreable items, 503 + `Retry-After` while warming
up or when the queue is full, 500 when the forward pass holding the request failed (the server keeps serving).
"""

import asyncio
import hmac
import logging
import math
import time
import uuid
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..batching import DEFAULT_BATCH_TOKENS, ItemScore, depth_candidate_names, padding_id
from ..tokenization import EncodedExample
from .batcher import DEFAULT_MAX_PADDING, DEFAULT_MAX_QUEUE, BatchFailed, DynamicBatcher, QueueFull
from .metrics import ServeMetrics
from .templates import ItemEncoder, ItemTooLong


logger = logging.getLogger(__name__)

ENDPOINTS = ("/get_reward", "/score", "/classify", "/health", "/metrics", "/info")
OPEN_ENDPOINTS = ("/health",)  # answered without the API key (load balancers)
DEFAULT_MAX_BODY_BYTES = 512 * 2**20  # an 8,192-query batch of long queries fits; a 1 GB body does not
DEFAULT_MAX_ITEMS_PER_REQUEST = 65536


@dataclass
class ServeConfig:
    """Batching, reading and input limits of a server (the `adajudge serve` flags)."""

    # padded tokens per forward pass (and the most one step takes from the queue)
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS
    max_wait_ms: float = 5.0  # how long the oldest queued item waits for company when the model is idle
    max_queue: int = DEFAULT_MAX_QUEUE  # queued items; a request arriving when it is full gets 503 + Retry-After
    max_length: int | None = None  # None: the backbone's max_position_embeddings
    refuse_overlong: bool = False  # 413 instead of cutting the start of the prompt
    pack: bool = True  # pack items that share a prompt into one row
    max_padding: float | None = DEFAULT_MAX_PADDING  # most padding per forward pass, a fraction of its tokens
    score_as_is: bool = False  # score texts exactly as sent instead of recovering the conversation
    api_key: str | None = None  # when set, every endpoint but /health needs `Authorization: Bearer <key>`
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_items_per_request: int = DEFAULT_MAX_ITEMS_PER_REQUEST


@dataclass
class LoadedJudge:
    """A judge ready to serve: model (on its device), its tokenizer, the policy's tokenizer when templates differ,
    and `replicas`, copies of the model on further devices that share the queue."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    policy_tokenizer: PreTrainedTokenizerBase | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what /info reports about where the judge came from
    replicas: list[PreTrainedModel] = field(default_factory=list)

    @property
    def models(self) -> list[PreTrainedModel]:
        return [self.model, *self.replicas]


class ServeError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str


Turns = str | list[Message]


class RewardRequest(BaseModel):
    query: list[str]
    prompts: list[str] | None = None
    labels: list[Any] | None = None

    @model_validator(mode="after")
    def _same_length(self):
        if self.prompts is not None and len(self.prompts) != len(self.query):
            raise ValueError(f"got {len(self.query)} queries but {len(self.prompts)} prompts; they must pair up")
        return self


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # slime's `label` and anything else a client sends along
    prompt: Turns | None = None
    response: Turns | None = None
    responses: list[Turns] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_response_field(self):
        if (self.response is None) == (self.responses is None):
            raise ValueError("give exactly one of 'response' (one item) or 'responses' (a prompt group)")
        return self


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # vLLM's other options (truncate_prompt_tokens, ...) are ignored
    model: str | None = None
    input: str | list[str] = Field(min_length=1)
    use_activation: bool | None = None
    activation: bool | None = None  # vLLM's older name, still sent by some verl versions

    @property
    def activate(self) -> bool:
        return bool(self.use_activation if self.use_activation is not None else self.activation)


def _turns(value: Turns | None) -> str | list[dict] | None:
    return [message.model_dump() for message in value] if isinstance(value, list) else value


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class _Server:
    """What the endpoints share: the judge, the encoder, the batcher, the metrics and the readiness."""

    def __init__(self, judge: LoadedJudge, config: ServeConfig):
        self.judge, self.config = judge, config
        model_config = judge.model.config
        self.experts = tuple(model_config.experts)
        self.depth_candidates = depth_candidate_names(model_config) if model_config.num_refinement_blocks else ()
        max_length = config.max_length or getattr(model_config.get_text_config(), "max_position_embeddings", None)
        self.encoder = ItemEncoder(
            judge.tokenizer, max_length, config.refuse_overlong, judge.policy_tokenizer, recover=not config.score_as_is
        )
        self.metrics = ServeMetrics()
        self.batcher = DynamicBatcher(
            judge.models, padding_id(judge.tokenizer), config.max_batch_tokens, config.max_wait_ms, config.max_queue,
            config.pack, self.metrics, config.max_padding,
        )  # fmt: skip
        self.ready = False

    async def warm_up(self) -> None:
        if self.judge.tokenizer.chat_template is not None:
            item, _ = self.encoder.from_pair(
                [{"role": "user", "content": "Hello"}], [{"role": "assistant", "content": "Hi"}]
            )
        else:
            item, _ = self.encoder.from_pair("Hello", " Hi")
        await self.batcher.warm_up(item)
        self.ready = True
        logger.info("AdaJudge server ready (%d replica(s))", len(self.judge.models))

    def encode(self, name: str, encode, values: list) -> tuple[list[EncodedExample], list[bool]]:
        """Encode a request's items; the 4xx names the item at fault. Returns the items and which were scored as
        is."""
        if len(values) > self.config.max_items_per_request:
            raise ServeError(
                413,
                f"{len(values)} items in one request, more than --max-items-per-request "
                f"{self.config.max_items_per_request}; send fewer per request or raise the flag",
            )
        items, as_is = [], []
        for index, value in enumerate(values):
            where = f"{name}[{index}]" if len(values) > 1 or name != "item" else name
            try:
                item, scored_as_is = encode(*value)
            except ItemTooLong as error:
                raise ServeError(413, f"{where}: {error}") from None
            except ValueError as error:
                raise ServeError(422, f"{where}: {' '.join(str(error).split())}") from None
            items.append(item)
            as_is.append(scored_as_is)
        self.metrics.truncated.inc(sum(item.truncated for item in items))
        self.metrics.scored_as_is.inc(sum(as_is))
        return items, as_is

    async def score(self, request: Request, items: list[EncodedExample]) -> list[ItemScore]:
        """Queue `items` and wait for their scores, or for the client to go away (then nothing more is spent)."""
        if not items:  # an empty shard of a client that splits its batch over several URLs
            return []
        if not self.ready:
            raise ServeError(503, "the judge is still warming up; retry shortly", {"Retry-After": "1"})
        try:
            self.batcher.check_room(len(items))
        except QueueFull as error:
            raise ServeError(503, str(error), {"Retry-After": str(error.retry_after)}) from None
        scoring = asyncio.ensure_future(self.batcher.score(items))
        disconnect = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({scoring, disconnect}, return_when=asyncio.FIRST_COMPLETED)
            if not scoring.done():
                raise ServeError(499, "client disconnected")
            try:
                return scoring.result()
            except QueueFull as error:
                raise ServeError(503, str(error), {"Retry-After": str(error.retry_after)}) from None
            except BatchFailed as error:
                raise ServeError(500, str(error)) from None
        finally:
            disconnect.cancel()
            if not scoring.done():  # a request that went away leaves nothing to score behind
                scoring.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await scoring


async def _wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body has been read, so only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _send_error(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    response = JSONResponse({"error": message}, status_code=status, headers=headers)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class _GuardMiddleware:
    """The API key and the body bound, before anything reads the body (pure ASGI).

    The body is read here in chunks and refused with 413 as soon as it passes `max_body_bytes` (or when its
    Content-Length says it will), so an oversized body never reaches the JSON parser; the endpoint then reads the
    body from memory and sees the client's later messages (a disconnect) as usual."""

    def __init__(self, app, config: ServeConfig):
        self.app, self.config = app, config
        self.expected = f"Bearer {config.api_key}".encode() if config.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in OPEN_ENDPOINTS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                problem = "a wrong API key" if given else "no API key"
                return await _send_error(
                    send, 401, f"this server needs an API key: send `Authorization: Bearer <key>` (got {problem})",
                    {"WWW-Authenticate": "Bearer"},
                )  # fmt: skip
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.config.max_body_bytes
        too_large = f"the request body is larger than --max-body-bytes {limit}; send fewer items per request"
        with suppress(ValueError):
            if int(headers.get(b"content-length", b"0")) > limit:
                return await _send_error(send, 413, too_large)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _send_error(send, 413, too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _MetricsMiddleware:
    """Count requests by endpoint and status and time them (pure ASGI: leaves disconnect detection intact)."""

    def __init__(self, app, server_ref: dict):
        self.app, self.server_ref = app, server_ref

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or "server" not in self.server_ref:
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_with_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            metrics = self.server_ref["server"].metrics
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def create_app(judge: LoadedJudge, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving `judge`; the batcher starts and the judge warms up in the app's lifespan."""
    config = config or ServeConfig()
    if config.max_body_bytes < 1 or config.max_items_per_request < 1:
        raise ValueError("--max-body-bytes and --max-items-per-request must be >= 1.")
    server_ref: dict[str, _Server] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server = _Server(judge, config)
        server_ref["server"] = server
        server.batcher.start()
        warm_up = asyncio.create_task(server.warm_up())
        try:
            yield
        finally:  # uvicorn gets here after in-flight requests have been answered (SIGTERM drains)
            warm_up.cancel()
            await server.batcher.stop()

    app = FastAPI(title="AdaJudge reward server", lifespan=lifespan)
    app.add_middleware(_GuardMiddleware, config=config)
    app.add_middleware(_MetricsMiddleware, server_ref=server_ref)  # outermost: counts refused requests too

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError):
        return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        errors = error.errors()
        status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
        details = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors[:5]]
        return JSONResponse({"error": "; ".join(details)}, status_code=status)

    def extra_logs(server: _Server, scores: list[ItemScore], items, as_is: list[bool]) -> dict[str, list[float]]:
        logs = {f"judge/pi/{name}": [s.routing_weights[i] for s in scores] for i, name in enumerate(server.experts)}
        for i, name in enumerate(server.depth_candidates):
            logs[f"judge/alpha/{name}"] = [s.depth_weights[i] for s in scores]
        logs["judge/truncated"] = [float(item.truncated) for item in items]
        logs["judge/scored_as_is"] = [float(flag) for flag in as_is]
        return logs

    @app.post("/get_reward")
    async def get_reward(body: RewardRequest, request: Request):
        server = server_ref["server"]
        prompts = body.prompts or [None] * len(body.query)
        items, as_is = server.encode("query", server.encoder.from_query, list(zip(body.query, prompts)))
        scores = await server.score(request, items)
        rewards = [s.reward for s in scores]
        return {
            "rewards": rewards,
            "scores": [sigmoid(r) for r in rewards],
            "extra_logs": extra_logs(server, scores, items, as_is),
        }

    @app.post("/score")
    async def score(body: ScoreRequest, request: Request):
        server = server_ref["server"]
        prompt = _turns(body.prompt)
        responses = [body.response] if body.responses is None else body.responses
        name = "item" if body.responses is None else "responses"
        items, as_is = server.encode(name, server.encoder.from_pair, [(prompt, _turns(r)) for r in responses])
        scores = await server.score(request, items)
        if body.responses is None:
            (item,), (s,) = items, scores
            return {
                "reward": s.reward,
                "score": sigmoid(s.reward),
                "routing_weights": dict(zip(server.experts, s.routing_weights)),
                "depth_weights": dict(zip(server.depth_candidates, s.depth_weights)) if s.depth_weights else None,
                "truncated": item.truncated,
                "scored_as_is": as_is[0],
            }
        return {
            "rewards": [s.reward for s in scores],
            "scores": [sigmoid(s.reward) for s in scores],
            "routing_weights": [s.routing_weights for s in scores],
            "depth_weights": [s.depth_weights for s in scores] if server.depth_candidates else None,
            "experts": list(server.experts),
            "depth_candidates": list(server.depth_candidates),
            "truncated": [item.truncated for item in items],
            "scored_as_is": as_is,
        }

    @app.post("/classify")
    async def classify(body: ClassifyRequest, request: Request):
        server = server_ref["server"]
        texts = [body.input] if isinstance(body.input, str) else body.input
        items, _ = server.encode("input", server.encoder.from_text, [(text,) for text in texts])
        scores = await server.score(request, items)
        activate = sigmoid if body.activate else float
        tokens = sum(len(item.input_ids) for item in items)
        return {
            "id": f"classify-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": body.model or judge.info.get("name", "adajudge"),
            "data": [
                {"index": i, "label": "LABEL_0", "probs": [activate(s.reward)], "num_classes": 1}
                for i, s in enumerate(scores)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        }

    @app.get("/health")
    async def health():
        server = server_ref["server"]
        if not server.ready:
            return JSONResponse({"status": "warming up"}, status_code=503, headers={"Retry-After": "1"})
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(server_ref["server"].metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/info")
    async def info():
        server = server_ref["server"]
        model = judge.model
        return {
            **judge.info,
            "dtype": str(model.dtype).removeprefix("torch."),
            "device": str(model.device),
            "devices": [str(replica.device) for replica in judge.models],
            "num_refinement_blocks": model.config.num_refinement_blocks,
            "experts": list(server.experts),
            "depth_candidates": list(server.depth_candidates),
            "texts": "recovered as conversations" if server.encoder.recovers else "scored as sent",
            "chat_template_parsers": [parser.name for parser in server.encoder.parsers],
            "max_length": server.encoder.max_length,
            "overlong": "refuse" if config.refuse_overlong else "truncate",
            "max_batch_tokens": config.max_batch_tokens,
            "max_wait_ms": config.max_wait_ms,
            "max_padding": config.max_padding,
            "max_queue": config.max_queue,
            "max_body_bytes": config.max_body_bytes,
            "max_items_per_request": config.max_items_per_request,
            "api_key_required": config.api_key is not None,
            "packing": server.batcher.pack,
            "ready": server.ready,
        }

    return app
