"""Evaluate a tiny random judge on synthetic preference pairs, under `accelerate launch` or as one plain process.

    python score_distributed.py NUM_PROCESSES OUTPUT_DIR
    accelerate launch --multi_gpu --num_processes 2 score_distributed.py 2 OUTPUT_DIR

Asserts the world size, writes the evaluation report to OUTPUT_DIR (main process) and `rank<i>.json` per process, so
`tests/test_distributed_scoring.py` can compare one process with several.
"""

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.evaluation import distributed_state, evaluate_model
from adajudge_hf.testing import make_tiny_judge_config, make_tiny_tokenizer


def main(expected_processes: int, output_dir: Path) -> None:
    state = distributed_state()  # PartialState(cpu=True) on CPU, so that torchrun's processes form one group
    assert state.num_processes == expected_processes, f"world size {state.num_processes} != {expected_processes}"
    torch.set_num_threads(1)
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(0)
    judge = AdaJudgeForRewardModeling(make_tiny_judge_config(tokenizer)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random heads, so the routers and every expert matter
        for parameter in judge.judge_head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    pairs = Dataset.from_list(
        [
            {
                "prompt": f"Question {i}: " + "why " * (i % 7),
                "chosen": "a helpful answer " * (1 + i % 5),
                "rejected": "a rude reply " * (1 + 3 * i % 11),
            }
            for i in range(23)
        ]
    )
    result = evaluate_model(judge, tokenizer, "pairs", pairs, output_dir, max_batch_tokens=96, show_progress=False)
    rank_file = output_dir / f"rank{state.process_index}.json"
    rank_file.write_text(json.dumps({"num_processes": state.num_processes, "accuracy": result.metrics["accuracy"]}))


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
