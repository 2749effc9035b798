"""`adajudge train` under `accelerate launch`, recording the rewards the trained (still distributed) model gives.

    accelerate launch ... tests/scripts/train_cli_distributed.py RESULT_JSON <adajudge train flags ...>

When training ends, before the judge is saved, every process scores the probe conversations of `PROBES` with the
model as the trainer holds it (sharded under FSDP / ZeRO-3); the main process writes RESULT_JSON: those rewards, the
distributed type and the FSDP2 units, so a test can check that the saved judge reloads to the trained rewards.
"""

import json
import sys
from pathlib import Path

import torch
from train_distributed import describe_processes
from transformers import TrainerCallback

import adajudge_hf.train


PROBES = [
    [{"role": "user", "content": "Question 1?"}, {"role": "assistant", "content": "A good answer."}],
    [{"role": "user", "content": "Is the sky blue?"}, {"role": "assistant", "content": "bad"}],
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "It is 4, a good answer."}],
]


class RecordProbeRewards(TrainerCallback):
    def __init__(self, trainer, result_path: Path):
        self.trainer, self.result_path = trainer, result_path

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        batch = processing_class.apply_chat_template(PROBES, padding=True, return_tensors="pt", return_dict=True)
        model.eval()
        with torch.no_grad():  # collective when sharded: every process runs it
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if self.trainer.accelerator.is_main_process:
            record = {"rewards": logits[:, 0].float().tolist(), **describe_processes(self.trainer)}
            self.result_path.write_text(json.dumps(record))


def main(result_path: Path, argv: list[str]) -> None:
    torch.set_num_threads(1)

    class ProbingTrainer(adajudge_hf.train.AdaJudgeRewardTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(RecordProbeRewards(self, result_path))

    adajudge_hf.train.AdaJudgeRewardTrainer = ProbingTrainer
    parser = adajudge_hf.train.make_parser()
    adajudge_hf.train.train(*parser.parse_args_and_config(argv))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
