"""What a benchmark ran on, for its results files: the CPU, its bf16 flags as `lscpu` reports them, torch's threads,
and the dtype `--dtype auto` picks there (bf16 is fast only where the CPU has AMX-BF16 or AVX512-BF16 units)."""

import os
import subprocess

import torch

from adajudge_hf.compat import cpu_capabilities
from adajudge_hf.precision import resolve_dtype


BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""The benchmarks' `--dtype` values; `auto` resolves to one of them with `adajudge_hf.precision.resolve_dtype`."""


def benchmark_dtype(choice: str) -> str:
    """`fp32`, `bf16`, or for `auto` the one `adajudge serve --dtype auto` would pick on this CPU."""
    if choice != "auto":
        return choice
    return "bf16" if resolve_dtype("auto", "cpu").dtype == torch.bfloat16 else "fp32"


def hardware() -> dict:
    lscpu = (
        subprocess.run(["lscpu"], capture_output=True, text=True).stdout if os.path.exists("/usr/bin/lscpu") else ""
    )
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {
        "cpu": fields.get("Model name", "").strip() or cpu_capabilities().get("cpu_name"),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "bf16_flags": {flag: flag in flags for flag in BF16_FLAGS},
        "auto": resolve_dtype("auto", "cpu").as_record(),
        "lscpu_flags": " ".join(flags),
    }


def hardware_markdown(info: dict) -> str:
    present = [flag for flag, on in info["bf16_flags"].items() if on]
    absent = [flag for flag, on in info["bf16_flags"].items() if not on]
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} threads; "
        f"lscpu flags present: {', '.join(present) or 'none'}; absent: {', '.join(absent) or 'none'}. "
        f"`--dtype auto` picks {info['auto']['dtype']} here ({info['auto']['dtype_reason']}). Full `lscpu` flags "
        "are in the JSON file."
    )
