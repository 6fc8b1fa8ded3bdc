"""Run a training script as N CPU processes under accelerate (gloo), or as one plain process, for the tests."""

from __future__ import annotations

import os
import subprocess
import sys


def launch(script: str, out, processes: int, accumulation: int = 1) -> str:
    """stdout of ``script OUT ACCUMULATION`` run by ``accelerate launch --multi_gpu`` (one process: plain python)."""
    command = [sys.executable, script, str(out), str(accumulation)]
    if processes > 1:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "0",
            *command[1:],
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def launch_three_ways(name: str, folder) -> None:
    """``tests/distributed/NAME`` three ways into FOLDER/two (2 processes), FOLDER/one (1 process) and
    FOLDER/accumulated (1 process, 2 micro-batches): the runs the two-process tests compare."""
    script = os.path.join(os.path.dirname(__file__), name)
    two = launch(script, folder / "two", 2)
    assert "processes=2 backend=gloo" in two, two[-2000:]
    launch(script, folder / "one", 1)
    launch(script, folder / "accumulated", 1, accumulation=2)
