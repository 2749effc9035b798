"""`adajudge train`: end to end on a tiny backbone, YAML configs, the shipped recipes, data loading and bad input."""

import json
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


def test_bad_data_arguments_are_explained(backbone, tmp_path):
    base = ["train", "--model_name_or_path", str(backbone), "--output_dir", str(tmp_path / "out"), *CPU]
    with pytest.raises(ValueError, match="Unsupported dataset file"):
        adajudge([*base, "--dataset_name", str(write_jsonl(tmp_path / "prefs.txt", preference_rows(2)))])
    data = str(write_jsonl(tmp_path / "prefs.jsonl", preference_rows(2)))
    with pytest.raises(ValueError, match="no split 'test'.*--eval_strategy no"):
        adajudge([*base, "--dataset_name", data, "--eval_strategy", "steps"])
    with pytest.raises(ValueError, match="No dataset"):
        adajudge(base)
    with pytest.raises(ValueError, match="not a preference format"):
        adajudge([*base, "--dataset_name", str(write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}]))])
