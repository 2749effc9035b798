"""Sharded training through `accelerate launch` with two CPU processes (gloo): FSDP2 and DeepSpeed ZeRO-3.

Sharding, the loss curve against one process, the judges `adajudge train` saves (gathered on the main process) and
scoring them with two processes. `tests/accelerate/{fsdp2,deepspeed_zero3}_cpu.yaml` are the GPU recipes of
`examples/accelerate/` with 2 processes, CPU and fp32. accelerate only shards with FSDP for accelerator-backed process
groups, so `tests/scripts/fsdp_on_cpu.py` switches the CPU launch to accelerate's FSDP2 path (see its docstring);
everything after that — `fully_shard` per `_no_split_modules`, the full state dict gathered for `save_judge` — is
the code a multi-GPU run executes. DeepSpeed runs as is with its CPU accelerator (`DS_ACCELERATOR=cpu`, gloo).
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_script
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from adajudge_hf.checkpoint import HEADS_FILE, detect_judge_form, load_judge, save_judge
from adajudge_hf.testing import free_port, save_tiny_causal_lm


pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parent / "scripts"
CONFIGS = Path(__file__).parent / "accelerate"
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
SHARD_UNITS = {"AdaJudgeRefinementBlock", "Qwen3DecoderLayer"}  # the tiny judge's `_no_split_modules`
TRAIN_FLAGS = ["--max_steps", "3", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2"]
TRAIN_FLAGS += ["--use_cpu", "--bf16", "false", "--report_to", "none", "--disable_tqdm", "true"]
TRAIN_FLAGS += ["--save_strategy", "no", "--num_refinement_blocks", "1", "--head_hidden_size", "8"]
TRAIN_FLAGS += ["--activation_checkpointing", "false"]
LORA = ["--use_peft", "--lora_r", "4"]
RUNS = {  # name: (sharding, extra `adajudge train` flags, saved form, reward tolerance against the trained model)
    "fsdp-full": ("fsdp", [], "full", 1e-5),
    "fsdp-lora": ("fsdp", LORA, "adapter", 1e-5),
    "fsdp-lora-bf16": ("fsdp", [*LORA, "--dtype", "bfloat16"], "adapter", 1e-2),
    "zero3-lora": ("zero3", LORA, "adapter", 1e-5),
}


def sharded_launch(sharding: str, script: str, *args: str) -> None:
    if sharding == "fsdp":
        config, command = CONFIGS / "fsdp2_cpu.yaml", [str(SCRIPTS / "fsdp_on_cpu.py"), str(SCRIPTS / script)]
    else:
        config, command = CONFIGS / "deepspeed_zero3_cpu.yaml", [str(SCRIPTS / script)]
    run_script(
        [ACCELERATE, "launch", "--config_file", str(config), "--main_process_port", str(free_port()), *command, *args],
        DS_ACCELERATOR="cpu",
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsdp")
    save_tiny_causal_lm(root / "backbone")
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": [{"role": "assistant", "content": "A good answer."}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        }
        for i in range(16)
    ]
    (root / "prefs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


@pytest.fixture(scope="module")
def trained(workspace) -> dict[str, tuple[Path, dict]]:
    """Each run of RUNS trained once with `adajudge train`: (judge folder, the run's result JSON)."""
    runs = {}
    for name, (sharding, flags, _, _) in RUNS.items():
        output_dir, result = workspace / name, workspace / f"{name}.json"
        argv = ["--model_name_or_path", str(workspace / "backbone"), "--dataset_name", str(workspace / "prefs.jsonl")]
        argv += [*TRAIN_FLAGS, *flags, "--output_dir", str(output_dir)]
        sharded_launch(sharding, "train_cli_distributed.py", str(result), *argv)
        runs[name] = output_dir / "judge", json.loads(result.read_text())
    return runs


def probe_rewards(model, folder: Path) -> torch.Tensor:
    sys.path.insert(0, str(SCRIPTS))
    from train_cli_distributed import PROBES

    batch = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        PROBES, padding=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        return model(**batch).logits[:, 0].float()


def test_fsdp2_shards_the_judge_and_follows_the_loss_curve_of_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_script([sys.executable, str(SCRIPTS / "train_distributed.py"), "1", "8", str(one)])
    sharded_launch("fsdp", "train_distributed.py", "2", "4", str(two))

    ranks = [json.loads((two / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["num_processes"], r["distributed_type"]) for r in ranks] == [(2, "FSDP")] * 2
    assert all(SHARD_UNITS <= set(r["fsdp_units"]) for r in ranks), ranks
    curves = [[log for log in json.loads((d / "log_history.json").read_text()) if "loss" in log] for d in (one, two)]
    assert [log["step"] for log in curves[1]] == [log["step"] for log in curves[0]] == list(range(1, 7))
    for one_log, two_log in zip(*curves):
        assert two_log["loss"] == pytest.approx(one_log["loss"], rel=1e-4, abs=1e-5), (one_log, two_log)
        assert two_log["router_entropy"] == pytest.approx(one_log["router_entropy"], rel=1e-4)
    assert curves[0][-1]["loss"] < curves[0][0]["loss"]


@pytest.mark.parametrize("name", list(RUNS))
def test_sharded_training_saves_a_judge_that_reloads_in_every_form_with_the_trained_rewards(trained, tmp_path, name):
    folder, result = trained[name]
    sharding, _, form, tolerance = RUNS[name]
    if sharding == "fsdp":
        assert result["distributed_type"] == "FSDP" and SHARD_UNITS <= set(result["fsdp_units"]), result
    else:
        assert result["distributed_type"] == "DEEPSPEED", result
    assert detect_judge_form(folder) == form
    if form != "full":  # the gathered heads keep the dtype they trained in (fp32 beside a bf16 backbone)
        with safe_open(folder / HEADS_FILE, "pt") as heads:
            assert {heads.get_tensor(key).dtype for key in heads.keys()} == {torch.float32}
    trained_rewards = torch.tensor(result["rewards"])
    dtype = torch.bfloat16 if name.endswith("bf16") else torch.float32

    judge = load_judge(folder, dtype=dtype)
    torch.testing.assert_close(probe_rewards(judge, folder), trained_rewards, atol=tolerance, rtol=0)
    merged = save_judge(judge, tmp_path / "merged", form="full", tokenizer=AutoTokenizer.from_pretrained(folder))
    auto = AutoModelForSequenceClassification.from_pretrained(merged, dtype=dtype).eval()
    torch.testing.assert_close(probe_rewards(auto, merged), trained_rewards, atol=tolerance, rtol=0)


def test_two_process_scoring_of_an_fsdp_saved_judge_matches_one_process(trained, workspace, tmp_path):
    folder, _ = trained["fsdp-lora"]
    evaluate = ["-m", "adajudge_hf.evaluation.cli", "--model", str(folder), "--benchmark", "pairs"]
    evaluate += ["--data", str(workspace / "prefs.jsonl")]
    run_script([sys.executable, *evaluate, "--output-dir", str(tmp_path / "one")])
    launch = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    run_script(launch + evaluate + ["--output-dir", str(tmp_path / "two")])

    one, two = (
        [json.loads(line) for line in (tmp_path / d / "rewards.jsonl").read_text().splitlines()]
        for d in ("one", "two")
    )
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two")]
    assert [m["scoring"]["num_processes"] for m in metrics] == [1, 2]
    assert len(one) == len(two) == 16
    for a, b in zip(one, two):
        assert b["score_chosen"] == pytest.approx(a["score_chosen"], abs=1e-5)
        assert b["score_rejected"] == pytest.approx(a["score_rejected"], abs=1e-5)
