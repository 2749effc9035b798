"""Step time and peak memory of one training step: AdaJudge vs TRL's stock reward model, same backbone and batch.

    python benchmarks/train_step.py                       # SmolLM2-135M-Instruct, LoRA r=16, 8 pairs x 256 tokens
    python benchmarks/train_step.py --random-weights      # same architecture, random weights (no download)

Both variants train through their trainers (`trl.RewardTrainer` with a `score` head, `AdaJudgeRewardTrainer` with
K=3 refinement blocks and three routed pooling experts), with LoRA on the same backbone projections, the same
pre-tokenised batch and TRL's defaults (activation checkpointing on). Each variant runs in its own process, so its
peak memory is its own: `torch.cuda.max_memory_allocated` on a GPU, the process's peak RSS on a CPU. Step time is the
median over the measured steps, after warm-up steps.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForSequenceClassification,
    TrainerCallback,
)
from trl import RewardConfig, RewardTrainer

from adajudge_hf import AdaJudgeConfig, AdaJudgeForRewardModeling
from adajudge_hf.backbones import resolve_backbone
from adajudge_hf.lora import BACKBONE_TARGET_MODULES
from adajudge_hf.testing import make_tiny_tokenizer
from adajudge_hf.trainer import AdaJudgeRewardConfig, AdaJudgeRewardTrainer


BACKBONE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def peak_rss_bytes() -> int:
    """Peak resident memory of this process image (`VmHWM`; `ru_maxrss` would carry the parent's peak over `exec`)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


# SmolLM2-135M's architecture, for --random-weights.
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (forward, backward and update), synchronised on a GPU."""

    def __init__(self):
        self.times, self.start = [], None

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.times.append(time.perf_counter() - self.start)


class PeakMemory(TrainerCallback):
    """Resets the GPU peak after the warm-up steps, so the peak is that of the measured steps."""

    def __init__(self, warmup: int):
        self.warmup = warmup

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


def pairs(num_pairs: int, tokens: int, vocab_size: int) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    chosen = torch.randint(3, vocab_size, (num_pairs, tokens), generator=generator)
    rejected = chosen.clone()
    rejected[:, tokens // 2 :] = torch.randint(3, vocab_size, (num_pairs, tokens - tokens // 2), generator=generator)
    return Dataset.from_dict(
        {"chosen_ids": chosen.tolist(), "rejected_ids": rejected.tolist(), "prompt_length": [tokens // 2] * num_pairs}
    )


def run_variant(options: argparse.Namespace) -> dict:
    cuda = torch.cuda.is_available()
    steps = options.warmup + options.steps
    if not options.random_weights:  # a Hub id resolves offline to the packaged copy (see adajudge_hf.backbones)
        options.backbone = str(resolve_backbone(options.backbone))
    common = dict(
        per_device_train_batch_size=options.pairs,
        max_steps=steps,
        max_length=None,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=cuda,
        use_cpu=not cuda,
        seed=0,
    )
    dtype = torch.bfloat16 if cuda else torch.float32
    lora = dict(
        r=options.lora_r, lora_alpha=2 * options.lora_r, lora_dropout=0.0, target_modules=BACKBONE_TARGET_MODULES
    )
    torch.manual_seed(0)
    if options.variant == "stock":
        if options.random_weights:
            model = LlamaForSequenceClassification._from_config(LlamaConfig(**SMOLLM2_135M, num_labels=1), dtype=dtype)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(options.backbone, num_labels=1, dtype=dtype)
        trainer_cls, args = RewardTrainer, RewardConfig(options.output_dir, **common)
        peft_config = LoraConfig(task_type="SEQ_CLS", modules_to_save=["score"], **lora)
    else:
        if options.random_weights:
            config = AdaJudgeConfig(
                text_config=LlamaConfig(**SMOLLM2_135M), num_refinement_blocks=options.k, pad_token_id=0
            )
            model = AdaJudgeForRewardModeling._from_config(config, dtype=dtype)
        else:
            model = AdaJudgeForRewardModeling.from_backbone(
                options.backbone, num_refinement_blocks=options.k, dtype=dtype
            )
        model.judge_head.float()  # fp32 heads on a bf16 backbone, as `_keep_in_fp32_modules_strict` intends
        trainer_cls, args = AdaJudgeRewardTrainer, AdaJudgeRewardConfig(options.output_dir, **common)
        peft_config = LoraConfig(task_type="SEQ_CLS", **lora)
    vocab_size = model.config.get_text_config().vocab_size
    model.config.get_text_config().pad_token_id = 0
    timer = StepTimer()
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=pairs(options.pairs * steps, options.tokens, vocab_size),
        # The data is pre-tokenised: the tokenizer only gives the trainers their pad token (id 0 in both).
        processing_class=make_tiny_tokenizer()
        if options.random_weights
        else AutoTokenizer.from_pretrained(options.backbone),
        peft_config=peft_config,
        callbacks=[timer, PeakMemory(options.warmup)],
    )
    trainer.train()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    measured = timer.times[options.warmup :]
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
    return {
        "variant": options.variant,
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)",
        "dtype": str(dtype).replace("torch.", ""),
        "step_s": statistics.median(measured),
        "step_s_all": measured,
        "peak_memory_gib": peak / 2**30,
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if cuda else "process peak RSS",
        "trainable_params": trainable,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=BACKBONE, help="Hub id or folder of the backbone")
    parser.add_argument("--random-weights", action="store_true", help="SmolLM2-135M's architecture, random weights")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per sequence (prompt + response)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--k", type=int, default=3, help="AdaJudge refinement blocks")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variant", choices=["stock", "adajudge"], help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    options = parser.parse_args(argv)
    if options.variant is not None:
        print(json.dumps(run_variant(options)))
        return

    results = []
    for variant in ("stock", "adajudge"):
        with tempfile.TemporaryDirectory() as output_dir:
            command = [sys.executable, __file__, "--variant", variant, "--output-dir", output_dir]
            command += argv
            completed = subprocess.run(command, capture_output=True, text=True, check=False)
            if completed.returncode != 0:
                raise RuntimeError(f"{variant} failed:\n{completed.stderr[-4000:]}")
            results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    print(json.dumps(results, indent=1))
    lines = [
        f"{options.pairs} pairs x {options.tokens} tokens, LoRA r={options.lora_r}, {results[0]['device']}, "
        f"{results[0]['dtype']}, median of {options.steps} steps after {options.warmup} warm-up",
        "",
        "| model | step time (s) | peak memory (GiB) | trainable params |",
        "|---|---|---|---|",
    ]
    for result in results:
        name = "TRL RewardTrainer (score head)" if result["variant"] == "stock" else f"AdaJudge (K={options.k})"
        lines.append(
            f"| {name} | {result['step_s']:.3f} | {result['peak_memory_gib']:.2f} | {result['trainable_params']:,} |"
        )
    stock, judge = results
    lines.append(
        f"\nRatios AdaJudge / stock: step time {judge['step_s'] / stock['step_s']:.3f}, "
        f"peak memory {judge['peak_memory_gib'] / stock['peak_memory_gib']:.3f}"
    )
    results_dir = Path(__file__).resolve().parent / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "train_step.json").write_text(json.dumps({"settings": vars(options), "results": results}, indent=2))
    (results_dir / "train_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
