"""Which dtype a judge computes in: bf16 where the device runs it natively, fp32 elsewhere.

bf16 halves the memory traffic of every matmul and, where the silicon has bf16 units (Ampere and later GPUs; CPUs
with AMX-BF16 or AVX512-BF16), runs them several times faster than fp32. Where it has none, bf16 is emulated through
fp32 conversions and runs slower than fp32 (3-4x on an AVX2-only CPU), so `"auto"` checks the device, not just
whether bf16 tensors can be made there (which is always true). The heads stay in fp32 whatever the backbone's dtype
(`AdaJudgeForRewardModeling._keep_in_fp32_modules_strict`), so the rewards keep fp32 pooling and readout.

`resolve_dtype` makes the choice and says why: `adajudge serve`, `adajudge evaluate` and `AdaJudgeReward(folder)` load
through `load_for_inference`, `adajudge demo` builds its backbone in the dtype it returns, and
`resolve_bf16_training` decides TrainingArguments' `bf16` (autocast) when it is left unset. Functions that take a
loaded model (`score_responses`, `score_best_of_n`) compute in that model's dtype.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .checkpoint import load_judge
from .compat import CPU_BF16_FLAGS, cpu_capabilities
from .modeling import AdaJudgeConfig
from .modeling.loading_adajudge import check_local_checkpoint


logger = logging.getLogger(__name__)

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""Values of every `--dtype` flag: `auto` (bf16 where the device runs it natively, else fp32) or a dtype."""


@dataclass(frozen=True)
class Precision:
    """A dtype and why it was chosen, as logged and recorded in `/info` and `metrics.json`."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def as_record(self) -> dict[str, str]:
        return {"dtype": self.name, "dtype_reason": self.reason}


def native_bf16(device: str | torch.device) -> tuple[bool, str]:
    """Whether `device` has bf16 arithmetic units (not emulation), and the evidence."""
    device = torch.device(device)
    if device.type == "cuda":
        # `torch.cuda.is_bf16_supported(including_emulation=False)`'s test, for this device rather than the current one
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        native = bool(torch.version.hip) or major >= 8
        return native, f"{name} (compute capability {major}.{minor}) {'has' if native else 'lacks'} bf16 units"
    if device.type == "cpu":
        capabilities = cpu_capabilities()
        known = [flag for flags in CPU_BF16_FLAGS.values() for flag in flags if flag in capabilities]  # this arch's
        found = [flag for flag in known if capabilities[flag]]
        cpu = f"CPU {capabilities.get('cpu_name') or capabilities.get('architecture', '')}".rstrip()
        if found:
            return True, f"{cpu} has {' and '.join(found)}"
        return False, f"{cpu} has no {' or '.join(known) or 'bf16 units'}: bf16 would be emulated, slower than fp32"
    return False, f"no check of native bf16 for {device.type} devices"


def resolve_dtype(choice: str | torch.dtype | None, device: str | torch.device) -> Precision:
    """The dtype to load weights in on `device`: `choice` itself, or for `"auto"` (and None) bf16 where the device
    runs it natively and fp32 otherwise. Logs the choice and its reason."""
    choice = "auto" if choice is None else choice
    if isinstance(choice, str) and choice not in DTYPE_CHOICES:
        raise ValueError(f"Unknown dtype {choice!r}: choose one of {', '.join(DTYPE_CHOICES)}.")
    if choice == "auto":
        native, evidence = native_bf16(device)
        dtype = torch.bfloat16 if native else torch.float32
        precision = Precision(dtype, f"auto: {evidence}")
    else:
        dtype = getattr(torch, choice) if isinstance(choice, str) else choice
        precision = Precision(dtype, "requested")
        if dtype == torch.bfloat16 and not native_bf16(device)[0]:
            logger.warning(
                "bf16 requested on %s, which has no bf16 units: it is emulated there and slower than float32 "
                "(--dtype auto chooses float32 on such devices).",
                device,
            )
    logger.info("computing in %s on %s (%s)", precision.name, device, precision.reason)
    return precision


def resolve_bf16_training(bf16: bool | None, fp16: bool, device: str | torch.device) -> tuple[bool, str]:
    """TrainingArguments' `bf16` (mixed precision: autocast to bf16, fp32 master weights) when left unset: on where
    the device runs bf16 natively and fp16 is off, off elsewhere. An explicit value is kept."""
    if bf16 is not None:
        return bf16, "requested"
    if fp16:
        return False, "fp16 mixed precision requested"
    native, evidence = native_bf16(device)
    return native, f"auto: {evidence}"


def _is_adajudge_folder(name_or_path: str | os.PathLike) -> bool:
    folder = Path(name_or_path)
    return (folder / "config.json").is_file() and (
        PreTrainedConfig.get_config_dict(str(folder))[0].get("model_type") == AdaJudgeConfig.model_type
    )


def load_for_inference(
    name_or_path: str | os.PathLike,
    device: str | torch.device,
    dtype: str | torch.dtype | None = "auto",
    judge_only: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Precision]:
    """A reward model on `device` in eval mode, its tokenizer, and the precision it was loaded in.

    A local AdaJudge folder goes through `load_judge`, which reads every save form (full, adapter + heads, heads
    only); so does a Hub id with `judge_only`. Anything else goes through `AutoModelForSequenceClassification`, with
    which importing `adajudge_hf` registers AdaJudge, so full AdaJudge checkpoints and stock reward models load alike.
    The tokenizer is the model's folder's, else its backbone's.
    """
    check_local_checkpoint(str(name_or_path), "")  # a missing folder is named as such, not as a bad repo id
    precision = resolve_dtype(dtype, device)
    if judge_only or _is_adajudge_folder(name_or_path):
        model = load_judge(name_or_path, dtype=precision.dtype)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(name_or_path), dtype=precision.dtype)
    if model.config.num_labels != 1:
        raise ValueError(
            f"{name_or_path} is a classifier with {model.config.num_labels} labels, not a reward model (num_labels=1)."
        )
    tokenizer = AutoTokenizer.from_pretrained(model.name_or_path or str(name_or_path))
    return model.to(device).eval(), tokenizer, precision


__all__ = [
    "DTYPE_CHOICES",
    "Precision",
    "load_for_inference",
    "native_bf16",
    "resolve_bf16_training",
    "resolve_dtype",
]
