"""`adajudge train`: end to end on a tiny backbone, YAML configs, the shipped recipes, data loading and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adajudge_hf.checkpoint import detect_judge_form, load_judge
from adajudge_hf.cli import main as adajudge
from adajudge_hf.testing import save_tiny_causal_lm
from adajudge_hf.train import load_preference_data, make_parser


RECIPES = Path(__file__).resolve().parents[1] / "examples" / "recipes"
CPU = ["--use_cpu", "--bf16", "false", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no"]
TINY_JUDGE = ["--num_refinement_blocks", "1", "--head_hidden_size", "8", "--activation_checkpointing", "false"]


DEBUG_HINT = " (--debug shows the traceback)"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def preference_rows(n: int) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": [{"role": "assistant", "content": "A good answer."}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("backbone"))


@pytest.mark.parametrize(
    "mode, form", [(["--use_peft", "--lora_r", "4"], "adapter"), (["--freeze_backbone"], "heads")]
)
def test_train_saves_a_judge_that_loads_back(backbone, tmp_path, mode, form):
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(8))
    out = tmp_path / "out"
    argv = ["train", "--model_name_or_path", str(backbone), "--dataset_name", str(data), "--output_dir", str(out)]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "2", *CPU, *TINY_JUDGE, *mode]
    assert adajudge(argv) == 0
    assert detect_judge_form(out / "judge") == form
    judge = load_judge(out / "judge")
    assert judge.config.num_refinement_blocks == 1
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.isfinite(judge(input_ids=ids, prompt_lengths=torch.tensor([2])).logits).all()


def test_yaml_config_sets_defaults_that_flags_override(backbone, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(8))
    config = tmp_path / "recipe.yaml"
    recipe = {
        "model_name_or_path": str(backbone),
        "dataset_name": str(data),
        "output_dir": str(tmp_path / "out"),
        "max_steps": 1,
        "per_device_train_batch_size": 2,
        "learning_rate": 1.0e-3,
        "focal_gamma": 0.0,
        "num_refinement_blocks": 2,
    }
    config.write_text(yaml.safe_dump(recipe))
    script_args, training_args, model_args, judge_args = make_parser().parse_args_and_config(
        ["--config", str(config), "--num_refinement_blocks", "1", *CPU]
    )
    assert training_args.focal_gamma == 0.0 and training_args.learning_rate == 1e-3
    assert judge_args.num_refinement_blocks == 1 and model_args.lora_task_type == "SEQ_CLS"
    assert adajudge(["train", "--config", str(config), "--num_refinement_blocks", "1", *CPU]) == 0
    judge = load_judge(tmp_path / "out" / "judge")
    assert judge.config.num_refinement_blocks == 1 and judge.config.focal_gamma == 0.0  # the objective is recorded


@pytest.mark.parametrize("recipe", sorted(path.name for path in RECIPES.glob("*.yaml")))
def test_recipes_parse(recipe, tmp_path):
    # The recipes are for GPUs (bf16); override that to parse them on any machine.
    script_args, training_args, model_args, judge_args = make_parser().parse_args_and_config(
        ["--config", str(RECIPES / recipe), "--output_dir", str(tmp_path), "--use_cpu", "--bf16", "false"]
    )
    assert script_args.dataset_name == "nvidia/HelpSteer3" and script_args.dataset_format == "helpsteer3"
    assert training_args.strength_column == "strength" and model_args.use_peft
    expected_k = {"phi35_mini_k2.yaml": 2}.get(recipe, 3)
    assert judge_args.num_refinement_blocks == expected_k


def test_helpsteer3_files_are_converted(tmp_path):
    rows = [
        {"context": [{"role": "user", "content": "a?"}], "response1": "x", "response2": "y", "overall_preference": p}
        for p in (-3, 0, 2)
    ]
    data = write_jsonl(tmp_path / "hs3.jsonl", rows)
    script_args = make_parser().parse_args_and_config(
        ["--dataset_name", str(data), "--dataset_format", "helpsteer3", *CPU, "--output_dir", str(tmp_path)]
    )[0]
    train = load_preference_data(script_args)["train"]
    assert train["strength"] == [3.0, 2.0] and train["chosen"][0][0]["content"] == "x"


def user_error(argv: list[str], capsys) -> str:
    """Run `adajudge` on a user error: exit code 2, one error line, no traceback or warning dump before it."""
    capsys.readouterr()
    assert adajudge(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "warnings.warn" not in err and "FutureWarning" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("adajudge train: error: ")]
    assert len(lines) == 1 and lines[0].endswith(DEBUG_HINT), err
    return lines[0].removeprefix("adajudge train: error: ").removesuffix(DEBUG_HINT)


def test_bad_data_arguments_are_explained(backbone, tmp_path, capsys):
    base = ["train", "--model_name_or_path", str(backbone), "--output_dir", str(tmp_path / "out"), *CPU]
    message = user_error(
        [*base, "--dataset_name", str(write_jsonl(tmp_path / "prefs.txt", preference_rows(2)))], capsys
    )
    assert message.startswith("Unsupported dataset file 'prefs.txt'")
    data = str(write_jsonl(tmp_path / "prefs.jsonl", preference_rows(2)))
    message = user_error([*base, "--dataset_name", data, "--eval_strategy", "steps"], capsys)
    assert "no split 'test'" in message and "--eval_strategy no" in message
    assert user_error(base, capsys).startswith("No dataset")
    message = user_error([*base, "--dataset_name", str(write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}]))], capsys)
    assert "not a preference format" in message


def test_unreadable_training_files_are_named_with_the_line(backbone, tmp_path, capsys):
    """An empty or row-less training file, or a malformed line, gives an error that names the file (and the line),
    not a `StopIteration` or `DatasetGenerationError` from deep inside `datasets`."""
    base = ["train", "--model_name_or_path", str(backbone), "--output_dir", str(tmp_path / "out"), *CPU]
    cases = {
        "empty.jsonl": ("", "{path} is empty"),
        "blank.jsonl": ("\n\n", "{path} is empty"),
        "none.json": ("[]", "{path} holds no rows"),
        "broken.jsonl": (
            json.dumps(preference_rows(1)[0]) + '\n{"prompt": "a", "chosen": "b"\n',
            "Line 2 of {path} is not valid JSON: Expecting ',' delimiter",
        ),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        message = user_error([*base, "--dataset_name", str(path)], capsys)
        assert message.startswith("Cannot read the training data: " + expected.format(path=path)), message
        assert message.endswith("Fix the file or pass another `--dataset_name`.")
    message = user_error([*base, "--dataset_name", str(tmp_path / "missing.jsonl")], capsys)
    assert message.startswith(f"No such dataset file: {tmp_path / 'missing.jsonl'}.")


def test_config_errors_and_flag_errors_end_in_one_line(backbone, tmp_path, capsys):
    base = ["train", "--model_name_or_path", str(backbone), "--output_dir", str(tmp_path / "out"), *CPU]
    config = tmp_path / "broken.yaml"
    config.write_text("model_name_or_path: x\n  learning_rate: [\n")
    message = user_error([*base, "--config", str(config)], capsys)
    assert message.startswith("The `--config` file is not valid YAML:") and "line 2" in message
    data = str(write_jsonl(tmp_path / "prefs.jsonl", preference_rows(2)))
    # No FutureWarning dump first: TRL's `gradient_checkpointing=True` default is set by its current name.
    message = user_error(
        [*base[: -len(CPU)], "--dataset_name", data, "--focal_gamma", "-1", "--use_cpu", "--bf16", "false"], capsys
    )
    assert message.startswith("`focal_gamma` must be >= 0")
    training_args = make_parser().parse_args_and_config(["--output_dir", str(tmp_path), "--use_cpu"])[1]
    assert training_args.activation_checkpointing is True  # TRL's default is kept


@pytest.mark.slow
def test_module_entry_point_reports_user_errors_in_one_line(tmp_path):
    """`accelerate launch -m adajudge_hf.train` runs the module itself: the same one-line errors as `adajudge train`."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"chosen": "a"\n')
    argv = ["--model_name_or_path", "unused", "--dataset_name", str(broken), "--output_dir", str(tmp_path), *CPU]
    completed = subprocess.run(
        [sys.executable, "-m", "adajudge_hf.train", *argv], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr
    assert (
        f"adajudge train: error: Cannot read the training data: Line 1 of {broken} is not valid JSON"
        in completed.stderr
    )


def test_the_dataset_summary_with_prompt_lengths_is_shown(backbone, tmp_path, capsys):
    rows = [{"prompt": "", "chosen": " A good answer.", "rejected": " bad"} for _ in range(4)]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    argv = ["train", "--model_name_or_path", str(backbone), "--dataset_name", str(data), "--output_dir", str(tmp_path)]
    assert adajudge([*argv, "--max_steps", "1", "--per_device_train_batch_size", "2", *CPU, *TINY_JUDGE]) == 0
    err = capsys.readouterr().err
    assert "train dataset: kept 4 of 4 pairs" in err and "min 0, mean 0.0, max 0; 4 with no prompt" in err
    assert "EVERY pair of the train dataset has an empty prompt although it has a `prompt` column" in err


# ---------------------------------------------------------------------------------------------------------------------
# Every flag checked before the first step; interrupted runs keep their checkpoints; one error handler for the CLI
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--use_peft", "--save_form", "heads"], "--save_form heads saves the heads alone and would drop the trained "
         "LoRA adapters. Use --save_form adapter (adapters + heads) or --save_form full (merged)."),
        (["--save_form", "adapter"], "--save_form adapter saves LoRA adapters with the heads, but this run trains no "
         "LoRA adapters. Add --use_peft, or save with --save_form full."),
        (["--save_form", "heads"], "--save_form heads saves the heads alone, but the backbone is trained too. Add "
         "--freeze_backbone to train the heads only, or use --save_form full."),
        (["--freeze_backbone", "--use_peft"], "--freeze_backbone trains the heads only, but --use_peft adds LoRA "
         "adapters to the backbone. Drop --use_peft to train heads on a frozen backbone, or drop --freeze_backbone "
         "for LoRA."),
    ],
)  # fmt: skip
def test_flag_combinations_are_refused_before_anything_is_trained_or_written(backbone, tmp_path, capsys, flags,
                                                                             expected):  # fmt: skip
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(8))
    out = tmp_path / "out"
    argv = ["train", "--model_name_or_path", str(backbone), "--dataset_name", str(data), "--output_dir", str(out)]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "2", "--save_steps", "1", *CPU[:-2], *TINY_JUDGE]
    assert user_error([*argv, *flags], capsys) == expected
    assert not out.exists()  # refused before the first step: no checkpoint, no run folder


@pytest.mark.parametrize("missing", ["{tmp}/no-such-backbone", "./no-such-backbone", "outputs/run-1/backbone"])
def test_a_missing_local_model_folder_is_named(tmp_path, capsys, missing):
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(2))
    folder = missing.format(tmp=tmp_path)
    argv = ["train", "--model_name_or_path", folder, "--dataset_name", str(data), "--output_dir", str(tmp_path), *CPU]
    message = user_error(argv, capsys)
    assert message.startswith(f"{folder} does not exist: there is no such local folder."), message
    assert "Repo id must be" not in message


@pytest.mark.slow
def test_an_interrupted_run_keeps_its_checkpoints_and_says_how_to_resume(backbone, tmp_path, capsys, monkeypatch):
    from adajudge_hf.trainer import AdaJudgeRewardTrainer

    data = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(8))
    out = tmp_path / "out"
    argv = ["train", "--model_name_or_path", str(backbone), "--dataset_name", str(data), "--output_dir", str(out)]
    argv += ["--max_steps", "3", "--per_device_train_batch_size", "2", "--save_steps", "1", "--use_peft"]
    argv += [*CPU[:-2], *TINY_JUDGE, "--lora_r", "4"]
    training_step = AdaJudgeRewardTrainer.training_step

    def interrupted_at_step_2(self, *args, **kwargs):  # Ctrl-C during the second step
        if self.state.global_step == 1:
            raise KeyboardInterrupt
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(AdaJudgeRewardTrainer, "training_step", interrupted_at_step_2)
    capsys.readouterr()
    assert adajudge(argv) == 130
    checkpoint = out / "checkpoint-1"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"adajudge train: interrupted before the judge was saved; resume from {checkpoint} with "
        f"--resume_from_checkpoint {checkpoint}."
    )
    assert detect_judge_form(checkpoint) == "adapter" and not (out / "judge").exists()
    load_judge(checkpoint)  # what is finished opens as a judge
    monkeypatch.setattr(AdaJudgeRewardTrainer, "training_step", training_step)
    assert adajudge([*argv, "--resume_from_checkpoint", str(checkpoint)]) == 0
    assert detect_judge_form(out / "judge") == "adapter" and (out / "checkpoint-3").is_dir()


def bad_input_of_every_command(tmp_path: Path) -> dict[str, list[str]]:
    missing = str(tmp_path / "no-such-judge")
    return {
        "train": ["train", "--model_name_or_path", missing, "--output_dir", str(tmp_path / "out"), *CPU],
        "evaluate": ["evaluate", "--model", missing, "--benchmark", "pairs", "--data", "x.jsonl", "--output-dir", "o"],
        "push": ["push", missing, "org/judge", "--token", "hf_x"],
        "serve": ["serve", missing],
        "demo": ["demo", "--validation_fraction", "0"],
    }


@pytest.mark.parametrize("command", ["train", "evaluate", "push", "serve", "demo"])
def test_every_command_has_one_error_handler_and_debug_shows_the_traceback(tmp_path, capsys, command):
    argv = bad_input_of_every_command(tmp_path)[command]
    capsys.readouterr()
    assert adajudge(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"adajudge {command}: error: ") and err[0].endswith(DEBUG_HINT), err
    with pytest.raises((ValueError, OSError)):
        adajudge([*argv, "--debug"])
    with pytest.raises((ValueError, OSError)):
        adajudge(["--debug", *argv])


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"]])
def test_help_piped_into_a_reader_that_stops_early_ends_quietly(argv):
    """`adajudge --help | head`: the reader goes away; no BrokenPipeError traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "adajudge_hf.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()  # before the command writes anything (it is still importing)
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) in (0, 141)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_evaluate_help_explains_benchmark_and_the_columns_of_local_files(capsys):
    with pytest.raises(SystemExit):
        adajudge(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--benchmark {rm-bench,judgebench,reward-bench-2,reward-bench,pairs} what to score" in text
    assert (
        "reward-bench-2 id, subset, prompt, chosen (list of correct completions), rejected (list), num_correct" in text
    )
    assert "reward-bench id, subset, prompt, chosen, rejected" in text
