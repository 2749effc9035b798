"""Cut the benchmark slices in `tests/data/` from the full official files, so the test suite runs on any clone.

    python scripts/make_test_fixtures.py ../shared/benchmarks

Input: the project workspace's `shared/benchmarks` folder (byte-identical copies of the official files, see its
README). Output, in the official layouts and formats, every kept item unchanged and in its original order:

- `tests/data/rm-bench/<domain>_filtered.json`: the 3 shortest items of each RM-Bench domain file, plus, in chat and
  code, the shortest item whose `id` occurs in both (the official ids collide across domains).
- `tests/data/judgebench/dataset=judgebench,response_model=<model>.jsonl`: the 3 shortest pairs of each category, for
  both response models (splits `gpt` and `claude`); lines copied byte for byte.
- `tests/data/hh-rlhf/harmless-base_test.jsonl.gz`: the first 40 lines of HH-RLHF harmless-base test, then the first
  line with an empty response (line 87), which loaders must drop. gzipped without a timestamp.

A rerun writes identical bytes.
"""

import argparse
import gzip
import json
from pathlib import Path


FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "data"
RM_BENCH_DOMAINS = ("chat", "code", "safety-refuse", "safety-response")
JUDGEBENCH_MODELS = ("gpt-4o-2024-05-13", "claude-3-5-sonnet-20240620")
PER_GROUP = 3
HH_RLHF_LINES = 40


def _size(item) -> int:
    return len(json.dumps(item, ensure_ascii=False))


def _shortest(rows: list, count: int, key=_size) -> set[int]:
    return set(sorted(range(len(rows)), key=lambda index: key(rows[index]))[:count])


def rm_bench(source: Path, output: Path) -> None:
    files = {domain: json.loads((source / f"{domain}_filtered.json").read_text()) for domain in RM_BENCH_DOMAINS}
    shared_ids = {item["id"] for item in files["chat"]} & {item["id"] for item in files["code"]}
    pair_size = {
        i: sum(_size(item) for d in ("chat", "code") for item in files[d] if item["id"] == i) for i in shared_ids
    }
    colliding = min(shared_ids, key=lambda i: (pair_size[i], i))
    output.mkdir(parents=True, exist_ok=True)
    for domain, items in files.items():
        keep = _shortest(items, PER_GROUP)
        if domain in ("chat", "code"):
            keep |= {index for index, item in enumerate(items) if item["id"] == colliding}
        kept = [item for index, item in enumerate(items) if index in keep]
        (output / f"{domain}_filtered.json").write_text(json.dumps(kept, indent=4, ensure_ascii=False) + "\n")


def judgebench(source: Path, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    for model in JUDGEBENCH_MODELS:
        lines = (source / f"judgebench_{model}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        categories: dict[str, list[int]] = {}
        for index, line in enumerate(lines):
            source_name = json.loads(line)["source"]
            category = "mmlu-pro" if source_name.startswith("mmlu-pro") else source_name
            categories.setdefault(category, []).append(index)
        keep = set()
        for indices in categories.values():
            keep |= {indices[i] for i in _shortest([lines[i] for i in indices], PER_GROUP, key=len)}
        kept = "".join(line for index, line in enumerate(lines) if index in keep)
        (output / f"dataset=judgebench,response_model={model}.jsonl").write_text(kept, encoding="utf-8")


def hh_rlhf(source: Path, output: Path) -> None:
    with gzip.open(source / "harmless-base_test.jsonl.gz", "rt", encoding="utf-8") as stream:
        lines = stream.read().splitlines(keepends=True)

    def has_empty_response(line: str) -> bool:
        row = json.loads(line)
        return any(row[key].rstrip().endswith("Assistant:") for key in ("chosen", "rejected"))

    first_empty = next(line for line in lines[HH_RLHF_LINES:] if has_empty_response(line))
    payload = "".join(lines[:HH_RLHF_LINES] + [first_empty]).encode("utf-8")
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "harmless-base_test.jsonl.gz", "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
            stream.write(payload)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the workspace's shared/benchmarks folder")
    parser.add_argument("--output", type=Path, default=FIXTURES, help=f"default: {FIXTURES}")
    args = parser.parse_args(argv)
    rm_bench(args.source / "rm-bench", args.output / "rm-bench")
    judgebench(args.source / "judgebench", args.output / "judgebench")
    hh_rlhf(args.source / "hh-rlhf", args.output / "hh-rlhf")
    for path in sorted(args.output.glob("*/*")):
        if path.parent.name in ("rm-bench", "judgebench", "hh-rlhf"):
            print(f"{path.relative_to(args.output)}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
