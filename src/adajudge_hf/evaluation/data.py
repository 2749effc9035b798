"""Benchmark data by official Hub dataset name or from local files in the official formats.

Every loader returns a `datasets.Dataset` with a fixed set of columns:

- RM-Bench (`THU-KEG/RM-Bench`, its `total_dataset.json`, the per-domain `<domain>_filtered.json` files or a folder of
  them): `domain` (chat, math, code, safety-refuse or safety-response), `id`, `prompt`, `chosen` and `rejected`
  (3 responses each, in style order concise / detailed plain / detailed markdown). The per-domain files carry no
  domain field: it comes from the file name.
- JudgeBench (`ScalerLab/JudgeBench`, split `gpt` or `claude`, or the official JSONL files): `pair_id`, `source`,
  `category`, `question`, `response_A`, `response_B`, `label`.
- Preference pairs (any Hub dataset id or a .json / .jsonl / .parquet file, optionally .gz): `prompt`, `chosen`,
  `rejected`, either all strings or all lists of messages. Rows may have an explicit `prompt` (TRL's explicit-prompt
  format) or only `chosen` / `rejected` holding whole conversations or HH-RLHF transcripts
  ("\\n\\nHuman: ...\\n\\nAssistant: ..."), whose shared beginning becomes the prompt.
- RewardBench 2 (`allenai/reward-bench-2`) and RewardBench (`allenai/reward-bench`, split `filtered`): see
  `reward_bench.load_reward_bench_2` / `load_reward_bench`.

`benchmarks.load_benchmark` loads any of them by benchmark name; the file readers here serve every loader.
"""

import gzip
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import datasets
from transformers.utils import logging
from trl.data_utils import extract_prompt

from .metrics import RM_BENCH_SOURCE_DOMAINS, judgebench_category


logger = logging.get_logger(__name__)

RM_BENCH_HUB_ID = "THU-KEG/RM-Bench"
JUDGEBENCH_HUB_ID = "ScalerLab/JudgeBench"
JUDGEBENCH_SPLITS = {"gpt": "gpt-4o", "claude": "claude-3-5-sonnet"}
"""JudgeBench split -> prefix of the `response_model` of its pairs. The leaderboard uses `gpt`."""
DEFAULT_JUDGEBENCH_SPLIT = "gpt"

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".parquet", ".json.gz", ".jsonl.gz")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
Rows = list[dict]


def data_suffix(path: Path) -> str:
    """The data format suffix of `path`: `.jsonl.gz`, `.json`, ..."""
    return "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix


def is_local_data(data: str | os.PathLike) -> bool:
    """Local path or Hub dataset id? A missing path that cannot be a Hub id is reported as missing here."""
    path = Path(data)
    if path.exists():
        return True
    if _HUB_ID.fullmatch(str(data)) and data_suffix(path) not in SUPPORTED_SUFFIXES:
        return False
    raise FileNotFoundError(f"No such file or folder: {data} (nor is it a Hub dataset id like 'owner/name').")


def read_records(path: str | os.PathLike) -> Rows:
    """Rows of a .json (a list of objects), .jsonl (one object per line) or .parquet file; .gz is decompressed."""
    path = Path(path)
    suffix = data_suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"Unsupported file {path}: expected one of {', '.join(SUPPORTED_SUFFIXES)}.")
    if suffix == ".parquet":
        rows = datasets.Dataset.from_parquet(str(path)).to_list()
    else:
        with (gzip.open if suffix.endswith(".gz") else open)(path, "rt", encoding="utf-8") as file:
            text = file.read()
        if not text.strip():
            raise ValueError(f"{path} is empty.")
        rows = _parse_json_rows(text, path, json_lines=suffix.startswith(".jsonl"))
    if not rows:
        raise ValueError(f"{path} holds no rows.")
    for position, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"Row {position} of {path} is a {type(row).__name__}, not a JSON object.")
    return rows


def _parse_json_rows(text: str, path: Path, json_lines: bool) -> list:
    if not json_lines:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg != "Extra data":  # else: JSON Lines saved as .json, which the Hub accepts too
                raise ValueError(f"{path} is not valid JSON: {error}.") from None
        else:
            if not isinstance(rows, list):
                raise ValueError(
                    f"{path} holds a JSON {type(rows).__name__}; expected a list of objects, one per row."
                )
            return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"Line {number} of {path} is not valid JSON: {error}.") from None
    return rows


def load_hub_split(repo_id: str, split: str) -> Rows:
    """Rows of split `split` of Hub dataset `repo_id`; an empty split is an error."""
    rows = datasets.load_dataset(repo_id, split=split).to_list()
    if not rows:
        raise ValueError(f"Split {split!r} of {repo_id} is empty.")
    return rows


def require_fields(rows: Rows, fields: Sequence[str], source: str, what: str) -> None:
    """A ValueError naming the first row of `source` that lacks one of `fields` (which `what` need)."""
    for position, row in enumerate(rows):
        missing = [name for name in fields if name not in row]
        if missing:
            raise ValueError(
                f"Row {position} of {source} has no field(s) {', '.join(missing)}, which {what} need "
                f"({', '.join(fields)}); it has {', '.join(sorted(row)) or 'none'}. Is this the right benchmark "
                "and file?"
            )


def load_rm_bench(data: str | os.PathLike = RM_BENCH_HUB_ID, split: str = "train") -> datasets.Dataset:
    """RM-Bench prompts from the Hub (`split` applies there) or a local file or folder in the official format.

    A folder is read as its `total_dataset.json` when present, else as all its `*_filtered.json` files.
    """
    if not is_local_data(data):
        files = {str(data): load_hub_split(str(data), split)}
    elif Path(data).is_dir():
        folder = Path(data)
        paths = [folder / "total_dataset.json"] if (folder / "total_dataset.json").is_file() else []
        paths = paths or sorted(folder.glob("*_filtered.json"))
        if not paths:
            raise ValueError(
                f"{folder} holds neither total_dataset.json nor per-domain *_filtered.json files of RM-Bench."
            )
        files = {str(path): read_records(path) for path in paths}
    else:
        files = {str(data): read_records(data)}

    items = []
    for source, rows in files.items():
        require_fields(rows, ("id", "prompt", "chosen", "rejected"), source, "RM-Bench items")
        file_domain = Path(source).name.removesuffix(".json").removesuffix("_filtered")
        for position, row in enumerate(rows):
            domain = row.get("domain", file_domain)
            if domain not in RM_BENCH_SOURCE_DOMAINS:
                raise ValueError(
                    f"Cannot tell the RM-Bench domain of row {position} of {source}: it has no `domain` field and "
                    f"the file name does not say it. Name the file <domain>_filtered.json with a domain among "
                    f"{sorted(RM_BENCH_SOURCE_DOMAINS)}, as in the official repository."
                )
            for key in ("chosen", "rejected"):
                if not isinstance(row[key], list) or len(row[key]) != 3:
                    raise ValueError(
                        f"Row {position} of {source} must have 3 `{key}` responses (concise, detailed plain, "
                        "detailed markdown)."
                    )
            items.append(
                {
                    "domain": domain,
                    "id": row["id"],
                    "prompt": row["prompt"],
                    "chosen": row["chosen"],
                    "rejected": row["rejected"],
                }
            )
    return datasets.Dataset.from_list(items)


def load_judgebench(data: str | os.PathLike = JUDGEBENCH_HUB_ID, split: str | None = None) -> datasets.Dataset:
    """JudgeBench pairs: split `gpt` (the leaderboard's, the default on the Hub) or `claude`.

    Local data is a JSONL file or a folder of them (e.g. the official `data/` folder, which holds both splits);
    `split` keeps the pairs of that split's response model, by default `gpt` when the files mix several. The
    `response_model` column tells which split was read (`judgebench_split`).
    """
    if split is not None and split not in JUDGEBENCH_SPLITS:
        raise ValueError(f"Unknown JudgeBench split {split!r}; expected one of {list(JUDGEBENCH_SPLITS)}.")
    if not is_local_data(data):
        rows = load_hub_split(str(data), split or DEFAULT_JUDGEBENCH_SPLIT)
        source = f"{data} (split {split or DEFAULT_JUDGEBENCH_SPLIT})"
    else:
        paths = sorted(Path(data).glob("*.jsonl")) if Path(data).is_dir() else [Path(data)]
        if not paths:
            raise ValueError(f"{data} holds no JudgeBench .jsonl files.")
        rows = [row for path in paths for row in read_records(path)]
        source = str(data)
    fields = ("pair_id", "source", "question", "response_model", "response_A", "response_B", "label")
    require_fields(rows, fields, source, "JudgeBench pairs")
    models = sorted({row["response_model"] for row in rows})
    if split is None and len(models) > 1:
        split = DEFAULT_JUDGEBENCH_SPLIT
        logger.info(f"{source} holds the pairs of {models}; reading split {split!r} (pass `split` for another).")
    if split is not None:
        rows = [row for row in rows if row["response_model"].startswith(JUDGEBENCH_SPLITS[split])]
        if not rows:
            raise ValueError(
                f"{source} holds no pairs of split {split!r} (response model {JUDGEBENCH_SPLITS[split]}*); its response "
                f"models are {models}. Pass the split of its pairs, one of {list(JUDGEBENCH_SPLITS)}."
            )
    return datasets.Dataset.from_list(
        [
            {
                "pair_id": row["pair_id"],
                "source": row["source"],
                "category": judgebench_category(row["source"]),
                "question": row["question"],
                "response_A": row["response_A"],
                "response_B": row["response_B"],
                "label": row["label"],
                "response_model": row["response_model"],
            }
            for row in rows
        ]
    )


def judgebench_split(dataset: datasets.Dataset) -> str | None:
    """The split (`gpt` / `claude`) whose response model wrote every pair of a `load_judgebench` dataset, else None."""
    if "response_model" not in dataset.column_names:
        return None
    names = {
        name
        for model in set(dataset["response_model"])
        for name, prefix in JUDGEBENCH_SPLITS.items()
        if model.startswith(prefix)
    }
    return names.pop() if len(names) == 1 and len(dataset) else None


def parse_hh_rlhf_transcript(text: str) -> list[dict[str, str]]:
    """Split an HH-RLHF transcript "\\n\\nHuman: ...\\n\\nAssistant: ..." into chat messages."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise ValueError(
            f"Not an HH-RLHF transcript (expected turns starting with '\\n\\nHuman:' / '\\n\\nAssistant:'): "
            f"{text[:80]!r}..."
        )
    return [
        {"role": _HH_ROLES[speaker], "content": content.strip()} for speaker, content in zip(parts[1::2], parts[2::2])
    ]


def _is_messages(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _as_messages(value, role: str) -> list[dict]:
    return value if _is_messages(value) else [{"role": role, "content": value}]


def _normalize_pair(row: dict, position: int, source: str) -> dict:
    if "prompt" in row:
        pair = {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
    elif _is_messages(row["chosen"]) and _is_messages(row["rejected"]):
        pair = extract_prompt(row)
    elif isinstance(row["chosen"], str) and isinstance(row["rejected"], str):
        try:
            pair = extract_prompt(
                {
                    "chosen": parse_hh_rlhf_transcript(row["chosen"]),
                    "rejected": parse_hh_rlhf_transcript(row["rejected"]),
                }
            )
        except ValueError as error:
            raise ValueError(
                f"Row {position} of {source} has no `prompt`, so `chosen` and `rejected` must be whole conversations "
                f"(lists of messages) or HH-RLHF transcripts. {error}"
            ) from None
    else:
        raise ValueError(f"Row {position} of {source}: `chosen` and `rejected` must both be strings or message lists.")
    for key in ("chosen", "rejected"):
        if not (isinstance(pair[key], str) or _is_messages(pair[key])):
            raise ValueError(f"Row {position} of {source}: `{key}` must be a string or a list of messages.")
    return pair


def _has_content(response) -> bool:
    return bool(response.strip()) if isinstance(response, str) else any(str(m["content"]).strip() for m in response)


def load_preference_pairs(data: str | os.PathLike, split: str = "test") -> datasets.Dataset:
    """Preference pairs from a local .json / .jsonl / .parquet file or a Hub dataset (`split` applies there).

    Pairs whose chosen or rejected response is empty are dropped with a warning (HH-RLHF has a few): a reward model
    cannot score an empty response.
    """
    rows = read_records(data) if is_local_data(data) else load_hub_split(str(data), split)
    source = str(data)
    require_fields(rows, ("chosen", "rejected"), source, "preference pairs")
    pairs = [_normalize_pair(row, position, source) for position, row in enumerate(rows)]
    if any(_is_messages(pair[key]) for pair in pairs for key in ("prompt", "chosen", "rejected")):
        # One format for every row, so the columns have one type: plain strings become single turns.
        pairs = [
            {
                "prompt": _as_messages(pair["prompt"], "user") if pair["prompt"] else [],
                "chosen": _as_messages(pair["chosen"], "assistant"),
                "rejected": _as_messages(pair["rejected"], "assistant"),
            }
            for pair in pairs
        ]
    kept = [pair for pair in pairs if _has_content(pair["chosen"]) and _has_content(pair["rejected"])]
    if len(kept) < len(pairs):
        logger.warning(f"Dropped {len(pairs) - len(kept)} of {len(pairs)} pairs of {source} with an empty response.")
    if not kept:
        raise ValueError(f"No pair of {source} has two non-empty responses.")
    return datasets.Dataset.from_list(kept)
