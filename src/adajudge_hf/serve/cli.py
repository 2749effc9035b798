"""`adajudge serve JUDGE`: serve a judge to RL trainers over HTTP (OpenRLHF, slime, verl, TRL).

adajudge serve outputs/demo/judge --port 5000
# OpenRLHF: --reward.remote_url http://127.0.0.1:5000/get_reward
# several GPUs behind one URL: --device cuda:0,cuda:1,cuda:2,cuda:3 (one replica per device, one queue)
"""

import argparse
import copy
import ipaddress
import logging
import os

import torch
import uvicorn
from transformers import AutoTokenizer

from ..batching import DEFAULT_BATCH_TOKENS
from ..checkpoint import detect_judge_form
from ..cli import accept_underscore_flags
from ..precision import DTYPE_CHOICES, load_for_inference
from .app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ITEMS_PER_REQUEST, LoadedJudge, ServeConfig, create_app
from .batcher import DEFAULT_MAX_PADDING, DEFAULT_MAX_QUEUE


logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adajudge serve", description=__doc__.split("\n")[0])
    parser.add_argument("judge", help="judge folder in any save form (full, adapter + heads, heads) or Hub repo id")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:N, or a comma-separated list (cuda:0,cuda:1,...): one replica of the judge per device "
        "behind this one port and queue, each taking whole forward passes (default: cuda:0 when available)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="weights dtype; auto (default): bfloat16 where the device has bf16 units (Ampere+ GPUs, CPUs with "
        "AMX-BF16 / AVX512-BF16), else float32. The heads compute in float32 either way; /info says which and why",
    )
    parser.add_argument(
        "--max-batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="padded tokens per forward pass"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long an item waits for company when the judge is idle"
    )
    parser.add_argument(
        "--max-padding",
        type=float,
        default=DEFAULT_MAX_PADDING,
        help="most padding per forward pass, as a fraction of its tokens: rows too different in length go in separate "
        "passes (padding costs like real tokens on a CPU); 0.99 pads freely",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help="items queued at most: a request arriving when the queue is full gets 503 + Retry-After; a larger "
        "request than the room left enters in parts",
    )
    parser.add_argument("--max-length", type=int, default=None, help="tokens per item (default: the backbone's limit)")
    parser.add_argument(
        "--overlong",
        choices=("truncate", "refuse"),
        default="truncate",
        help="over-long items: cut the start of the prompt (reported as truncated) or answer 413",
    )
    parser.add_argument(
        "--policy-tokenizer",
        default=None,
        help="tokenizer (folder or repo id) whose chat template rendered the queries, when it is neither the judge's "
        "nor a known family (ChatML, Llama-3, Mistral, Gemma, Phi-3): its markers are used to recover conversations",
    )
    parser.add_argument(
        "--score-as-is",
        action="store_true",
        help="score every text exactly as sent, instead of recovering the conversation from it and scoring the "
        "judge's chat-template rendering of it (the default)",
    )
    parser.add_argument("--no-packing", action="store_true", help="score each item in its own row")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ADAJUDGE_API_KEY"),
        help="require `Authorization: Bearer KEY` on every endpoint but /health (default: $ADAJUDGE_API_KEY; none)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies get 413 before they are parsed",
    )
    parser.add_argument(
        "--max-items-per-request",
        type=int,
        default=DEFAULT_MAX_ITEMS_PER_REQUEST,
        help="requests with more items (queries, responses, inputs) get 413",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="seconds SIGTERM waits for in-flight requests"
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return accept_underscore_flags(parser)


def load_for_serving(
    judge: str, device: str | None = None, dtype: str | None = None, policy_tokenizer: str | None = None
) -> LoadedJudge:
    """Load `judge` (any save form, local or Hub) with its tokenizer onto `device`, or one replica per device of a
    comma-separated list."""
    devices = [
        torch.device(d.strip()) for d in (device or ("cuda" if torch.cuda.is_available() else "cpu")).split(",")
    ]
    device = devices[0]
    model, tokenizer, precision = load_for_inference(judge, device, dtype, judge_only=True)
    replicas = [copy.deepcopy(model).to(other) for other in devices[1:]]
    policy = AutoTokenizer.from_pretrained(policy_tokenizer) if policy_tokenizer else None
    try:
        form = detect_judge_form(judge)
    except ValueError:
        form = "hub"
    return LoadedJudge(
        model,
        tokenizer,
        policy,
        info={"name": str(judge), "form": form, "policy_tokenizer": policy_tokenizer, **precision.as_record()},
        replicas=replicas,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = ServeConfig(
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_length=args.max_length,
        refuse_overlong=args.overlong == "refuse",
        pack=not args.no_packing,
        max_padding=args.max_padding,
        score_as_is=args.score_as_is,
        api_key=args.api_key or None,
        max_body_bytes=args.max_body_bytes,
        max_items_per_request=args.max_items_per_request,
    )
    if config.max_batch_tokens < 1 or config.max_queue < 1 or config.max_wait_ms < 0:
        raise ValueError("--max-batch-tokens and --max-queue must be >= 1 and --max-wait-ms >= 0.")
    if config.max_body_bytes < 1 or config.max_items_per_request < 1:
        raise ValueError("--max-body-bytes and --max-items-per-request must be >= 1.")
    if args.score_as_is and args.policy_tokenizer:
        raise ValueError(
            "--policy-tokenizer re-renders the policy's conversations in the judge's template, while --score-as-is "
            "scores texts exactly as sent; drop one of them."
        )
    if not 0 <= config.max_padding < 1:
        raise ValueError(f"--max-padding must be in [0, 1) (a fraction of a pass's tokens), got {config.max_padding}.")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not is_loopback(args.host) and config.api_key is None:
        logger.warning(
            "Listening on %s without an API key: anyone who can reach this port can use the judge. Set --api-key "
            "(or $ADAJUDGE_API_KEY) and give clients the key, or keep --host 127.0.0.1.",
            args.host,
        )
    devices = (args.device or "").split(",")
    cpu_replicas = sum(d.strip() == "cpu" for d in devices)
    if cpu_replicas > 1:  # replicas share the cores instead of each using all of them
        torch.set_num_threads(max(1, torch.get_num_threads() // cpu_replicas))
    judge = load_for_serving(args.judge, args.device, args.dtype, args.policy_tokenizer)
    app = create_app(judge, config)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=args.drain_timeout
    )
    return 0
