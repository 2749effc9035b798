"""`adajudge train`: fine-tune an AdaJudge judge with TRL, in the style of TRL's `reward_modeling.py` script.

```bash
adajudge train --config examples/recipes/qwen3_4b_k3.yaml
adajudge train --model_name_or_path Qwen/Qwen3-0.6B --dataset_name prefs.jsonl --use_peft --output_dir out
accelerate launch --config_file examples/accelerate/ddp.yaml -m adajudge_hf.train --config <recipe.yaml>
```

Flags shared with TRL's script keep their names (`--model_name_or_path`, `--dataset_name`, `--use_peft`, `--lora_r`,
...); YAML files given with `--config` set defaults that command-line flags override. `--model_name_or_path` is a
backbone (a new judge is built around it) or a saved judge (training continues). After training, the judge is saved
with `save_judge` to `<output_dir>/judge` (`--judge_output_dir`), as adapter + heads with LoRA, heads alone with
`--freeze_backbone`, else as a full checkpoint (`--save_form`). Each `<output_dir>/checkpoint-N/` is a judge too (in
the form training resumes from), so any of them can be evaluated, served or resumed. Every flag is checked before
anything is loaded.
"""

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from datasets import DatasetDict, IterableDatasetDict, load_dataset
from datasets.exceptions import DatasetGenerationError
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from .cli import handle_errors
from .data import helpsteer3_to_preference
from .modeling.loading_adajudge import check_local_checkpoint
from .trainer import AdaJudgeRewardConfig, AdaJudgeRewardTrainer, judge_save_form


DATASET_FORMATS = ("preference", "helpsteer3")
LOCAL_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".json.gz": "json",
    ".jsonl.gz": "json",
    ".parquet": "parquet",
}


@dataclass
class AdaJudgeScriptArguments(ScriptArguments):
    """TRL's script arguments (dataset name, config, splits, streaming) plus the data format and the judge export."""

    dataset_format: str = field(
        default="preference",
        metadata={
            "help": "`preference`: TRL's preference formats (chosen/rejected, optional prompt, or pre-tokenised). "
            "`helpsteer3`: HelpSteer3 preference rows (context, response1, response2, overall_preference), converted "
            "with their |overall_preference| as the `strength` column.",
            "choices": DATASET_FORMATS,
        },
    )
    judge_output_dir: str | None = field(
        default=None, metadata={"help": "Folder of the saved judge. None: `<output_dir>/judge`."}
    )

    def __post_init__(self):
        if self.dataset_format not in DATASET_FORMATS:
            raise ValueError(f"`dataset_format` must be one of {DATASET_FORMATS}, got {self.dataset_format!r}.")


@dataclass
class AdaJudgeModelConfig(ModelConfig):
    """TRL's model arguments, with LoRA's task type defaulting to sequence classification (a reward model)."""

    lora_task_type: str = field(
        default="SEQ_CLS", metadata={"help": "Task type of the LoRA config; a judge is a SEQ_CLS model."}
    )


@dataclass
class JudgeArguments:
    """Architecture of a new judge (`AdaJudgeConfig` fields); unset fields keep the config defaults."""

    num_refinement_blocks: int | None = field(
        default=None, metadata={"help": "K, the refinement blocks of Stage I (paper: 3 for Qwen3, 2 for Phi-3.5)."}
    )
    pooling: str | None = field(
        default=None,
        metadata={"help": "`adaptive` (routed experts) or a static `last` / `mean` / `attention` baseline."},
    )
    head_hidden_size: int | None = field(default=None, metadata={"help": "Width of the score heads and router."})
    score_head: str | None = field(default=None, metadata={"help": "`mlp` (paper) or `linear`."})
    refinement_attention: str | None = field(default=None, metadata={"help": "`causal` or `bidirectional`."})
    attention_pooling_scope: str | None = field(default=None, metadata={"help": "`all` tokens or `response` only."})
    router_temperature: float | None = field(default=None, metadata={"help": "Softmax temperature of the router."})
    depth_router_include_input: bool | None = field(
        default=None, metadata={"help": "Whether the backbone output H0 is a candidate of the depth router."}
    )

    def to_kwargs(self) -> dict:
        return {name: value for name, value in vars(self).items() if value is not None}


def make_parser(prog: str | None = "adajudge train") -> TrlParser:
    return TrlParser((AdaJudgeScriptArguments, AdaJudgeRewardConfig, AdaJudgeModelConfig, JudgeArguments), prog=prog)


def load_preference_data(script_args: AdaJudgeScriptArguments) -> DatasetDict | IterableDatasetDict:
    """`--dataset_name` as a local json/jsonl(.gz)/parquet file (one `train` split), a local folder or a Hub dataset."""
    name = script_args.dataset_name
    if name is None:
        raise ValueError(
            "No dataset: pass `--dataset_name` (a Hub dataset, a folder or a .json/.jsonl/.parquet file)."
        )
    path = Path(name).expanduser()
    builder = next((b for suffix, b in LOCAL_FILE_BUILDERS.items() if path.name.lower().endswith(suffix)), None)
    if builder is not None and not path.exists():
        raise FileNotFoundError(
            f"No such dataset file: {name}. Pass an existing .json/.jsonl/.parquet file, a folder or a Hub dataset id."
        )
    if path.is_file():
        if builder is None:
            raise ValueError(
                f"Unsupported dataset file {path.name!r}: use .json, .jsonl (optionally .gz) or .parquet, or a Hub "
                "dataset name."
            )
        try:
            dataset = load_dataset(builder, data_files={"train": str(path)}, streaming=script_args.dataset_streaming)
        except (DatasetGenerationError, StopIteration, ValueError) as error:
            _explain_unreadable_file(path, error)
    else:
        dataset = load_dataset(name, name=script_args.dataset_config, streaming=script_args.dataset_streaming)
    if script_args.dataset_format == "helpsteer3":
        dataset = type(dataset)({split: helpsteer3_to_preference(data) for split, data in dataset.items()})
    return dataset


def _explain_unreadable_file(path: Path, error: BaseException):
    """Turn `datasets`' generic failure on a local file into the one-line reason `adajudge evaluate` gives (an empty
    file, line N is not valid JSON, ...), read with the evaluation reader; re-raise `error` if that finds none."""
    from .evaluation.data import read_records

    try:
        read_records(path)
    except ValueError as reason:
        raise ValueError(
            f"Cannot read the training data: {reason} Fix the file or pass another `--dataset_name`."
        ) from None
    raise error


def _split(dataset: DatasetDict | IterableDatasetDict, split: str, flag: str):
    if split not in dataset:
        raise ValueError(
            f"The dataset has no split {split!r} (splits: {list(dataset)}). Choose one with `--{flag}`"
            + (" or pass `--eval_strategy no`." if flag == "dataset_test_split" else ".")
        )
    return dataset[split]


def train(
    script_args: AdaJudgeScriptArguments,
    training_args: AdaJudgeRewardConfig,
    model_args: AdaJudgeModelConfig,
    judge_args: JudgeArguments,
) -> AdaJudgeRewardTrainer:
    """Train a judge and save it; returns the trainer. Every flag is checked before anything is loaded or trained."""
    if not model_args.model_name_or_path:
        raise ValueError("No model: pass --model_name_or_path (a backbone, or a judge saved by `adajudge train`).")
    check_local_checkpoint(model_args.model_name_or_path, "")  # a missing folder is named, not "Repo id must be ..."
    if training_args.freeze_backbone and model_args.use_peft:
        raise ValueError(
            "--freeze_backbone trains the heads only, but --use_peft adds LoRA adapters to the backbone. Drop "
            "--use_peft to train heads on a frozen backbone, or drop --freeze_backbone for LoRA."
        )
    judge_save_form(training_args.save_form, model_args.use_peft, training_args.freeze_backbone, cli=True)
    judge_dir = Path(script_args.judge_output_dir or os.path.join(training_args.output_dir, "judge"))
    if judge_dir.exists() and not judge_dir.is_dir():
        raise ValueError(f"{judge_dir} exists and is not a folder; choose another --judge_output_dir.")
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **judge_args.to_kwargs(),
    }
    model_init_kwargs = {key: value for key, value in model_init_kwargs.items() if value is not None}
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}

    dataset = load_preference_data(script_args)
    train_dataset = _split(dataset, script_args.dataset_train_split, "dataset_train_split")
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = _split(dataset, script_args.dataset_test_split, "dataset_test_split")

    peft_config = get_peft_config(model_args)
    trainer = AdaJudgeRewardTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=peft_config,
    )
    try:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    except KeyboardInterrupt:
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        kept = f"resume from {last} with --resume_from_checkpoint {last}" if last else "no checkpoint was saved yet"
        raise KeyboardInterrupt(f"interrupted before the judge was saved; {kept}.") from None

    trainer.save_judge(judge_dir)
    trainer.accelerator.print(
        f"Judge saved to {judge_dir} ({trainer.judge_save_form}); load it with `adajudge_hf.load_judge`."
    )
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # what `Trainer.end()` does in transformers >= 5.19
    return trainer


@contextmanager
def _package_logs_to_stderr(level: int):
    """Show the toolkit's log lines (the dataset summary, truncation and drop counts) while a command runs."""
    package_logger = logging.getLogger("adajudge_hf")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s adajudge_hf: %(message)s"))
    previous_level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(level)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)


@handle_errors("train")
def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    try:
        script_args, training_args, model_args, judge_args = parser.parse_args_and_config(argv)
    except yaml.YAMLError as error:
        raise ValueError(f"The `--config` file is not valid YAML: {error}") from None
    with _package_logs_to_stderr(logging.INFO if training_args.should_log else logging.WARNING):
        train(script_args, training_args, model_args, judge_args)
    return 0


if __name__ == "__main__":  # `accelerate launch -m adajudge_hf.train ...`
    sys.exit(main())
