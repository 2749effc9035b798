"""The wheel users install holds every module, data file and card of the source tree, and both entry points.

The test suite runs on an editable install, which reads the source folders directly; only a built wheel shows a
module, a benchmark metric script or a card template that setup.cfg forgets to ship.
"""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
SHIPPED_FOLDERS = {  # source folder -> its place in the wheel (setup.cfg's package_dir)
    "src/adajudge_hf": "adajudge_hf",
    "modeling": "adajudge_hf/modeling",
    "hub_cards": "adajudge_hf/hub_cards",
}


@pytest.mark.slow
def test_the_wheel_ships_every_source_file_and_both_entry_points(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", tmp_path],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("adajudge_hf-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        entry_points = archive.read(entry_points).decode()

    expected = {
        f"{place}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, place in SHIPPED_FOLDERS.items()
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc")
    }
    assert sorted(expected - names) == []
    assert "adajudge = adajudge_hf.cli:main" in entry_points
    assert "adajudge = adajudge_hf.vllm:register" in entry_points  # vLLM's plugin hook
