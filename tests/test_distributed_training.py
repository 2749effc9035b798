"""Two accelerate processes (DDP over gloo) train the tiny judge along the loss curve of one process.

On a CPU-only machine `accelerate launch --multi_gpu --num_processes 2` runs torchrun with two processes and gloo,
while `--cpu --num_processes 2` silently runs one: the script asserts a world size of 2, and so does this test.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import loss_logs, run_script

from adajudge_hf.testing import free_port


SCRIPT = Path(__file__).parent / "scripts" / "train_distributed.py"


@pytest.mark.slow
def test_two_processes_follow_the_loss_curve_of_one_with_the_same_global_batch(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    single, double = tmp_path / "one", tmp_path / "two"
    run_script([sys.executable, str(SCRIPT), "1", "8", str(single)])
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    run_script(launch + [str(SCRIPT), "2", "4", str(double)])
    one, two = loss_logs(single), loss_logs(double)

    assert [json.loads((double / f"rank{rank}.json").read_text())["num_processes"] for rank in (0, 1)] == [2, 2]
    assert [log["step"] for log in two] == [log["step"] for log in one] == list(range(1, 7))
    for one_log, two_log in zip(one, two):
        assert two_log["loss"] == pytest.approx(one_log["loss"], rel=1e-4, abs=1e-5), (one_log, two_log)
        assert two_log["accuracy"] == pytest.approx(one_log["accuracy"], abs=1e-6)
        assert two_log["router_entropy"] == pytest.approx(one_log["router_entropy"], rel=1e-4)
    assert one[-1]["loss"] < one[0]["loss"]  # it trains
