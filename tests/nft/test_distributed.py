"""Two CPU processes (accelerate, gloo) train the same DiffusionNFT LoRA as one process with the same effective
batch, and as one process accumulating gradients over two micro-batches: rewards, r (the step-wide std gathered
from both processes) and averaged gradients all match."""

from __future__ import annotations

import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "distributed"))
from launch_processes import launch_three_ways  # noqa: E402


def test_two_processes_train_like_one(tmp_path):
    launch_three_ways("nft_two_process.py", tmp_path)
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
