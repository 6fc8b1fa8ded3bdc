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

from negguide.testing import FAMILIES  # noqa: E402


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param
