"""Scored batches kept on disk, so that an interrupted scoring run (Ctrl-C, a lost node, out of memory) resumes.

`score_responses(..., progress_dir=...)` appends every scored batch to `<progress_dir>/scored-<process>.jsonl`: a
header line with the run's key, then one line per response, `[index, reward, pi, alpha]`. Each batch goes to disk
in one `write` call on a file opened for appending, so an interrupt between batches loses nothing and a crash in the
middle of a write leaves at most a torn last line, which is ignored. A rerun with the same key (same model weights,
inputs and settings) skips every batch whose responses are all on disk, so it scores only what is missing and, with
the same batches, gives the rewards an uninterrupted run gives; files written under another key are ignored and
replaced. `adajudge evaluate` removes the folder once its report is written.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..batching import ItemScore


def run_key(prompts: Sequence, responses: Sequence, **settings) -> str:
    """A digest of everything that decides the rewards: the inputs, the model's identity and the encoding settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for prompt, response in zip(prompts, responses):
        digest.update(json.dumps([prompt, response]).encode())
    return digest.hexdigest()


def _read(path: Path, key: str) -> dict[int, ItemScore] | None:
    """The scores in one progress file by response index, or None if it belongs to another run (or has no complete
    header)."""
    lines = path.read_bytes().split(b"\n")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        return None
    if not isinstance(header, dict) or header.get("key") != key:
        return None
    scores = {}
    for line in lines[1:]:
        try:
            index, reward, routing_weights, depth_weights = json.loads(line)
        except json.JSONDecodeError:  # the torn end of a write cut short by a crash, or the final empty line
            break
        scores[index] = ItemScore(reward, routing_weights, depth_weights)
    return scores


class ScoringProgress:
    """The scores kept in `folder` for the run `key`, and the file this process appends its batches to."""

    def __init__(self, folder: str | os.PathLike, key: str, process_index: int = 0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.done: dict[int, ItemScore] = {}
        for path in sorted(self.folder.glob("scored-*.jsonl")):
            self.done.update(_read(path, key) or {})
        self.path = self.folder / f"scored-{process_index}.jsonl"
        header = (json.dumps({"key": key}) + "\n").encode()
        if not self.path.is_file() or not self.path.read_bytes().startswith(header):
            self.path.write_bytes(header)  # this process's file held another run's results (or none)
        elif not self.path.read_bytes().endswith(b"\n"):
            with open(self.path, "ab") as file:  # end a torn last line, so the next batch starts on its own line
                file.write(b"\n")

    def kept(self, indices: Iterable[int]) -> list[ItemScore] | None:
        """The kept scores of a batch's responses, or None if any of them is missing (the batch is scored again)."""
        scores = [self.done.get(index) for index in indices]
        return None if any(score is None for score in scores) else scores

    def append(self, indices: Sequence[int], scores: Sequence[ItemScore]) -> None:
        """Keep a scored batch (`scores` of the responses at `indices`): one write of all its lines."""
        payload = "".join(
            json.dumps([index, score.reward, score.routing_weights, score.depth_weights]) + "\n"
            for index, score in zip(indices, scores)
        ).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
        self.done.update(zip(indices, scores))


class ScoringInterrupted(KeyboardInterrupt):
    """A KeyboardInterrupt during scoring with progress kept on disk: says how much was kept, and where."""

    def __init__(self, num_kept: int, num_total: int, folder: Path):
        self.num_kept, self.num_total, self.folder = num_kept, num_total, folder
        super().__init__(
            f"interrupted; {num_kept} of the {num_total} responses are scored and kept in {folder}: run the same "
            "command again to resume (it scores only the rest)"
        )


def remove_progress(folder: str | os.PathLike) -> None:
    """Delete the progress folder once the results it kept are in the final report."""
    shutil.rmtree(folder, ignore_errors=True)
