"""Scoring under two accelerate processes gives the per-item rewards and metrics of one process.

On a CPU-only machine `accelerate launch --multi_gpu --num_processes 2` runs torchrun with two processes; the script
asserts a world size of 2, since a misconfigured launch silently runs one process per copy instead.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import run_script

from adajudge_hf.testing import free_port


SCRIPT = Path(__file__).parent / "scripts" / "score_distributed.py"


def run(command: list[str], output_dir: Path) -> tuple[dict, list[dict]]:
    run_script(command, timeout=300, PYTHONUNBUFFERED="1")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    records = [json.loads(line) for line in (output_dir / "rewards.jsonl").read_text().splitlines()]
    return metrics, records


@pytest.mark.slow
def test_two_processes_give_the_rewards_and_metrics_of_one(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    single, double = tmp_path / "one", tmp_path / "two"
    one_metrics, one_records = run([sys.executable, str(SCRIPT), "1", str(single)], single)
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    two_metrics, two_records = run(launch + [str(SCRIPT), "2", str(double)], double)

    assert [json.loads((double / f"rank{rank}.json").read_text())["num_processes"] for rank in (0, 1)] == [2, 2]
    assert (one_metrics["scoring"]["num_processes"], two_metrics["scoring"]["num_processes"]) == (1, 2)
    assert two_metrics["scoring"]["num_tokens"] == one_metrics["scoring"]["num_tokens"]
    assert len(two_records) == len(one_records) == 23
    for one, two in zip(one_records, two_records):  # same items, in the same (input) order
        assert two["index"] == one["index"] and two["correct"] == one["correct"]
        for key in ("score_chosen", "score_rejected"):
            assert two[key] == pytest.approx(one[key], abs=1e-5)
        for key in ("routing_weights_chosen", "depth_weights_rejected"):
            assert two[key] == pytest.approx(one[key], abs=1e-5)
    assert two_metrics["metrics"]["accuracy"] == one_metrics["metrics"]["accuracy"]
    assert two_metrics["metrics"] == pytest.approx(one_metrics["metrics"], abs=1e-6)
