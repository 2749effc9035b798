"""TRL's `RewardTrainer` with the AdaJudge objective: `AdaJudgeRewardConfig` and `AdaJudgeRewardTrainer`.

The trainer is a thin subclass: it prepares the data with the prompt/response boundary (`adajudge_hf.data`), swaps
the loss for the focal Bradley-Terry loss with the router entropy floor (`adajudge_hf.loss`), gives the heads their
own learning rate, and stops on a non-finite loss or gradient before the optimizer can write NaN weights.

Every folder it writes is a judge in one of `save_judge`'s forms, so each opens through every door (the Auto classes,
`pipeline`, TRL's string arguments, `load_judge`) as the judge at that step: each `checkpoint-N/` in the form that
training can resume from (adapter + heads with LoRA, heads with a frozen backbone, else full), and `save_model` in
`args.save_form`. Trainer's PEFT checkpoints would name the bare backbone, which then loads with a random score head.
"""

import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from datasets import Dataset, IterableDataset
from peft import PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase, set_seed
from transformers.modeling_utils import set_zero3_state
from transformers.trainer_optimizer import is_optimizer_factory
from trl import RewardConfig, RewardTrainer
from trl.trainer.utils import global_then_local_main_first

from .batching import depth_candidate_names
from .checkpoint import (
    HEADS_FILE,
    SAVE_FORMS,
    detect_judge_form,
    judge_backbone,
    load_judge,
    load_judge_weights,
    save_judge,
)
from .compat import ActivationCheckpointingArguments
from .data import STRENGTH, DataCollatorForAdaJudge, prepare_preference_dataset
from .lora import HEAD_MODULE, adajudge_lora_config
from .loss import STRENGTH_SCALINGS, adajudge_loss, preference_strength_scale, preference_strength_weights
from .modeling import AdaJudgeConfig, AdaJudgeForRewardModeling
from .modeling.configuration_adajudge import validate_loss_hyperparameters
from .modeling.loading_adajudge import check_local_checkpoint, judge_form, resolve_file
from .precision import resolve_bf16_training


logger = logging.getLogger(__name__)

LOSS_FIELDS = ("bt_temperature", "focal_gamma", "entropy_floor", "entropy_floor_coef")
STRENGTH_SCALE_SAMPLES = 1024
"""Pairs of a streamed training set from which the strength normaliser is estimated (a map-style set uses all)."""
ROUTER_MODULE = "pooling_router"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient; raised before the optimizer step that would store it."""


@dataclass
class AdaJudgeRewardConfig(ActivationCheckpointingArguments, RewardConfig):
    r"""
    Configuration for [`AdaJudgeRewardTrainer`]: TRL's [`~trl.RewardConfig`] plus the AdaJudge objective.

    The four loss hyper-parameters default to `None`, which takes them from the judge's config (the objective it
    was built for); a value set here overrides it and is written back to `model.config`, so every checkpoint records
    the objective it was trained with.

    Parameters:
        bt_temperature (`float`, *optional*):
            tau_bt in p = sigmoid((r+ - r- - margin) / tau_bt).
        focal_gamma (`float`, *optional*):
            Focal exponent gamma; 0 gives the plain Bradley-Terry loss.
        entropy_floor (`float`, *optional*):
            eta, the router entropy (nats, < ln 3) below which the floor penalty acts.
        entropy_floor_coef (`float`, *optional*):
            lambda, the weight of lambda * max(0, eta - H(pi))^2; 0 disables the floor.
        strength_column (`str`, *optional*):
            Dataset column with a per-pair preference strength (>= 0). Each pair's loss is weighted by the scaled
            strength, normalised to mean 1 over the training set (one constant computed when the data is prepared,
            so the weights do not depend on the per-device batch size, gradient accumulation or the number of
            processes). `None` weights every pair equally.
        strength_scaling (`str`, *optional*, defaults to `"sqrt"`):
            `"sqrt"` (the paper) or `"linear"`.
        expert_aux_loss_coef (`float`, *optional*, defaults to `0.0`):
            Weight of an auxiliary Bradley-Terry loss on each expert's own score (a remedy for router lock-in; off).
        head_learning_rate (`float`, *optional*):
            Learning rate of the `judge_head` parameters, which start from scratch; `None` uses `learning_rate`,
            which then applies to LoRA / backbone parameters only.
        router_learning_rate_multiplier (`float`, *optional*, defaults to `1.0`):
            Multiplies the head learning rate for the pooling router (a remedy for router lock-in; off).
        freeze_backbone (`bool`, *optional*, defaults to `False`):
            Train the heads only. Turns off activation checkpointing, which would only recompute the frozen backbone.
        save_form (`str`, *optional*):
            Form of the judge `save_model` writes (`adapter`, `heads` or `full`, see `save_judge`). `None`: adapter
            with LoRA, heads with `freeze_backbone`, else full. Each `checkpoint-N/` is a judge in the form training
            resumes from (the same default).
        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Longer pairs are truncated, not dropped: the prompt is cut from the left, once per pair so that chosen
            and rejected keep the same prompt tokens, and the end of the response is kept.
        gradient_checkpointing (`bool`, *optional*):
            transformers' deprecated alias of `activation_checkpointing`. Unset (and `activation_checkpointing` unset),
            activation checkpointing is on, TRL's default, without the deprecation warning TRL's `True` triggers.
        bf16 (`bool`, *optional*):
            bf16 mixed precision (autocast, fp32 master weights). Unset, it is on where the device has bf16 units
            (Ampere+ GPUs, CPUs with AMX-BF16 / AVX512-BF16) and fp16 is off, and off elsewhere, where bf16 is
            emulated and slower than fp32 (TRL turns an unset `bf16` on everywhere).
    """

    bt_temperature: float | None = field(
        default=None, metadata={"help": "Bradley-Terry temperature tau_bt. None: the model config's value."}
    )
    focal_gamma: float | None = field(
        default=None, metadata={"help": "Focal exponent gamma (0 = plain BT loss). None: the model config's value."}
    )
    entropy_floor: float | None = field(
        default=None, metadata={"help": "Router entropy floor eta in nats (< ln 3). None: the model config's value."}
    )
    entropy_floor_coef: float | None = field(
        default=None,
        metadata={"help": "Weight lambda of the entropy floor (0 = off). None: the model config's value."},
    )
    strength_column: str | None = field(
        default=None,
        metadata={
            "help": "Dataset column with a preference strength (>= 0) that weights each pair. None: no weights."
        },
    )
    strength_scaling: str = field(
        default="sqrt",
        metadata={"help": "Scaling of the strength before normalisation.", "choices": STRENGTH_SCALINGS},
    )
    expert_aux_loss_coef: float = field(
        default=0.0,
        metadata={"help": "Weight of a per-expert auxiliary Bradley-Terry loss (router lock-in remedy; 0 = off)."},
    )
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the judge's heads. None: `learning_rate`."}
    )
    router_learning_rate_multiplier: float = field(
        default=1.0,
        metadata={"help": "Multiplier of the head learning rate for the pooling router (lock-in remedy; 1 = off)."},
    )
    freeze_backbone: bool = field(
        default=False, metadata={"help": "Train the heads only (no LoRA); turns off activation checkpointing."}
    )
    packed: bool = field(
        default=False,
        metadata={
            "help": "Shared-prompt packing: each pair is one row [prompt; chosen; rejected], so the prompt is encoded "
            "once (same loss and gradients as the plain layout). Needs causal refinement blocks and an eager or SDPA "
            "backbone; otherwise training falls back to the plain layout with a notice."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Deprecated alias of `activation_checkpointing`. None: checkpointing on (TRL's default).",
            "nargs": "?",
            "const": True,
        },
    )
    max_length: int | None = field(
        default=1024,
        metadata={
            "help": "Maximum tokens of prompt + response. Longer pairs are truncated (prompt from the left, end of the "
            "response kept), not dropped. None: no limit."
        },
    )
    save_form: str | None = field(
        default=None,
        metadata={
            "help": "Form of the judge `save_model` (and `adajudge train`) writes: `adapter` (LoRA + heads), `heads` "
            "(frozen backbone) or `full` (LoRA merged). None: adapter with LoRA, heads with a frozen backbone, else "
            "full. Checkpoints always use the form training resumes from.",
            "choices": SAVE_FORMS,
        },
    )

    def __post_init__(self):
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True  # TRL's default, by its current name
        accelerator = None if self.use_cpu else torch.accelerator.current_accelerator()
        if self.bf16 is None and (accelerator is None or accelerator.type == "cuda"):  # others: TRL's default
            self.bf16, reason = resolve_bf16_training(None, self.fp16, accelerator or "cpu")
            logger.info("bf16 mixed precision %s (%s)", "on" if self.bf16 else "off", reason)
        super().__post_init__()
        # Validate the loss values that are set; the unset ones come from the model config (validated there).
        placeholders = {"bt_temperature": 1.0, "focal_gamma": 0.0, "entropy_floor": 0.0, "entropy_floor_coef": 0.0}
        validate_loss_hyperparameters(
            **{
                name: placeholders[name] if getattr(self, name) is None else getattr(self, name)
                for name in LOSS_FIELDS
            }
        )
        if self.strength_scaling not in STRENGTH_SCALINGS:
            raise ValueError(f"`strength_scaling` must be one of {STRENGTH_SCALINGS}, got {self.strength_scaling!r}.")
        if not self.expert_aux_loss_coef >= 0:
            raise ValueError(f"`expert_aux_loss_coef` must be >= 0 (0 disables it), got {self.expert_aux_loss_coef}.")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ValueError(
                f"`head_learning_rate` must be > 0 (or None for `learning_rate`), got {self.head_learning_rate}."
            )
        if not self.router_learning_rate_multiplier > 0:
            raise ValueError(
                f"`router_learning_rate_multiplier` must be > 0 (1 leaves it off), got {self.router_learning_rate_multiplier}."
            )
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(
                f"`max_length` must be >= 2 (a prompt token and a response token) or None, got {self.max_length}."
            )
        if self.save_form is not None and self.save_form not in SAVE_FORMS:
            raise ValueError(f"`save_form` must be one of {SAVE_FORMS}, got {self.save_form!r}.")
        if self.freeze_backbone and self.activation_checkpointing:
            self.activation_checkpointing = self.gradient_checkpointing = False


def judge_save_form(save_form: str | None, lora: bool, freeze_backbone: bool, cli: bool = False) -> str:
    """The form a judge trained this way is saved in: `save_form`, else adapter with LoRA, heads with a frozen
    backbone, else full. A form that cannot hold what is trained is refused, naming CLI flags when `cli`."""

    def spell(name: str, value: str | None = None) -> str:
        if cli:
            return f"--{name}" + (f" {value}" if value else "")
        return f"`{name}={value!r}`" if value else f"`{name}=True`"

    message = None
    if save_form == "adapter" and not lora:
        message = (
            f"{spell('save_form', 'adapter')} saves LoRA adapters with the heads, but this run trains no LoRA "
            f"adapters. Add {'--use_peft' if cli else '`peft_config`'}, or save with {spell('save_form', 'full')}"
            + (f" or {spell('save_form', 'heads')}." if freeze_backbone else ".")
        )
    elif save_form == "heads" and lora:
        message = (
            f"{spell('save_form', 'heads')} saves the heads alone and would drop the trained LoRA adapters. Use "
            f"{spell('save_form', 'adapter')} (adapters + heads) or {spell('save_form', 'full')} (merged)."
        )
    elif save_form == "heads" and not freeze_backbone:
        message = (
            f"{spell('save_form', 'heads')} saves the heads alone, but the backbone is trained too. Add "
            f"{spell('freeze_backbone')} to train the heads only, or use {spell('save_form', 'full')}."
        )
    if message:
        raise ValueError(message)
    return save_form or ("adapter" if lora else "heads" if freeze_backbone else "full")


def judge_backbone_folder(model_id: str) -> str | None:
    """The folder or Hub repo whose backbone weights a judge loaded from `model_id` has, where it is not the backbone
    recorded in its config: `model_id` itself for a full judge (its backbone may be fine-tuned), `MERGED` for an
    adapter judge (`load_judge` merges the LoRA into the backbone, so no folder holds it). None for a backbone or a
    heads judge."""
    check_local_checkpoint(model_id)  # a missing local folder is named, not taken for a Hub id
    if resolve_file(model_id, "config.json", {}) is None:
        return None
    if AdaJudgeConfig.get_config_dict(model_id)[0].get("model_type") != AdaJudgeConfig.model_type:
        return None
    form = judge_form(lambda name: resolve_file(model_id, name, {}) is not None)
    if form == "full":
        return os.path.abspath(model_id) if os.path.isdir(model_id) else model_id
    return MERGED if form == "adapter" else None


MERGED = "merged"


def _judge_of(model: AdaJudgeForRewardModeling | PeftModel) -> AdaJudgeForRewardModeling:
    judge = model.get_base_model() if isinstance(model, PeftModel) else model
    if not isinstance(judge, AdaJudgeForRewardModeling):
        raise TypeError(
            f"AdaJudgeRewardTrainer trains an AdaJudgeForRewardModeling (or a PeftModel of one), got "
            f"{type(judge).__name__}. Build one with `AdaJudgeForRewardModeling.from_backbone(...)`, or pass the "
            "backbone's name as `model`. For a stock reward model use `trl.RewardTrainer`."
        )
    return judge


class AdaJudgeRewardTrainer(RewardTrainer):
    """
    [`~trl.RewardTrainer`] for AdaJudge judges; takes the same arguments.

    `model` may be an [`AdaJudgeForRewardModeling`] (or a `PeftModel` of one), a folder saved by `save_judge` in any
    form, a Hub id of a full judge, or the name of a backbone, around which a judge is built with
    `AdaJudgeForRewardModeling.from_backbone` (judge config fields such as `num_refinement_blocks` can go in
    `args.model_init_kwargs`). A `peft_config` (`LoraConfig`) goes through `adajudge_lora_config`: adapters on the
    backbone projections, heads trained in full.

    Example:

    ```python
    >>> from datasets import load_dataset
    >>> from peft import LoraConfig
    >>> from adajudge_hf import AdaJudgeRewardConfig, AdaJudgeRewardTrainer
    >>> trainer = AdaJudgeRewardTrainer(
    ...     model="Qwen/Qwen3-4B",
    ...     args=AdaJudgeRewardConfig("adajudge-qwen3-4b", head_learning_rate=5e-4),
    ...     train_dataset=load_dataset("trl-lib/ultrafeedback_binarized", split="train"),
    ...     peft_config=LoraConfig(r=16),
    ... )
    >>> trainer.train()
    ```
    """

    _tag_names = ["trl", "reward-trainer", "adajudge"]
    _name = "AdaJudge Reward"

    def __init__(
        self,
        model: "str | AdaJudgeForRewardModeling | PeftModel",
        args: AdaJudgeRewardConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else (model.config.name_or_path or "judge")
            args = AdaJudgeRewardConfig(f"{os.path.basename(str(name).rstrip('/'))}-AdaJudge")
        elif not isinstance(args, AdaJudgeRewardConfig):
            raise TypeError(
                f"`args` must be an AdaJudgeRewardConfig (a RewardConfig with the AdaJudge loss fields), got "
                f"{type(args).__name__}."
            )

        self.strength_scale = None  # set from the training set by `_prepare_dataset`
        self._saving_checkpoint = False
        model_init_kwargs = args.model_init_kwargs
        built_here = isinstance(model, str)
        # Where the backbone's weights, as this judge holds them, are: a full judge's own folder, not the backbone
        # recorded for its card; a merged adapter judge's are in no folder. The adapter and heads forms name it.
        self._backbone_folder = judge_backbone_folder(model) if built_here else None
        if built_here:
            model = self._load_model(model, args, processing_class, quantization_config)
            quantization_config = None
        judge = _judge_of(model)

        if args.freeze_backbone:
            if peft_config is not None or isinstance(model, PeftModel):
                raise ValueError(
                    "`freeze_backbone=True` trains the heads only, but LoRA adapters were requested. Drop "
                    "`peft_config` to train heads on a frozen backbone, or set `freeze_backbone=False` for LoRA."
                )
            judge.model.requires_grad_(False)
        if peft_config is not None:
            peft_config = adajudge_lora_config(peft_config, judge)
        elif isinstance(model, PeftModel) and not any(p.requires_grad for p in judge.judge_head.parameters()):
            raise ValueError(
                f"The PeftModel's `{HEAD_MODULE}` is frozen, so the heads would stay at their random initial values. "
                "Wrap the judge with `get_peft_model(judge, adajudge_lora_config(lora_config, judge))`, or pass the "
                "judge and `peft_config` to the trainer."
            )

        self.judge_save_form, self.checkpoint_form = self._save_forms(
            args, judge, lora=peft_config is not None or isinstance(model, PeftModel), backbone=self._backbone_folder
        )

        # The objective: explicit config values win and are recorded on the model; the rest come from the model.
        self.loss_hyperparameters = {}
        for name in LOSS_FIELDS:
            value = getattr(args, name)
            if value is None:
                value = getattr(judge.config, name)
            else:
                setattr(judge.config, name, value)
            self.loss_hyperparameters[name] = value
        validate_loss_hyperparameters(**self.loss_hyperparameters)

        if processing_class is None and not judge.config.name_or_path:
            raise ValueError(
                "Pass the tokenizer as `processing_class`: this judge was built from a config, so there is no "
                "checkpoint to load one from."
            )
        if built_here:  # TRL would warn that `model_init_kwargs` are ignored: they were used above
            args.model_init_kwargs = None
        try:
            super().__init__(
                model=model,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                compute_metrics=compute_metrics,
                callbacks=callbacks,
                optimizers=optimizers,
                optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
                preprocess_logits_for_metrics=preprocess_logits_for_metrics,
                quantization_config=quantization_config,
                peft_config=peft_config,
            )
        finally:
            args.model_init_kwargs = model_init_kwargs
        judge.config.pad_token_id = self.processing_class.pad_token_id
        packed = args.packed and judge.supports_packed_inputs
        if args.packed and not packed:
            logger.warning(
                "`packed=True` needs causal refinement blocks and an eager or SDPA backbone; this judge has "
                f"refinement_attention={judge.config.refinement_attention!r} and attention "
                f"{judge.config.text_config._attn_implementation!r}, so training uses the plain layout."
            )
        if data_collator is None:
            self.data_collator = DataCollatorForAdaJudge(
                pad_token_id=self.processing_class.pad_token_id,
                pad_to_multiple_of=args.pad_to_multiple_of,
                packed=packed,
            )
        self._expert_names = judge.config.experts
        self._depth_names = depth_candidate_names(judge.config) if judge.config.num_refinement_blocks else None

    @staticmethod
    def _save_forms(
        args: AdaJudgeRewardConfig, judge: AdaJudgeForRewardModeling, lora: bool, backbone: str | None = None
    ) -> tuple[str, str]:
        """(form of `save_model`, form of each checkpoint), checked before the first step. The adapter and heads forms
        name the backbone; where no folder holds it (a judge built from a config, or with merged adapters) a frozen
        backbone is saved in full."""
        final = judge_save_form(args.save_form, lora, args.freeze_backbone)
        checkpoint = judge_save_form(None, lora, args.freeze_backbone)
        if judge_backbone(judge) is not None and backbone != MERGED:
            return final, checkpoint
        if not lora:
            checkpoint, final = "full", args.save_form or "full"
        missing = None
        if final == "heads":
            missing = "heads form"
        elif lora and args.save_strategy != "no":
            missing = "adapter form of its checkpoints"
        elif lora and args.save_form == "adapter":
            missing = "adapter form"
        if missing and backbone == MERGED:
            raise ValueError(
                f"This judge's backbone has the LoRA adapters of {judge.name_or_path} merged in, so the {missing} "
                "cannot name a folder that holds it. Save that judge in full first (`adajudge_hf.save_judge(load_judge"
                "(folder), new_folder, form='full')`) and train from the new folder."
            )
        if missing:
            raise ValueError(
                f"This judge was built from a config, so the backbone that the {missing} must name is unknown. Set "
                "`model.config.base_model_name_or_path` to the backbone's Hub id or folder"
                + ("." if lora else ", or use `save_form='full'`.")
            )
        return final, checkpoint

    @staticmethod
    def _load_model(
        model_id: str,
        args: AdaJudgeRewardConfig,
        processing_class: PreTrainedTokenizerBase | None,
        quantization_config,
    ) -> AdaJudgeForRewardModeling:
        """A saved judge (any `save_judge` form, or a full judge on the Hub), else a new judge around a backbone."""
        set_seed(args.seed)  # the heads of a new judge are random
        kwargs = dict(args.model_init_kwargs or {})
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
        dtype = kwargs.get("dtype", "float32")  # TRL's default for reward models
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
        if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
            kwargs["device_map"] = None
        elif "device_map" not in kwargs:
            kwargs["device_map"] = None if args.device.type in ("cpu", "mps") else "auto"
        kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        hub_kwargs = {key: kwargs[key] for key in ("revision", "trust_remote_code") if key in kwargs}
        check_local_checkpoint(model_id, "")  # a missing folder is named, not "Repo id must be in the form ..."
        if AdaJudgeConfig.get_config_dict(model_id, **hub_kwargs)[0].get("model_type") == AdaJudgeConfig.model_type:
            if os.path.isdir(model_id):
                return load_judge(model_id, **kwargs)
            return AdaJudgeForRewardModeling.from_pretrained(model_id, **kwargs)
        return AdaJudgeForRewardModeling.from_backbone(model_id, tokenizer=processing_class, **kwargs)

    def _prepare_dataset(
        self,
        dataset: Dataset | IterableDataset,
        processing_class: PreTrainedTokenizerBase,
        args: AdaJudgeRewardConfig,
        dataset_name: str,
    ) -> Dataset | IterableDataset:
        with global_then_local_main_first():
            dataset, _ = prepare_preference_dataset(
                dataset,
                processing_class,
                max_length=args.max_length,
                strength_column=args.strength_column,
                dataset_name=dataset_name,
                num_proc=args.dataset_num_proc,
            )
        if args.strength_column is not None and dataset_name == "train" and self.strength_scale is None:
            self.strength_scale = self._strength_scale_of(dataset, args.strength_scaling)
        return dataset

    @staticmethod
    def _strength_scale_of(dataset: Dataset | IterableDataset, scaling: str) -> float:
        """The mean scaled strength of the training set (of its first `STRENGTH_SCALE_SAMPLES` pairs when streamed)."""
        if isinstance(dataset, Dataset):
            return preference_strength_scale(torch.tensor(dataset[STRENGTH]), scaling)
        strengths = [example[STRENGTH] for example in dataset.take(STRENGTH_SCALE_SAMPLES)]
        scale = preference_strength_scale(torch.tensor(strengths), scaling)
        logger.info(
            f"The streamed training set's strength weights are normalised by the mean {scaling}-scaled strength of its "
            f"first {len(strengths)} pairs ({scale:.4g})."
        )
        return scale

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [
                "chosen_ids",
                "rejected_ids",
                "chosen_prompt_length",
                "rejected_prompt_length",
                "margin",
                STRENGTH,
            ]

    def _parameter_learning_rate(self, name: str) -> float:
        if f".{HEAD_MODULE}." not in f".{name}":
            return self.args.learning_rate
        head_learning_rate = self.args.head_learning_rate or self.args.learning_rate
        if f".{ROUTER_MODULE}." in name:
            return head_learning_rate * self.args.router_learning_rate_multiplier
        return head_learning_rate

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """Trainer's optimizer, with one parameter group per (learning rate, weight decay): heads, router, the rest."""
        separate = self.args.head_learning_rate is not None or self.args.router_learning_rate_multiplier != 1.0
        if self.optimizer is not None or not separate:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & optimizer_kwargs.keys():
            raise ValueError(
                f"`optim={self.args.optim}` builds its own parameter groups, so `head_learning_rate` / "
                "`router_learning_rate_multiplier` cannot apply. Use an AdamW-style optimizer or leave them unset."
            )
        decay_parameters = set(self.get_decay_parameter_names(opt_model))
        groups = defaultdict(list)
        for name, parameter in opt_model.named_parameters():
            if parameter.requires_grad:
                weight_decay = self.args.weight_decay if name in decay_parameters else 0.0
                groups[(self._parameter_learning_rate(name), weight_decay)].append(parameter)
        parameter_groups = [
            {"params": params, "lr": lr, "weight_decay": weight_decay} for (lr, weight_decay), params in groups.items()
        ]
        self.optimizer = optimizer_cls(parameter_groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        margin = inputs.pop("margin", None)
        strength = inputs.pop(STRENGTH, None)
        inputs["use_cache"] = False
        outputs = model(**inputs)

        rewards_chosen, rewards_rejected = outputs.logits.squeeze(-1).chunk(2)  # (B,) each
        routing_chosen, routing_rejected = outputs.routing_weights.chunk(2)  # (B, E) each
        pair_weights = None
        if self.args.strength_column is not None:
            if strength is None:
                raise ValueError(
                    f"`strength_column={self.args.strength_column!r}` is set but the batch has no `{STRENGTH}`; use "
                    "the trainer's data collator (DataCollatorForAdaJudge) or set `strength_column=None`."
                )
            pair_weights = preference_strength_weights(strength, self.args.strength_scaling, self.strength_scale)
        expert_scores = (None, None)
        if self.args.expert_aux_loss_coef:
            expert_scores = outputs.expert_scores.chunk(2)  # (B, E) each
        result = adajudge_loss(
            rewards_chosen,
            rewards_rejected,
            routing_chosen,
            routing_rejected,
            margin,
            pair_weights,
            **self.loss_hyperparameters,
            chosen_expert_scores=expert_scores[0],
            rejected_expert_scores=expert_scores[1],
            expert_aux_loss_coef=self.args.expert_aux_loss_coef,
        )
        loss = result.loss
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)

        with torch.no_grad():
            # One gather for every scalar: the finiteness flag first, so that all processes stop together.
            names = ["finite", "accuracy", "margin", "preference_loss", "router_entropy", "entropy_floor_active"]
            values = [
                torch.isfinite(loss).float(),
                (rewards_chosen > rewards_rejected).float().mean(),
                (rewards_chosen - rewards_rejected).mean(),
                result.preference_loss,
                result.routing_entropy.mean(),
                result.floor_active.float().mean(),
            ]
            names += [f"pi/{expert}" for expert in self._expert_names]
            values += list(outputs.routing_weights.float().mean(0))
            if self._depth_names is not None and outputs.depth_weights is not None:
                names += [f"alpha/{k}" for k in self._depth_names]
                values += list(outputs.depth_weights.float().mean(0))
            if result.expert_aux_loss is not None:
                names.append("expert_aux_loss")
                values.append(result.expert_aux_loss)
            gathered = self.accelerator.gather(torch.stack(values).unsqueeze(0)).float()  # (P, M)
            if bool((gathered[:, 0] < 1).any()):
                raise NonFiniteLossError(
                    f"Non-finite {mode} loss ({loss.item()}) at step {self.state.global_step}: rewards in "
                    f"[{outputs.logits.min().item()}, {outputs.logits.max().item()}]. Training stopped before the "
                    "optimizer step, so no checkpoint holds NaN weights. Lower the learning rate, use bf16 rather "
                    "than fp16, or check the data; resume from the last checkpoint."
                )

            if mode == "train":
                num_tokens_in_batch = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
                self._total_train_tokens += num_tokens_in_batch // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            all_rewards = self.accelerator.gather(outputs.logits)
            self._metrics[mode]["min_reward"].append(all_rewards.min().item())
            self._metrics[mode]["mean_reward"].append(all_rewards.mean().item())
            self._metrics[mode]["max_reward"].append(all_rewards.max().item())
            for name, value in zip(names[1:], gathered[:, 1:].mean(0).tolist()):
                self._metrics[mode][name].append(value)
            if mode == "eval":
                # `log` averages the entries: one per pair makes `eval_accuracy` the accuracy over pairs. A mean of
                # batch means over-weights a short last batch, and `load_best_model_at_end` may select on it.
                correct = (rewards_chosen > rewards_rejected).float()
                self._metrics[mode]["accuracy"][-1:] = self.accelerator.gather_for_metrics(correct).tolist()

        return (loss, outputs) if return_outputs else loss

    def save_judge(self, output_dir: str | os.PathLike, form: str | None = None) -> None:
        """Save the trained judge into `output_dir` (replaced atomically) in `form` (default `args.save_form`, see
        `judge_save_form`), with the tokenizer. Call on every process: FSDP / DeepSpeed shards are gathered first."""
        form = self.judge_save_form if form is None else form
        model = self._model_to_save()
        if model is not None:
            save_judge(
                model, output_dir, form=form, tokenizer=self.processing_class, overwrite=True, **self._base(form)
            )

    def _model_to_save(self, state_dict: dict | None = None) -> AdaJudgeForRewardModeling | PeftModel | None:
        """The trained model, whole, on the saving process (None elsewhere). A sharded model (FSDP, DeepSpeed) is
        rebuilt from `state_dict`, gathered here (a collective) when not given."""
        model = self.accelerator.unwrap_model(self.model)
        if state_dict is None and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            state_dict = self.accelerator.get_state_dict(self.model_wrapped)  # collective (DeepSpeed: the engine)
        if not self.args.should_save:
            return None
        if state_dict is None:
            return model
        judge = _judge_of(model)
        with set_zero3_state():  # a plain model on this process: ZeRO-3's partitioned construction is collective
            whole = AdaJudgeForRewardModeling._from_config(judge.config, dtype=judge.dtype)
        whole.config.base_model_name_or_path = judge_backbone(judge)
        if isinstance(model, PeftModel):
            whole = get_peft_model(whole, model.peft_config[model.active_adapter])
        whole.load_state_dict(state_dict, assign=True)  # keep each tensor's trained dtype (fp32 heads beside bf16)
        return whole

    def _save_checkpoint(self, model, trial):
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer's model save (`save_model`, each checkpoint): the judge in `checkpoint_form` for a checkpoint, else
        in `judge_save_form`, and its tokenizer; the folder's other files (optimizer states, logs) are kept."""
        if state_dict == {}:  # DeepSpeed without gathered weights: it writes its own checkpoint files next
            return super()._save(output_dir, state_dict)
        model = self._model_to_save(state_dict)
        if model is not None:
            form = self.checkpoint_form if self._saving_checkpoint else self.judge_save_form
            output_dir = output_dir or self.args.output_dir
            save_judge(
                model,
                output_dir,
                form=form,
                tokenizer=self.processing_class,
                keep_other_files=True,
                **self._base(form),
            )

    def _base(self, form: str) -> dict:
        """`save_judge`'s backbone for `form`: the full judge folder this judge's backbone comes from, if any."""
        if form == "full" or self._backbone_folder in (None, MERGED):
            return {}
        return {"base_model_name_or_path": self._backbone_folder}

    def _load_split_judge(self, folder: str | None, model) -> bool:
        """Load a checkpoint in the adapter or heads form into `model`; False for any other folder, and under FSDP /
        DeepSpeed, whose own checkpoint files Trainer reads."""
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
        if sharded or folder is None or not os.path.isfile(os.path.join(folder, HEADS_FILE)):
            return False
        if detect_judge_form(folder) == "full":
            return False
        load_judge_weights(self.accelerator.unwrap_model(model), folder)
        return True

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not self._load_split_judge(resume_from_checkpoint, self.model if model is None else model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if not self._load_split_judge(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()

    def _get_grad_norm(self, model, grad_norm=None):
        # Trainer computes the global gradient norm just before `optimizer.step()`: the last point at which a
        # non-finite gradient can be stopped from reaching the weights. fp16 loss scaling skips such steps itself.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if grad_norm is not None and self.accelerator.scaler is None and not math.isfinite(float(grad_norm)):
            raise NonFiniteLossError(
                f"Non-finite gradient norm ({float(grad_norm)}) at step {self.state.global_step}. Training stopped "
                "before the optimizer step, so no checkpoint holds NaN weights. Lower the learning rate or set "
                "`max_grad_norm`; resume from the last checkpoint."
            )
        return grad_norm


__all__ = ["AdaJudgeRewardConfig", "AdaJudgeRewardTrainer", "NonFiniteLossError"]
