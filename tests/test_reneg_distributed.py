"""Two CPU processes (accelerate, gloo) train the same embedding as one process with the same effective batch,
and as one process that accumulates gradients over two micro-batches."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from negguide.reneg import NegativeEmbedding, null_embedding
from negguide.testing.tiny import tiny_pipeline

SCRIPT = os.path.join(os.path.dirname(__file__), "distributed", "reneg_two_process.py")


def _launch(out, processes: int, accumulation: int = 1) -> str:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               SCRIPT, str(out), str(accumulation)]
    if processes == 1:
        command = [sys.executable, SCRIPT, str(out), str(accumulation)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_two_processes_train_like_one(tmp_path):
    two = _launch(tmp_path / "two", 2)
    assert "processes=2 backend=gloo" in two
    _launch(tmp_path / "one", 1)
    _launch(tmp_path / "accumulated", 1, accumulation=2)
    load = lambda name: NegativeEmbedding.load(str(tmp_path / name / "negative_embedding.safetensors"))
    one = load("one")
    assert one.metadata["steps"] == "3"
    for name in ("two", "accumulated"):
        other = load(name)
        for key, tensor in one.tensors.items():
            torch.testing.assert_close(other.tensors[key], tensor, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
    untrained = null_embedding(tiny_pipeline("sd"), "sd")
    assert not torch.allclose(untrained.tensors["prompt_embeds"], one.tensors["prompt_embeds"], atol=1e-3)
