"""Train a tiny judge for a few steps, under `accelerate launch` or as one plain process, and record the loss curve.

    python train_distributed.py NUM_PROCESSES PER_DEVICE_BATCH OUTPUT_DIR
    accelerate launch --multi_gpu --num_processes 2 train_distributed.py 2 PER_DEVICE_BATCH OUTPUT_DIR

Under `tests/scripts/fsdp_on_cpu.py` the same run goes through accelerate's FSDP2 path. Asserts the world size (a misconfigured launch silently runs one process per copy), writes `rank<i>.json` per process
and `log_history.json` (main process), so `tests/test_distributed_training.py` can compare one process with two at
the same global batch.
"""

import json
import random
import sys
from pathlib import Path

import torch
from datasets import Dataset
from torch.distributed.fsdp import FSDPModule

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.testing import make_tiny_judge_config, make_tiny_tokenizer
from adajudge_hf.trainer import AdaJudgeRewardConfig, AdaJudgeRewardTrainer


WORDS = "the quick brown fox jumps over lazy dog reward model scores how response prompt capital France".split()


def pairs(n: int) -> Dataset:
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        body = " ".join(rng.choices(WORDS, k=rng.randint(2, 6)))
        rows.append(
            {
                "prompt": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=4)) + "?"}],
                "chosen": [{"role": "assistant", "content": body + " good"}],
                "rejected": [{"role": "assistant", "content": body + " bad"}],
            }
        )
    return Dataset.from_list(rows)


def describe_processes(trainer: AdaJudgeRewardTrainer) -> dict:
    """World size, distributed type and the classes of the modules FSDP2 sharded as units (empty without FSDP)."""
    sharded = {
        type(m).__name__.removeprefix("FSDP") for m in trainer.model_wrapped.modules() if isinstance(m, FSDPModule)
    }
    return {
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
        "fsdp_units": sorted(sharded),
    }


def main(expected_processes: int, per_device_batch: int, output_dir: Path) -> None:
    torch.set_num_threads(1)
    args = AdaJudgeRewardConfig(
        str(output_dir),
        per_device_train_batch_size=per_device_batch,
        max_steps=6,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        use_cpu=True,
        bf16=False,
        report_to="none",
        disable_tqdm=True,
        activation_checkpointing=False,
    )
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(0)
    judge = AdaJudgeForRewardModeling(make_tiny_judge_config(tokenizer))
    trainer = AdaJudgeRewardTrainer(judge, args, train_dataset=pairs(48), processing_class=tokenizer)
    world_size = trainer.accelerator.num_processes
    assert world_size == expected_processes, f"world size {world_size} != {expected_processes}"
    trainer.train()
    rank = trainer.accelerator.process_index
    (output_dir / f"rank{rank}.json").write_text(json.dumps(describe_processes(trainer)))
    if trainer.accelerator.is_main_process:
        (output_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
