"""Regenerate `src/adajudge_hf/data/hh_rlhf_harmless.jsonl.gz`, the preference pairs shipped inside the package.

Input: `harmless-base/test.jsonl.gz` of https://github.com/anthropics/hh-rlhf (MIT), whose `chosen` / `rejected`
fields are whole "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts. Output: TRL's conversational explicit-prompt format,
`{"prompt": [messages...], "chosen": [assistant message], "rejected": [assistant message]}`, in the input's order,
gzipped without a timestamp so that a rerun is byte-identical.

    python scripts/make_embedded_data.py path/to/hh-rlhf/harmless-base/test.jsonl.gz

Rows are dropped, and counted, when a transcript's turns do not alternate user / assistant starting with the user
(some chat templates refuse such conversations), when the final turn is not the assistant's, when chosen and rejected
do not share the prompt, or when a response is empty or both responses are identical.
"""

import argparse
import collections
import gzip
import hashlib
import json
import re
from pathlib import Path


OUTPUT = Path(__file__).resolve().parents[1] / "src" / "adajudge_hf" / "data" / "hh_rlhf_harmless.jsonl.gz"
# A turn starts at a blank line followed by the speaker; "Human:" inside a turn (no blank line before it) is text.
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_transcript(transcript: str) -> list[dict[str, str]] | None:
    """Split an HH-RLHF transcript into chat messages; `None` when it is not a well-formed user-first dialogue."""
    pieces = _TURN.split(transcript)
    if pieces[0].strip():
        return None
    messages = [
        {"role": _ROLES[speaker], "content": text.strip()} for speaker, text in zip(pieces[1::2], pieces[2::2])
    ]
    alternating = all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(messages))
    return messages if messages and alternating else None


def convert_pair(row: dict[str, str]) -> tuple[dict | None, str]:
    """Convert one HH-RLHF row; returns `(example, "kept")` or `(None, reason it was dropped)`."""
    chosen, rejected = parse_transcript(row["chosen"]), parse_transcript(row["rejected"])
    if chosen is None or rejected is None:
        return None, "turns do not alternate user/assistant"
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return None, "final turn is not the assistant's"
    if chosen[:-1] != rejected[:-1]:
        return None, "chosen and rejected prompts differ"
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        return None, "empty response"
    if chosen[-1]["content"] == rejected[-1]["content"]:
        return None, "identical responses"
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}, "kept"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="hh-rlhf harmless-base/test.jsonl.gz")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT}")
    args = parser.parse_args(argv)

    with gzip.open(args.source, "rt", encoding="utf-8") as stream:
        rows = [json.loads(line) for line in stream if line.strip()]
    counts, examples = collections.Counter(), []
    for row in rows:
        example, outcome = convert_pair(row)
        counts[outcome] += 1
        if example is not None:
            examples.append(example)

    payload = "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in examples).encode("utf-8")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
        stream.write(payload)

    print(f"source  {args.source}  sha256 {hashlib.sha256(args.source.read_bytes()).hexdigest()}  rows {len(rows)}")
    for outcome, count in counts.most_common():
        print(f"  {outcome:<40} {count}")
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    print(f"output  {args.output}  sha256 {digest}  pairs {len(examples)}  bytes {args.output.stat().st_size}")


if __name__ == "__main__":
    main()
