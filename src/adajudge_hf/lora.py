"""LoRA for AdaJudge: adapters on the backbone's projections only, the judge's heads trained in full and saved.

PEFT has no default `target_modules` for the custom `adajudge` model type, `"all-linear"` would also match the head's
linear layers, and heads outside `modules_to_save` are silently neither trained nor saved. `adajudge_lora_config`
fixes all three: `LoraConfig(r=16)` just works. `merge_loaded_adapters` folds an adapter that transformers loaded
(`from_pretrained` of an adapter folder) into the weights, as `PeftModel.merge_and_unload` does for a `PeftModel`.
"""

import copy

from peft import LoraConfig, TaskType
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import INCLUDE_LINEAR_LAYERS_SHORTHAND
from torch import nn


HEAD_MODULE = "judge_head"
"""The one submodule that holds every AdaJudge parameter outside the backbone."""
BACKBONE_TARGET_MODULES = r"^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj$"
"""Default LoRA targets: every attention and MLP projection of the backbone's decoder layers (Llama, Qwen, Phi-3,
Mistral, Gemma naming), anchored so that nothing inside `judge_head` can match."""


def adajudge_lora_config(peft_config: LoraConfig, model: nn.Module) -> LoraConfig:
    """Return a copy of `peft_config` for an `AdaJudgeForRewardModeling`: backbone targets, heads in `modules_to_save`.

    Without `target_modules` (and `target_parameters`), the adapters go on `BACKBONE_TARGET_MODULES`. `judge_head`
    is added to `modules_to_save`, so the heads are fully trainable and stored with the adapter. Targets that would
    put adapters on the heads (e.g. `"all-linear"`) raise a `ValueError`.
    """
    if not isinstance(peft_config, LoraConfig):
        raise TypeError(f"AdaJudge supports LoRA through `peft.LoraConfig`, got {type(peft_config).__name__}.")
    config = copy.deepcopy(peft_config)
    if config.task_type not in (None, TaskType.SEQ_CLS, TaskType.SEQ_CLS.value):
        raise ValueError(
            f"`task_type={config.task_type!r}` does not fit a reward model. Use `task_type='SEQ_CLS'` (or leave it "
            "unset) in the `LoraConfig`."
        )
    if config.target_modules == INCLUDE_LINEAR_LAYERS_SHORTHAND:
        raise ValueError(
            "`target_modules='all-linear'` also matches the linear layers of the judge's heads, which are trained in "
            "full instead. Leave `target_modules` unset to adapt every attention and MLP projection of the backbone "
            f"({BACKBONE_TARGET_MODULES!r}), or list backbone modules explicitly."
        )
    if config.target_modules is None and config.target_parameters is None:
        config.target_modules = BACKBONE_TARGET_MODULES
        if not any(check_target_module_exists(config, name) for name, _ in model.named_modules()):
            raise ValueError(
                f"The backbone has no modules matching the default LoRA targets {BACKBONE_TARGET_MODULES!r}. Pass "
                "`target_modules` for its projection layers (e.g. a regex over `model.<layers>.<n>.<proj>`)."
            )

    # Which head modules / parameters the user's targets select, before `modules_to_save` would shield them.
    unshielded = copy.copy(config)
    unshielded.modules_to_save = None
    head_hits = [
        name
        for name, _ in model.named_modules()
        if name.startswith(f"{HEAD_MODULE}.") and check_target_module_exists(unshielded, name)
    ]
    for target in config.target_parameters or []:
        head_hits += [
            name
            for name, _ in model.named_parameters()
            if name.startswith(f"{HEAD_MODULE}.") and (name == target or name.endswith(f".{target}"))
        ]
    if head_hits:
        raise ValueError(
            f"The LoRA targets match modules of the judge's heads ({', '.join(head_hits[:4])}"
            f"{', ...' if len(head_hits) > 4 else ''}). The heads start from scratch and are trained in full through "
            f"`modules_to_save=['{HEAD_MODULE}']`; target backbone modules only (e.g. {BACKBONE_TARGET_MODULES!r})."
        )

    modules_to_save = list(config.modules_to_save or [])
    if HEAD_MODULE not in modules_to_save:
        modules_to_save.append(HEAD_MODULE)
    config.modules_to_save = modules_to_save
    return config


def merge_loaded_adapters(model: nn.Module) -> nn.Module:
    """Merge the adapters that transformers' PEFT integration (`load_adapter`) injected into `model`, in place.

    Each LoRA layer is folded into its base layer (`safe_merge`, which refuses NaN) and replaced by it, and the
    model forgets its adapter config, so it trains and saves as a plain model. Every parameter is made trainable
    again (loading an adapter for inference freezes the model). A model without adapters is returned unchanged.
    """
    tuner_layers = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    if not tuner_layers:
        return model
    for name, module in tuner_layers:
        module.merge(safe_merge=True)
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    model._hf_peft_config_loaded = False
    # `load_adapter` recorded PEFT's key renamings (`base_model.model.` prefixes) for `save_pretrained` to revert;
    # the merged model has plain keys, so drop them or a full save would write keys no loader finds.
    model.__dict__.pop("_weight_conversions", None)
    model.requires_grad_(True)
    return model


__all__ = ["BACKBONE_TARGET_MODULES", "HEAD_MODULE", "adajudge_lora_config", "merge_loaded_adapters"]
