"""Train a tiny judge on strength-weighted pairs, under `accelerate launch` or as one process, and record the losses.

    python train_weighted_distributed.py NUM_PROCESSES PER_DEVICE_BATCH GRADIENT_ACCUMULATION OUTPUT_DIR
    accelerate launch --multi_gpu --num_processes 2 train_weighted_distributed.py 2 1 4 OUTPUT_DIR

The pairs of `train_distributed.pairs` get preference strengths 1, 4, 9, ... so that `tests/test_trainer.py` can check
that two processes with one pair each and gradient accumulation weight the pairs like one process with the whole
global batch (the strength weights are normalised once over the training set, not per micro-batch).
"""

import json
import sys
from pathlib import Path

import torch
from train_distributed import pairs

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.testing import make_tiny_judge_config, make_tiny_tokenizer
from adajudge_hf.trainer import AdaJudgeRewardConfig, AdaJudgeRewardTrainer


def main(expected_processes: int, per_device_batch: int, accumulation: int, output_dir: Path) -> None:
    torch.set_num_threads(1)
    args = AdaJudgeRewardConfig(
        str(output_dir),
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=accumulation,
        strength_column="strength",
        max_steps=3,
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
    data = pairs(24)
    data = data.add_column("strength", [float((i % 4 + 1) ** 2) for i in range(len(data))])
    trainer = AdaJudgeRewardTrainer(judge, args, train_dataset=data, processing_class=tokenizer)
    assert trainer.accelerator.num_processes == expected_processes, trainer.accelerator.num_processes
    trainer.train()
    if trainer.accelerator.is_main_process:
        (output_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
