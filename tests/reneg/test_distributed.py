"""Two CPU processes (accelerate, gloo) train the same embedding as one process with the same effective batch,
and as one process that accumulates gradients over two micro-batches."""

from __future__ import annotations

import os
import sys

import torch

from negguide.reneg import NegativeEmbedding, null_embedding
from negguide.testing.tiny import tiny_pipeline

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "distributed"))
from launch_processes import launch_three_ways  # noqa: E402


def test_two_processes_train_like_one(tmp_path):
    launch_three_ways("reneg_two_process.py", tmp_path)
    load = lambda name: NegativeEmbedding.load(str(tmp_path / name / "negative_embedding.safetensors"))
    one = load("one")
    assert one.metadata["steps"] == "3"
    for name in ("two", "accumulated"):
        other = load(name)
        for key, tensor in one.tensors.items():
            torch.testing.assert_close(other.tensors[key], tensor, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
    untrained = null_embedding(tiny_pipeline("sd"), "sd")
    assert not torch.allclose(untrained.tensors["prompt_embeds"], one.tensors["prompt_embeds"], atol=1e-3)
