"""Save a trained judge in one of three forms and load any of them back with one call.

| form | files | when |
|---|---|---|
| `"adapter"` | `adapter_model.safetensors` + `adapter_config.json` (LoRA only), `judge_head.safetensors`, `config.json` | LoRA training: megabytes, backbone fetched from `base_model_name_or_path` |
| `"heads"` | `judge_head.safetensors`, `config.json` | frozen backbone: only the heads were trained |
| `"full"` | `config.json`, `model.safetensors` (LoRA merged), `configuration_adajudge.py`, `modeling_adajudge.py` | self-contained; loads with `AutoModel...(trust_remote_code=True)` without this package |

One-liners (each returns an `AdaJudgeForRewardModeling` in eval mode with the rewards the judge had when saved):

```python
from adajudge_hf import load_judge
judge = load_judge("out/judge-adapter")  # backbone from config.base_model_name_or_path, heads, LoRA merged in
judge = load_judge("out/judge-heads")  # backbone from config.base_model_name_or_path, heads
judge = load_judge("out/judge-full", dtype="bfloat16")  # plain from_pretrained
```

Every folder is written to a temporary sibling and renamed into place, so a crash leaves the previous folder (or
none), never a half-written one.
"""

import copy
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from peft import PeftModel
from peft.utils import ModulesToSaveWrapper, get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from .lora import HEAD_MODULE
from .modeling import AdaJudgeConfig, AdaJudgeForRewardModeling


HEADS_FILE = "judge_head.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
FULL_WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
SAVE_FORMS = ("adapter", "heads", "full")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_folder(output_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `output_dir` only once the block has completed.

    An existing non-empty `output_dir` raises `FileExistsError` unless `overwrite=True`; it is then moved aside and
    removed after the new folder is in place. On error the temporary folder is removed and `output_dir` is untouched.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"{output_dir} exists and is not a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass `overwrite=True` to replace it.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.with_name(f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                _fsync(file)
        if output_dir.exists():
            retired = output_dir.with_name(f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(output_dir, retired)
            os.replace(staging, output_dir)
            shutil.rmtree(retired)
        else:
            os.replace(staging, output_dir)
        _fsync(output_dir.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _unwrap(model: AdaJudgeForRewardModeling | PeftModel) -> tuple[AdaJudgeForRewardModeling, torch.nn.Module]:
    """(the judge inside any PEFT wrapper, its trained heads module)."""
    judge = model.get_base_model() if isinstance(model, PeftModel) else model
    if not isinstance(judge, AdaJudgeForRewardModeling):
        raise TypeError(f"Expected an AdaJudgeForRewardModeling (or a PeftModel of one), got {type(judge).__name__}.")
    head = judge.judge_head
    if isinstance(head, ModulesToSaveWrapper):  # LoRA with modules_to_save: the trained copy of the heads
        head = head.modules_to_save[model.active_adapter]
    return judge, head


def _save_heads(head: torch.nn.Module, path: Path) -> None:
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in head.state_dict().items()}
    save_file(state, path, metadata={"format": "pt"})


def _save_config(judge: AdaJudgeForRewardModeling, folder: Path, base_model_name_or_path: str, form: str) -> None:
    config = copy.deepcopy(judge.config)
    config.base_model_name_or_path = base_model_name_or_path
    config.architectures = [type(judge).__name__]
    if form != "full":  # these folders carry no modeling file: `load_judge` (the package) loads them, not remote code
        config.auto_map = None
    config.save_pretrained(folder)


def _base_model_name_or_path(judge: AdaJudgeForRewardModeling, explicit: str | None) -> str | None:
    """The backbone the judge was built on: `explicit`, else recorded in its config, else where it was loaded from."""
    base = explicit or getattr(judge.config, "base_model_name_or_path", None) or judge.config.name_or_path
    if not base:
        return None
    return str(Path(base).resolve()) if Path(base).is_dir() else str(base)


def save_judge(
    model: AdaJudgeForRewardModeling | PeftModel,
    output_dir: str | os.PathLike,
    form: str = "adapter",
    tokenizer: PreTrainedTokenizerBase | None = None,
    base_model_name_or_path: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Save `model` as `form` (see the module docstring) into `output_dir`, atomically; returns the folder.

    `"adapter"` needs a `PeftModel` (LoRA); `"heads"` a judge whose backbone was not trained (it is re-read from
    `base_model_name_or_path` on load); `"full"` merges any LoRA into a copy and saves a standalone checkpoint.
    `base_model_name_or_path` defaults to the backbone the judge was loaded from. Call on the main process only.
    """
    if form not in SAVE_FORMS:
        raise ValueError(f"`form` must be one of {SAVE_FORMS}, got {form!r}.")
    judge, head = _unwrap(model)
    is_peft = isinstance(model, PeftModel)
    if form == "adapter" and not is_peft:
        raise ValueError(
            "form='adapter' saves LoRA adapters, but the model has none. Use form='heads' for a frozen backbone or "
            "form='full' for a fully fine-tuned one."
        )
    if form == "heads" and is_peft:
        raise ValueError(
            "form='heads' would drop the trained LoRA adapters of this model. Use form='adapter' (adapters + heads) "
            "or form='full' (merged)."
        )

    base = _base_model_name_or_path(judge, base_model_name_or_path)
    if base is None and form != "full":
        raise ValueError(
            "The backbone this judge was built on is unknown (the model was not loaded with `from_backbone` / "
            "`from_pretrained`), so the saved folder could not be loaded again. Pass `base_model_name_or_path=` (the "
            "Hub id or folder of the backbone), or save with `form='full'`."
        )

    with atomic_folder(output_dir, overwrite=overwrite) as staging:
        if form == "full":
            merged = copy.deepcopy(model).merge_and_unload() if is_peft else judge
            if base is not None:  # for model cards; the folder itself needs no backbone
                merged.config.base_model_name_or_path = base
            merged.save_pretrained(staging)
        else:
            _save_heads(head, staging / HEADS_FILE)
            _save_config(judge, staging, base, form)
            if form == "adapter":
                adapter_name = model.active_adapter
                state = get_peft_model_state_dict(model, adapter_name=adapter_name)
                lora_state = {
                    name: tensor.detach().contiguous().cpu()
                    for name, tensor in state.items()
                    if f".{HEAD_MODULE}." not in f".{name}"
                }
                save_file(lora_state, staging / ADAPTER_WEIGHTS_FILE, metadata={"format": "pt"})
                adapter_config = copy.deepcopy(model.peft_config[adapter_name])
                adapter_config.modules_to_save = None  # the heads live in HEADS_FILE
                adapter_config.base_model_name_or_path = base
                adapter_config.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return Path(output_dir)


def detect_judge_form(path: str | os.PathLike) -> str:
    """The save form of a local judge folder: `"adapter"`, `"heads"` or `"full"`; a `ValueError` if it is none."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a saved AdaJudge judge: it has no config.json.")
    model_type = AdaJudgeConfig.get_config_dict(str(path))[0].get("model_type")
    if model_type != AdaJudgeConfig.model_type:
        raise ValueError(
            f"{path} holds a {model_type!r} model, not an AdaJudge judge. To build a judge around this backbone use "
            "`AdaJudgeForRewardModeling.from_backbone(path)`."
        )
    if (path / ADAPTER_CONFIG_FILE).is_file():
        form = "adapter"
    elif any((path / name).is_file() for name in FULL_WEIGHTS_FILES):
        return "full"
    else:
        form = "heads"
    if not (path / HEADS_FILE).is_file():
        raise ValueError(
            f"{path} has no {HEADS_FILE} (and no full model.safetensors), so the judge's heads are missing. Refusing "
            "to load a judge with randomly initialised heads; re-save it with `save_judge`."
        )
    return form


def _load_heads(judge: AdaJudgeForRewardModeling, path: Path) -> None:
    state = load_file(path)
    non_finite = [name for name, tensor in state.items() if not torch.isfinite(tensor).all()]
    if non_finite:
        raise ValueError(f"{path} has NaN or Inf values in {', '.join(non_finite[:5])}; load an earlier checkpoint.")
    missing, unexpected = judge.judge_head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the judge described by its config.json: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. The heads file and config.json must come from the same `save_judge` call."
        )


def load_judge(path: str | os.PathLike, **from_pretrained_kwargs) -> AdaJudgeForRewardModeling:
    """Load a judge saved by `save_judge` in any form (detected from the files), ready to score, in eval mode.

    `from_pretrained_kwargs` go to `from_pretrained` of the full checkpoint or of the backbone (`dtype`,
    `device_map`, `attn_implementation`, ...); `base_model_name_or_path=` overrides the backbone recorded in the
    config (e.g. a local copy of the Hub backbone). Adapters are merged into the returned model.

    `path` may also be a Hub repo id (`load_judge("org/adajudge-qwen3-8b-adapter")`): the repo is fetched with
    `snapshot_download` (`revision`, `token` and `cache_dir` apply to it; with `HF_HUB_OFFLINE=1` it comes from the
    cache), and the backbone it names is fetched by `from_pretrained` as usual.
    """
    base_override = from_pretrained_kwargs.pop("base_model_name_or_path", None)
    if not Path(path).is_dir():
        revision = from_pretrained_kwargs.pop("revision", None)
        hub_kwargs = {
            key: from_pretrained_kwargs[key] for key in ("token", "cache_dir") if key in from_pretrained_kwargs
        }
        path = snapshot_download(str(path), revision=revision, **hub_kwargs)
    path = Path(path)
    form = detect_judge_form(path)
    if form == "full":
        judge, info = AdaJudgeForRewardModeling.from_pretrained(
            path, output_loading_info=True, **from_pretrained_kwargs
        )
        if info["missing_keys"]:
            raise ValueError(
                f"{path} lacks weights for {sorted(info['missing_keys'])[:5]}; refusing to use random initial values."
            )
        return judge.eval()

    config = AdaJudgeConfig.from_pretrained(path)
    base = base_override or getattr(config, "base_model_name_or_path", None)
    if not base:
        raise ValueError(
            f"{path}/config.json does not record the backbone (`base_model_name_or_path`); pass "
            "`base_model_name_or_path=` to `load_judge`."
        )
    with AdaJudgeForRewardModeling.backbone_only_loading():
        judge = AdaJudgeForRewardModeling.from_pretrained(base, config=config, **from_pretrained_kwargs)
    judge.config.base_model_name_or_path = base
    _load_heads(judge, path / HEADS_FILE)
    if form == "adapter":
        judge = PeftModel.from_pretrained(judge, path).merge_and_unload()
    return judge.eval()


__all__ = ["HEADS_FILE", "SAVE_FORMS", "atomic_folder", "detect_judge_form", "load_judge", "save_judge"]
