"""Loading AdaJudge checkpoints: file checks, Hub file resolution, the save form of a folder, the split forms.

A judge is saved in one of three forms (see `adajudge_hf.checkpoint`): "full" (`model.safetensors`), "heads"
(`judge_head.safetensors`, backbone read from `config.base_model_name_or_path`) and "adapter" (heads + a LoRA adapter).
`AdaJudgeForRewardModeling.from_pretrained` and `from_backbone` delegate to `load_pretrained` and `load_from_backbone`. This file travels with the model as
remote code, so it imports only torch and transformers (plus its siblings).
"""

import glob
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase
from transformers.modeling_utils import load_state_dict
from transformers.utils import cached_file, is_peft_available, logging

from .configuration_adajudge import AdaJudgeConfig
from .tokenization_adajudge import find_response_template


logger = logging.get_logger(__name__)


HEADS_FILE = "judge_head.safetensors"
"""The heads of a judge saved without its backbone (the heads and adapter forms)."""
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
FULL_WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
"""`from_pretrained` keyword arguments that say where the judge's own files come from."""


def judge_form(has_file: Callable[[str], bool]) -> str | None:
    """The save form of a judge from which files it has: "full", "adapter", "heads", or None when it holds no judge
    weights at all. Full weights win: they are what `from_pretrained` loads when present."""
    if any(has_file(name) for name in FULL_WEIGHTS_FILES):
        return "full"
    if not has_file(HEADS_FILE):
        return None
    return "adapter" if has_file(ADAPTER_CONFIG_FILE) else "heads"


def folder_form(folder: str | os.PathLike) -> str | None:
    """`judge_form` of a local folder."""
    return judge_form(lambda name: os.path.isfile(os.path.join(folder, name)))


def _looks_like_local_path(name: str) -> bool:
    """Whether `name` can only mean a local path: absolute, relative with ./ ../ ~, more than one '/', or inside an
    existing folder. `org/name` stays a Hub repo id."""
    parent = os.path.dirname(name.rstrip("/"))
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.rstrip("/").count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or (bool(parent) and os.path.isdir(parent))
    )


def check_local_checkpoint(source: str, subfolder: str = "") -> None:
    """Clear errors before loading: a local path that does not exist, pickle-only folders, broken safetensors."""
    if not os.path.isdir(source):
        if _looks_like_local_path(source) and not os.path.exists(source):
            raise FileNotFoundError(
                f"{source} does not exist: there is no such local folder. Check the path (a judge is the folder "
                "that `save_judge` or `adajudge train` wrote), or pass a Hub repo id of the form 'org/name'."
            )
        return
    folder = os.path.join(source, subfolder)
    pickles = glob.glob(os.path.join(folder, "*.bin")) + glob.glob(os.path.join(folder, "*.pt"))
    safetensors_files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if pickles and not safetensors_files:
        raise ValueError(
            f"{source} holds only pickle checkpoints ({', '.join(sorted(map(os.path.basename, pickles)))}). "
            "AdaJudge loads safetensors only, because unpickling can run arbitrary code. Convert a checkpoint "
            "you trust with `model.save_pretrained(path)` (safetensors is the default) and load that."
        )
    for path in safetensors_files:
        check_safetensors(path)


def check_safetensors(path: str) -> None:
    """Read the header of a safetensors file: a truncated or empty file raises a ValueError that names it."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes): the save or download was cut off. Save or download it again.")
    try:
        load_state_dict(path, map_location="meta")  # the header only; it must cover the whole file
    except Exception as error:  # safetensors raises its own SafetensorError
        raise ValueError(
            f"{path} is truncated or corrupt ({error}): the save or download was cut off. Save or download it again."
        ) from error


def resolve_file(source: str, filename: str, hub_kwargs: dict) -> str | None:
    """Local path of `filename` in a folder or Hub repo (downloaded to the cache), or None when it has none."""
    if os.path.isdir(source):
        path = os.path.join(source, hub_kwargs.get("subfolder", ""), filename)
        return path if os.path.isfile(path) else None
    return cached_file(
        source,
        filename,
        **hub_kwargs,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def refuse_non_finite(named_tensors, where: str) -> None:
    """Raise a ValueError naming the NaN / Inf tensors and where they were read from."""
    bad = [
        name
        for name, tensor in named_tensors
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all()
    ]
    if bad:
        raise ValueError(
            f"{where} has NaN or Inf values in {len(bad)} tensor(s): {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}. It was probably saved after a diverged training step; load an earlier "
            "checkpoint."
        )


_loading_backbone_only: ContextVar[bool] = ContextVar("adajudge_loading_backbone_only", default=False)


@contextmanager
def backbone_only_loading() -> Iterator[None]:
    """Within the block, judges built by `from_pretrained` load a backbone checkpoint quietly: the heads are expected
    to be missing (they are fresh or come from a heads file next) and a causal-LM / seq-cls head to be unused.

    Scoped to the current thread or task (a context variable): a concurrent load of a full checkpoint elsewhere still
    refuses missing weights."""
    token = _loading_backbone_only.set(True)
    try:
        yield
    finally:
        _loading_backbone_only.reset(token)


def keys_to_ignore_on_load() -> tuple[list[str] | None, list[str] | None]:
    """(missing, unexpected) key patterns a judge being built now ignores when its weights are loaded."""
    if _loading_backbone_only.get():
        return [r"^judge_head\."], [r"^lm_head\.", r"^score\."]
    return None, None


def load_pretrained(cls, load: Callable, source, *model_args, **kwargs):
    """`cls.from_pretrained` for every save form; `load` is `PreTrainedModel.from_pretrained` bound to `cls`."""
    source = str(source)
    base_override = kwargs.pop("base_model_name_or_path", None)
    hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
    check_local_checkpoint(source, hub_kwargs.get("subfolder", ""))
    form = judge_form(lambda name: resolve_file(source, name, hub_kwargs) is not None)
    if form in ("heads", "adapter"):
        return _from_split_checkpoint(cls, load, source, form, base_override, hub_kwargs, *model_args, **kwargs)
    kwargs.setdefault("use_safetensors", True)
    output_loading_info = kwargs.pop("output_loading_info", False)
    model, info = load(source, *model_args, output_loading_info=True, **kwargs)
    # transformers only warns about missing weights and fills them at random: a judge would score garbage.
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"{source} is missing {len(missing)} weight(s) of the judge, e.g. {missing[:5]}; a judge with random "
            "weights in their place would give meaningless rewards. The checkpoint is incomplete or belongs to "
            "another architecture: save it again with `save_judge` (or `adajudge train`), or to build a new "
            "judge around a backbone use `AdaJudgeForRewardModeling.from_backbone`."
        )
    refuse_non_finite(model.state_dict().items(), f"{source} (model.safetensors)")
    return (model, info) if output_loading_info else model


def _from_split_checkpoint(cls, load, source, form, base_override, hub_kwargs, *model_args, **kwargs):
    """The heads and adapter forms: backbone from its own folder or repo, then the heads, then any LoRA adapter."""
    config = kwargs.pop("config", None)
    if not isinstance(config, PreTrainedConfig):
        config = cls.config_class.from_pretrained(source, **hub_kwargs)
        # Config fields given as keyword arguments (e.g. TRL's `num_labels=1`) update it, as in `from_pretrained`.
        for key in [key for key in kwargs if hasattr(config, key) and key not in ("dtype", "torch_dtype")]:
            setattr(config, key, kwargs.pop(key))
    base = base_override or getattr(config, "base_model_name_or_path", None)
    if not base:
        raise ValueError(
            f"{source}/config.json does not record the backbone (`base_model_name_or_path`); pass "
            "`base_model_name_or_path=` (the Hub id or folder of the backbone)."
        )
    adapter_kwargs = {**hub_kwargs, **(kwargs.pop("adapter_kwargs", None) or {})}
    adapter_kwargs.pop("_adapter_model_path", None)  # set by the Auto classes: it is `source` itself
    output_loading_info = kwargs.pop("output_loading_info", False)
    for key in ("revision", "subfolder"):  # they name a state of the judge's repo, not of the backbone's
        kwargs.pop(key, None)
    kwargs.setdefault("use_safetensors", True)
    check_local_checkpoint(str(base))
    with backbone_only_loading():
        model, info = load(base, *model_args, config=config, output_loading_info=True, **kwargs)
    if info["missing_keys"]:  # the heads are ignored here (they come next); the backbone must be whole
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"The backbone {base} is missing {len(missing)} weight(s) this judge needs, e.g. {missing[:5]}. "
            f"Point `base_model_name_or_path=` at the backbone {source} was trained on."
        )
    model.judge_head.to(torch.float32)  # fresh heads are created in the load dtype; the file's values replace them
    model.config.base_model_name_or_path = str(base)
    if resolve_file(source, "tokenizer_config.json", hub_kwargs):  # tools (TRL) load the tokenizer from here
        model.config._name_or_path = model.name_or_path = source  # else from the backbone, as it stays
    refuse_non_finite(model.model.named_parameters(), f"the backbone {base}")

    heads_file = resolve_file(source, HEADS_FILE, hub_kwargs)
    check_safetensors(heads_file)
    heads = load_state_dict(heads_file)
    refuse_non_finite(heads.items(), heads_file)
    missing, unexpected = model.judge_head.load_state_dict(heads, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{heads_file} does not fit the judge described by its config.json: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. The heads file and config.json must come from the same `save_judge` call."
        )

    if form == "adapter":
        if not is_peft_available():
            raise ValueError(f"{source} holds a LoRA adapter ({ADAPTER_CONFIG_FILE}); install `peft` to load it.")
        adapter_file = resolve_file(source, ADAPTER_WEIGHTS_FILE, hub_kwargs)
        if adapter_file is None:
            raise ValueError(f"{source} has an {ADAPTER_CONFIG_FILE} but no {ADAPTER_WEIGHTS_FILE}.")
        check_safetensors(adapter_file)
        adapter_info = model.load_adapter(source, adapter_kwargs=adapter_kwargs)
        if adapter_info.missing_keys or adapter_info.unexpected_keys:
            raise ValueError(
                f"{adapter_file} does not fit this judge: missing {sorted(adapter_info.missing_keys)[:5]}, "
                f"unexpected {sorted(adapter_info.unexpected_keys)[:5]}. Load it with the backbone it was "
                "trained on."
            )
        adapters = ((name, tensor) for name, tensor in model.named_parameters() if "lora_" in name)
        refuse_non_finite(adapters, adapter_file)
    model.eval()
    if output_loading_info:
        return model, {
            "missing_keys": set(),
            "unexpected_keys": set(info["unexpected_keys"]),
            "mismatched_keys": set(info["mismatched_keys"]),
            "error_msgs": list(info["error_msgs"]),
        }
    return model


def load_from_backbone(cls, backbone_name_or_path, tokenizer: PreTrainedTokenizerBase | None = None, **kwargs):
    """`cls.from_backbone`: a judge around a pretrained backbone, backbone weights loaded, heads fresh."""
    # AdaJudge's own fields only: inherited ones such as `dtype` belong to `from_pretrained`.
    config_fields = AdaJudgeConfig.__annotations__.keys() - {"text_config"}
    config_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in config_fields}
    hub_kwargs = {key: kwargs[key] for key in ("revision", "token", "cache_dir", "local_files_only") if key in kwargs}
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(backbone_name_or_path, **hub_kwargs)
        except (OSError, ValueError):
            logger.warning(f"No tokenizer found at {backbone_name_or_path}; pass `tokenizer=` to set the pad token.")
    if tokenizer is not None:
        config_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        if tokenizer.chat_template is not None and "response_template" not in config_kwargs:
            config_kwargs["response_template"] = find_response_template(tokenizer)
    text_config = AutoConfig.from_pretrained(backbone_name_or_path, **hub_kwargs)
    config = AdaJudgeConfig(text_config=text_config, **config_kwargs)
    with backbone_only_loading():
        model = cls.from_pretrained(backbone_name_or_path, config=config, **kwargs)
    model.config.text_config.pad_token_id = config.pad_token_id
    # Fresh heads are created in the load dtype; `_keep_in_fp32_modules_strict` only covers loaded tensors.
    model.judge_head.to(torch.float32)
    return model


__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "FULL_WEIGHTS_FILES",
    "HEADS_FILE",
    "backbone_only_loading",
    "check_local_checkpoint",
    "folder_form",
    "judge_form",
]
