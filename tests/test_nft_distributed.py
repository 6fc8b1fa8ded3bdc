"""Two CPU processes (accelerate, gloo) train the same DiffusionNFT LoRA as one process with the same effective
batch, and as one process accumulating gradients over two micro-batches: rewards, r (the step-wide std gathered
from both processes) and averaged gradients all match."""

from __future__ import annotations

import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "distributed"))
from launch_processes import launch  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "distributed", "nft_two_process.py")


def _launch(out, processes: int, accumulation: int = 1) -> str:
    return launch(SCRIPT, out, processes, accumulation)


def test_two_processes_train_like_one(tmp_path):
    two = _launch(tmp_path / "two", 2)
    assert "processes=2 backend=gloo" in two
    _launch(tmp_path / "one", 1)
    _launch(tmp_path / "accumulated", 1, accumulation=2)
    state = lambda name: json.loads((tmp_path / name / "checkpoint" / "state.json").read_text())  # noqa: E731
    tensors = lambda name, kind: load_file(str(tmp_path / name / "checkpoint" / f"{kind}.safetensors"))  # noqa: E731
    one = state("one")
    assert one["step"] == 2
    start = None
    for name in ("two", "accumulated"):
        other = state(name)
        for a, b in zip(one["history"], other["history"]):
            for key in ("reward", "reward_std", "loss", "policy", "grad_norm"):
                assert abs(a[key] - b[key]) <= 1e-4 * abs(a[key]) + 1e-8, (name, key, a[key], b[key])
        for kind in ("current", "old", "eval_ema", "optimizer"):
            reference = tensors("one", kind)
            for key, value in tensors(name, kind).items():
                torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-6, msg=f"{name} {kind} {key}")
        start = tensors(name, "current")
    trained = [k for k, v in start.items() if ".lora_B." in k and v.abs().max() > 0]
    assert trained  # lora_B starts at zero: the run did train
