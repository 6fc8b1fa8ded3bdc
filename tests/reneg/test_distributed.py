"""Two CPU processes (accelerate, gloo) train the same embedding as one process with the same effective batch,
and as one process that accumulates gradients over two micro-batches.

A different reduction order changes gradients by float noise, which Adam turns into a step of about lr on a
near-zero gradient element: the embeddings are compared element by element up to that bound (2 * lr * steps),
and almost all elements within float noise."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from negguide.reneg import NegativeEmbedding, null_embedding
from negguide.testing.tiny import tiny_pipeline

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "distributed"))
from launch_processes import launch_three_ways  # noqa: E402

LR, STEPS = 5e-2, 3  # tests/distributed/reneg_two_process.py's config


@pytest.mark.multiprocess
def test_two_processes_train_like_one(tmp_path):
    launch_three_ways("reneg_two_process.py", tmp_path)
    load = lambda name: NegativeEmbedding.load(str(tmp_path / name / "negative_embedding.safetensors"))
    one = load("one")
    assert one.metadata["steps"] == "3"
    for name in ("two", "accumulated"):
        other = load(name)
        for key, tensor in one.tensors.items():
            gap = (other.tensors[key] - tensor).abs()
            assert float(gap.max()) <= 2 * LR * STEPS, (name, key, float(gap.max()))
            noisy = gap > 1e-6 + 1e-4 * tensor.abs()
            assert float(noisy.float().mean()) <= 0.01, (name, key, int(noisy.sum()), noisy.numel())
    untrained = null_embedding(tiny_pipeline("sd"), "sd")
    assert not torch.allclose(untrained.tensors["prompt_embeds"], one.tensors["prompt_embeds"], atol=1e-3)
