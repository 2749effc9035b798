"""Save a trained judge in one of three forms and load any of them back with one call.

| form | files | when |
|---|---|---|
| `"adapter"` | `adapter_model.safetensors` + `adapter_config.json` (LoRA only), `judge_head.safetensors`, `config.json` | LoRA training: megabytes, backbone fetched from `base_model_name_or_path` |
| `"heads"` | `judge_head.safetensors`, `config.json` | frozen backbone: only the heads were trained |
| `"full"` | `config.json`, `model.safetensors` (LoRA merged), `configuration_adajudge.py`, `modeling_adajudge.py` | self-contained; loads with `AutoModel...(trust_remote_code=True)` without this package |

Every form opens through every door of transformers: `AutoModelForSequenceClassification.from_pretrained(folder)`,
`AutoModel`, `pipeline("text-classification", model=folder, function_to_apply="none")` and TRL's string arguments
(`GRPOTrainer(reward_funcs=folder)`, `RewardTrainer(model=folder)`) all reach
`AdaJudgeForRewardModeling.from_pretrained`, which reads the heads and adapter forms itself (the adapter through
transformers' PEFT integration, unmerged, frozen for scoring). `load_judge` is the same load, plus Hub snapshots, the
form check and the LoRA merged in:

```python
from adajudge_hf import load_judge
judge = load_judge("out/judge-adapter")  # backbone from config.base_model_name_or_path, heads, LoRA merged in
judge = load_judge("out/judge-heads")  # backbone from config.base_model_name_or_path, heads
judge = load_judge("out/judge-full", dtype="bfloat16")  # plain from_pretrained
```

The adapter and heads forms carry no remote code (no `auto_map`, no `configuration_adajudge.py`): they need this
package, and in return `AutoTokenizer.from_pretrained(folder)` in a process without it never stops at transformers'
`trust_remote_code` prompt, which any `config.json` naming remote code triggers. On the Hub, `adajudge push` points
the adapter form's `adapter_config.json` at the judge repo itself: transformers sends a repo id with an adapter to the
`base_model_name_or_path` of that file, which must be the judge, not the bare backbone.

Every folder is written to a temporary sibling and renamed into place, so a crash leaves the previous folder (or
none), never a half-written one. A folder that holds other files (a Trainer output folder or `checkpoint-N/`, with
optimizer states, logs and other checkpoints) keeps them: only the judge's files are replaced, each by a rename.
`load_judge_weights` reads the adapter and heads forms back into a model being trained (Trainer's resume).
"""

import copy
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from peft import PeftModel
from peft.utils import ModulesToSaveWrapper, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from .lora import HEAD_MODULE, merge_loaded_adapters
from .modeling import REMOTE_CODE_FILES, AdaJudgeConfig, AdaJudgeForRewardModeling
from .modeling.loading_adajudge import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    HEADS_FILE,
    check_local_checkpoint,
    folder_form,
)


SAVE_FORMS = ("adapter", "heads", "full")
JUDGE_FILE_PATTERNS = ("config.json", "model*.safetensors", "model.safetensors.index.json", ADAPTER_CONFIG_FILE,
                       ADAPTER_WEIGHTS_FILE, HEADS_FILE, *REMOTE_CODE_FILES)  # fmt: skip
"""The files that make up a judge in some save form: replaced together, and removed when another form replaces it."""


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


@contextmanager
def _judge_files_in(output_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder whose files then replace the judge's files in `output_dir`, one rename each;
    other files of `output_dir` (optimizer states, logs, other checkpoints) stay. On error nothing is replaced."""
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir.with_name(f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
        written = sorted(path for path in staging.iterdir() if path.is_file())
        for file in written:
            _fsync(file)
        for file in written:
            os.replace(file, output_dir / file.name)
        names = {file.name for file in written}
        for pattern in JUDGE_FILE_PATTERNS:  # files of the form this save replaces
            for stale in output_dir.glob(pattern):
                if stale.name not in names and stale.is_file():
                    stale.unlink()
        _fsync(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
    # No remote code (see the module docstring): `save_pretrained` would add `auto_map` and copy the config's file.
    text = json.loads(config.to_json_string(use_diff=True))
    text.pop("auto_map", None)
    (folder / "config.json").write_text(json.dumps(text, indent=2, sort_keys=True) + "\n")


def judge_backbone(judge: AdaJudgeForRewardModeling, explicit: str | None = None) -> str | None:
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
    keep_other_files: bool = False,
) -> Path:
    """Save `model` as `form` (see the module docstring) into `output_dir`, atomically; returns the folder.

    `"adapter"` needs a `PeftModel` (LoRA); `"heads"` a judge whose backbone was not trained (it is re-read from
    `base_model_name_or_path` on load); `"full"` merges any LoRA into a copy and saves a standalone checkpoint.
    `base_model_name_or_path` defaults to the backbone the judge was loaded from. `keep_other_files=True` writes into
    a folder that holds other files (a Trainer output folder): the judge's files are replaced, the others kept.
    Call on the main process only.
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

    base = judge_backbone(judge, base_model_name_or_path)
    if base is None and form != "full":
        raise ValueError(
            "The backbone this judge was built on is unknown (the model was not loaded with `from_backbone` / "
            "`from_pretrained`), so the saved folder could not be loaded again. Pass `base_model_name_or_path=` (the "
            "Hub id or folder of the backbone), or save with `form='full'`."
        )

    target = _judge_files_in(Path(output_dir)) if keep_other_files else atomic_folder(output_dir, overwrite=overwrite)
    with target as staging:
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


def load_judge_weights(model: AdaJudgeForRewardModeling | PeftModel, folder: str | os.PathLike) -> None:
    """Copy the weights of a judge folder in the adapter or heads form into `model` (a judge being trained, or its
    `PeftModel`), in place: the heads, and for the adapter form the LoRA weights of the active adapter. The backbone
    is not touched; it is the one the folder names. Resuming training relies on it."""
    folder = Path(folder)
    form = detect_judge_form(folder)
    if form == "full":
        raise ValueError(f"{folder} is a full judge; load it with `model.load_state_dict` or `load_judge`.")
    is_peft = isinstance(model, PeftModel)
    if (form == "adapter") != is_peft:
        holds = "LoRA adapters" if form == "adapter" else "no LoRA adapters"
        raise ValueError(
            f"{folder} holds {holds} (the {form} form), but the model {'has' if is_peft else 'has none'}: resume it "
            "with the same LoRA setting it was trained with."
        )
    judge, head = _unwrap(model)
    heads = load_file(folder / HEADS_FILE)
    if not isinstance(judge.judge_head, ModulesToSaveWrapper):
        head.load_state_dict(heads)
    if form == "adapter":
        state = load_file(folder / ADAPTER_WEIGHTS_FILE)
        if isinstance(judge.judge_head, ModulesToSaveWrapper):  # PEFT loads the trained copy of the heads
            prefix = next(name for name, module in model.named_modules() if module is judge.judge_head)
            state.update({f"{prefix}.{name}": tensor for name, tensor in heads.items()})
        result = set_peft_model_state_dict(model, state, adapter_name=model.active_adapter)
        if result.unexpected_keys:
            raise ValueError(
                f"{folder / ADAPTER_WEIGHTS_FILE} does not fit this model's LoRA adapters: unexpected "
                f"{sorted(result.unexpected_keys)[:5]}. Resume with the LoRA configuration it was trained with."
            )


def adapter_config_for_repo(folder: str | os.PathLike, repo_id: str) -> bytes:
    """The adapter form's `adapter_config.json` as uploaded to `repo_id`: its base model is the judge repo itself.

    Given a repo id with an `adapter_config.json`, transformers (`AutoModel...`, `pipeline`) loads the model named by
    its `base_model_name_or_path` and puts the adapter on it. Naming the bare backbone there would give a stock
    sequence-classification model of the backbone with a random score head; naming the judge repo makes them load
    the judge (backbone from `config.json`, heads, adapter). Local folders are never redirected.
    """
    adapter_config = json.loads((Path(folder) / ADAPTER_CONFIG_FILE).read_text())
    adapter_config["base_model_name_or_path"] = repo_id
    return (json.dumps(adapter_config, indent=2, sort_keys=True) + "\n").encode()


def detect_judge_form(path: str | os.PathLike) -> str:
    """The save form of a local judge folder: `"adapter"`, `"heads"` or `"full"`; a `ValueError` if it is none."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / ADAPTER_CONFIG_FILE).is_file():
        raise ValueError(
            f"{path} is a bare PEFT adapter without the judge's config.json (a LoRA checkpoint of an older "
            "adajudge-hf, where transformers would load the backbone with a random score head). Open it with "
            "`PeftModel.from_pretrained(AdaJudgeForRewardModeling.from_backbone(<backbone>, **<judge fields of the run's "
            "judge/config.json>), path)`; checkpoints written by this version are judge folders."
        )
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a saved AdaJudge judge: it has no config.json.")
    model_type = AdaJudgeConfig.get_config_dict(str(path))[0].get("model_type")
    if model_type != AdaJudgeConfig.model_type:
        raise ValueError(
            f"{path} holds a {model_type!r} model, not an AdaJudge judge. To build a judge around this backbone use "
            "`AdaJudgeForRewardModeling.from_backbone(path)`."
        )
    form = folder_form(path)
    if form is None:
        raise ValueError(
            f"{path} has no {HEADS_FILE} (and no full model.safetensors), so the judge's heads are missing. Refusing "
            "to load a judge with randomly initialised heads; re-save it with `save_judge`."
        )
    return form


def load_judge(path: str | os.PathLike, **from_pretrained_kwargs) -> AdaJudgeForRewardModeling:
    """Load a judge saved by `save_judge` in any form (detected from the files), ready to score, in eval mode.

    The load is `AdaJudgeForRewardModeling.from_pretrained` (the one loader behind the Auto classes, `pipeline` and
    TRL); `from_pretrained_kwargs` go to it (`dtype`, `device_map`, `attn_implementation`, ...), and
    `base_model_name_or_path=` overrides the backbone recorded in the config (e.g. a local copy of the Hub backbone).
    On top of it, the folder's form is checked first (clear errors for a backbone or a judge missing its heads) and
    adapters are merged into the returned model.

    `path` may also be a Hub repo id (`load_judge("org/adajudge-qwen3-8b-adapter")`): the repo is fetched with
    `snapshot_download` (`revision`, `token` and `cache_dir` apply to it; with `HF_HUB_OFFLINE=1` it comes from the
    cache), and the backbone it names is fetched by `from_pretrained` as usual.
    """
    check_local_checkpoint(str(path), "")  # a local path that does not exist: say so, not "Repo id must be ..."
    if not Path(path).is_dir():
        revision = from_pretrained_kwargs.pop("revision", None)
        hub_kwargs = {
            key: from_pretrained_kwargs[key] for key in ("token", "cache_dir") if key in from_pretrained_kwargs
        }
        path = snapshot_download(str(path), revision=revision, **hub_kwargs)
    path = Path(path)
    detect_judge_form(path)  # not a judge, or no heads file: say so before loading anything
    judge = AdaJudgeForRewardModeling.from_pretrained(path, **from_pretrained_kwargs)  # refuses missing weights
    return merge_loaded_adapters(judge).eval()


__all__ = [
    "HEADS_FILE",
    "SAVE_FORMS",
    "adapter_config_for_repo",
    "atomic_folder",
    "detect_judge_form",
    "judge_backbone",
    "load_judge",
    "load_judge_weights",
    "save_judge",
]
