"""What differs between the library versions setup.cfg accepts, in one place.

setup.cfg states ranges; `make test-min` runs the default suite at the lowest versions (`constraints/min.txt`) and
`make test` at today's (`constraints/lock.txt`). Code elsewhere calls these helpers instead of testing versions itself.
"""

import platform
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast, TrainingArguments
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint


# transformers 5.23 renamed gradient checkpointing to activation checkpointing (training argument and model method)
# and kept the old names as deprecated aliases.
HAS_ACTIVATION_CHECKPOINTING = any(arg.name == "activation_checkpointing" for arg in fields(TrainingArguments))

if HAS_ACTIVATION_CHECKPOINTING:

    @dataclass
    class ActivationCheckpointingArguments:
        """Nothing to add: `TrainingArguments` has `activation_checkpointing`."""

else:

    @dataclass
    class ActivationCheckpointingArguments:
        """`activation_checkpointing` where `TrainingArguments` knows only `gradient_checkpointing`: the two agree
        after `__post_init__` (the one set wins), so code and CLI flags use the current name on every version."""

        activation_checkpointing: bool | None = field(
            default=None,
            metadata={
                "help": "Recompute activations in the backward pass instead of storing them.",
                "nargs": "?",
                "const": True,
            },
        )

        def __post_init__(self):
            if self.activation_checkpointing is None:
                self.activation_checkpointing = bool(self.gradient_checkpointing)
            self.gradient_checkpointing = self.activation_checkpointing
            super().__post_init__()


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """`model.activation_checkpointing_enable()`, by the name the installed transformers uses."""
    if HAS_ACTIVATION_CHECKPOINTING:
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable()


def load_gguf_tokenizer(gguf_path: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer of a GGUF file, with the special tokens its metadata names.

    transformers before 5.18 takes the BOS token for EOS when it converts a BPE (gpt2) GGUF vocabulary, and 5.5's
    `AutoTokenizer` reads a llama GGUF as a `CodeLlamaTokenizer` that prepends a BOS the model never saw. The generic
    fast class plus the metadata's token ids reads the file the same way on every supported version.
    """
    gguf_path = Path(gguf_path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    token_ids = load_gguf_checkpoint(str(gguf_path), return_tensors=False)["tokenizer"]
    for role in ("bos", "eos", "unk", "pad"):
        token_id = token_ids.get(f"{role}_token_id")
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
    return tokenizer


CPU_BF16_FLAGS = {
    "x86_64": {"amx_bf16": "amx_bf16", "avx512_bf16": "avx512_bf16"},
    "aarch64": {"bf16": "bf16", "sve_bf16": "svebf16"},
}
"""Flags of bf16 arithmetic units per architecture: `torch.cpu.get_capabilities()`'s name -> /proc/cpuinfo's name."""


def cpu_capabilities() -> dict:
    """`torch.cpu.get_capabilities()`: the CPU's name, architecture and feature flags.

    torch 2.7, the floor, has no such function; there the same keys come from Linux's /proc/cpuinfo, with the bf16 unit
    flags of this architecture present (True or False) so that their absence is stated rather than implied.
    """
    if hasattr(torch.cpu, "get_capabilities"):
        return torch.cpu.get_capabilities()
    architecture = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    flags, name = set(), ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key == "model name" and not name:
            name = value.strip()
    capabilities = {"architecture": architecture, "cpu_name": name, **dict.fromkeys(flags, True)}
    for flag, cpuinfo_name in CPU_BF16_FLAGS.get(architecture, {}).items():
        capabilities[flag] = cpuinfo_name in flags
    return capabilities
