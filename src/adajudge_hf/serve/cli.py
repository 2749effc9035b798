"""`adajudge serve JUDGE`: serve a judge to RL trainers over HTTP (OpenRLHF, slime, verl, TRL).

adajudge serve outputs/demo/judge --port 5000
# OpenRLHF: --reward.remote_url http://127.0.0.1:5000/get_reward
# several GPUs: one server per GPU, `--device cuda:N --port 500N`, and a comma-separated list of URLs
"""

import argparse
import logging

import torch
import uvicorn
from transformers import AutoTokenizer

from ..checkpoint import detect_judge_form, load_judge
from ..cli import accept_underscore_flags
from .app import LoadedJudge, ServeConfig, create_app
from .batcher import DEFAULT_MAX_PADDING


DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adajudge serve", description=__doc__.split("\n")[0])
    parser.add_argument("judge", help="judge folder in any save form (full, adapter + heads, heads) or Hub repo id")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda:0 when available)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="weights dtype (default: float32 on CPU, the checkpoint's on GPU)",
    )
    parser.add_argument("--max-batch-tokens", type=int, default=8192, help="padded tokens per forward pass")
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
    parser.add_argument("--max-queue", type=int, default=4096, help="queued items beyond which requests get 503")
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
        help="tokenizer (folder or repo id) whose chat template rendered the queries, when it differs from the "
        "judge's: the conversation is recovered from the text and re-rendered with the judge's template",
    )
    parser.add_argument("--no-packing", action="store_true", help="score each item in its own row")
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="seconds SIGTERM waits for in-flight requests"
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return accept_underscore_flags(parser)


def load_for_serving(
    judge: str, device: str | None = None, dtype: str | None = None, policy_tokenizer: str | None = None
) -> LoadedJudge:
    """Load `judge` (any save form, local or Hub) with its tokenizer onto `device`."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[dtype or ("float32" if device.type == "cpu" else "auto")]
    model = load_judge(judge, dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)  # the judge's folder, else its backbone's
    policy = AutoTokenizer.from_pretrained(policy_tokenizer) if policy_tokenizer else None
    try:
        form = detect_judge_form(judge)
    except ValueError:
        form = "hub"
    return LoadedJudge(
        model, tokenizer, policy, info={"name": str(judge), "form": form, "policy_tokenizer": policy_tokenizer}
    )


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
    )
    if config.max_batch_tokens < 1 or config.max_queue < 1 or config.max_wait_ms < 0:
        raise ValueError("--max-batch-tokens and --max-queue must be >= 1 and --max-wait-ms >= 0.")
    if not 0 <= config.max_padding < 1:
        raise ValueError(f"--max-padding must be in [0, 1) (a fraction of a pass's tokens), got {config.max_padding}.")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    judge = load_for_serving(args.judge, args.device, args.dtype, args.policy_tokenizer)
    app = create_app(judge, config)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=args.drain_timeout
    )
    return 0
