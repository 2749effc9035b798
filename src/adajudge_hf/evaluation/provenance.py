"""Which judge an evaluation scored: its name, save form and a fingerprint of its weights, recorded in `metrics.json`
(`"judge"`) so that `adajudge push --eval-dir` can refuse numbers that another checkpoint produced.

The fingerprint is the sha256 of the `sha256sum`-style listing ("<sha256>  <file name>" per line, sorted by name) of
the `*.safetensors` files of the judge's folder: every weight of the full form, the LoRA adapters and heads of the
adapter form, the heads of the heads form (whose backbone is named by `base_model`). A file's sha256 is what the Hub
records as its LFS oid and what huggingface_hub computes to upload it, so a push checks the fingerprint without reading
the weights a second time.
"""

import hashlib
import json
import os
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from huggingface_hub.utils.sha import sha_fileobj

from ..checkpoint import detect_judge_form
from ..modeling import AdaJudgeConfig


WEIGHTS_SUFFIX = ".safetensors"


def weight_file_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """{file name: sha256 hex} of the `*.safetensors` files directly in `folder` (one read of each file)."""
    hashes = {}
    for path in sorted(Path(folder).glob(f"*{WEIGHTS_SUFFIX}")):
        with open(path, "rb") as file:
            hashes[path.name] = sha_fileobj(file).hex()
    return hashes


def weights_fingerprint(file_hashes: dict[str, str]) -> str | None:
    """The fingerprint of a folder from its `weight_file_hashes`; None when it has no safetensors weights."""
    if not file_hashes:
        return None
    listing = "".join(f"{digest}  {name}\n" for name, digest in sorted(file_hashes.items()))
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


def _local_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The folder holding a model's files: the path itself, or the cached snapshot of a Hub repo id (None if absent)."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    cached = try_to_load_from_cache(str(name_or_path), "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def judge_identity(name_or_path: str | os.PathLike) -> dict:
    """The `"judge"` entry of `metrics.json` for a model loaded from a folder or Hub repo id.

    `form` is the AdaJudge save form ("full", "adapter", "heads"), or None for another reward model (`model_type`
    says which); `base_model` is the backbone that the adapter and heads forms load their weights onto.
    """
    folder = _local_folder(name_or_path)
    identity = {"name_or_path": str(name_or_path), "form": None, "model_type": None, "base_model": None}
    if folder is not None and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        identity["model_type"] = config.get("model_type")
        if identity["model_type"] == AdaJudgeConfig.model_type:
            identity["form"] = detect_judge_form(folder)
            if identity["form"] != "full":
                identity["base_model"] = config.get("base_model_name_or_path")
    hashes = weight_file_hashes(folder) if folder is not None else {}
    return {**identity, "fingerprint": weights_fingerprint(hashes), "weight_files": hashes}


__all__ = ["judge_identity", "weight_file_hashes", "weights_fingerprint"]
