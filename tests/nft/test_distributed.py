"""Two CPU processes (accelerate, gloo) train the same DiffusionNFT LoRA as one process with the same effective
batch, and as one process accumulating gradients over two micro-batches: rewards, r (the step-wide std gathered
from both processes) and averaged gradients all match.

What is comparable across processes: a different reduction order changes gradients by float noise, and Adam turns
noise on a near-zero gradient element into a step of about lr in either direction. So the gradients are compared
through Adam's moments (linear and quadratic in the gradients: tolerance relative to their scale), and the weights
element by element only up to that bound: at most 2 * lr * steps apart, and almost all of them within float noise."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "distributed"))
from launch_processes import launch_three_ways  # noqa: E402

LR, STEPS = 1e-3, 2  # tests/distributed/nft_two_process.py's config
ADAM_BOUND = 2 * LR * STEPS  # a flipped Adam step moves an element by at most about lr, per step


@pytest.mark.multiprocess
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
        reference = tensors("one", "optimizer")
        for key, value in tensors(name, "optimizer").items():  # Adam's moments: the gradients before each step
            scale = float(reference[key].abs().max())
            torch.testing.assert_close(value, reference[key], rtol=1e-3, atol=1e-4 * scale + 1e-12, msg=f"{name} {key}")
        for kind in ("current", "old", "eval_ema"):
            reference = tensors("one", kind)
            for key, value in tensors(name, kind).items():
                gap = (value - reference[key]).abs()
                assert float(gap.max()) <= ADAM_BOUND, (name, kind, key, float(gap.max()))
                noisy = gap > 1e-6 + 1e-4 * reference[key].abs()
                assert float(noisy.float().mean()) <= 0.01, (name, kind, key, int(noisy.sum()), noisy.numel())
        start = tensors(name, "current")
    trained = [k for k, v in start.items() if ".lora_B." in k and v.abs().max() > 0]
    assert trained  # lora_B starts at zero: the run did train
