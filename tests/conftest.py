"""Shared fixtures: tiny seeded pipelines of all four families (built once per session) and their call kwargs."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)
# OMP_NUM_THREADS (make test: 2) wins, so a run beside another job can take one core without oversubscribing
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))

from negguide.testing import FAMILIES, tiny_pipeline  # noqa: E402

_CACHE: dict = {}


def get_tiny(family: str):
    """A session-wide tiny pipeline (do not mutate it: use from_pipe or copies)."""
    if family not in _CACHE:
        _CACHE[family] = tiny_pipeline(family)
    return _CACHE[family]


def call_kwargs(family: str, steps: int = 4, seed: int = 0, **extra) -> dict:
    """Small, fast call arguments for ``family`` with a seeded CPU generator and latent output."""
    kwargs = dict(num_inference_steps=steps, height=32, width=32, output_type="latent",
                  generator=torch.Generator().manual_seed(seed))
    if family in ("sd3", "flux"):
        kwargs["max_sequence_length"] = 16
    if family == "flux":
        kwargs["true_cfg_scale"] = 4.0
    kwargs.update(extra)
    return kwargs


class ForwardCounter:
    """Counts calls of a module and the batch rows each call really ran (registered before other hooks)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.rows: list[int] = []
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.calls += 1
        sample = output[0] if isinstance(output, tuple) else output.sample
        self.rows.append(sample.shape[0])

    def remove(self):
        self._handle.remove()


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param
