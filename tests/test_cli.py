"""``hbnn.cli.exit_process``: how an ``hbnn`` process ends (torchrun workers skip teardown)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import atexit, sys
from hbnn.cli import exit_process
atexit.register(lambda: print("atexit ran", flush=True))
print("buffered line", end="")
sys.stderr.write("err line")
exit_process(3)
"""


@pytest.mark.parametrize("world, teardown", [(None, True), ("1", True), ("2", False), ("two", True)])
def test_exit_process_flushes_and_skips_teardown_only_in_workers(world, teardown):
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    if world is not None:
        env["WORLD_SIZE"] = world
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert done.stdout.startswith("buffered line") and done.stderr == "err line"
    assert ("atexit ran" in done.stdout) is teardown
