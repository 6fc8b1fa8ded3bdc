"""One Accelerator factory for negguide's trainers.

accelerate only starts CPU data parallelism (gloo) when asked for the CPU explicitly; launched by torchrun or
``accelerate launch --multi_gpu`` on a machine without a GPU it would otherwise run every process alone, each
training on its share of the batch with nobody averaging gradients. ``make_accelerator`` asks for the CPU
whenever the machine has no accelerator, so ``torchrun --nproc_per_node 2 ...`` trains as one process does.
"""

from __future__ import annotations

import os

import torch


def has_accelerator_device() -> bool:
    """True when torch sees a GPU-like device (CUDA, ROCm, XPU, MPS, ...)."""
    probe = getattr(torch, "accelerator", None)
    if probe is not None and hasattr(probe, "is_available"):
        return bool(probe.is_available())
    return torch.cuda.is_available()


def make_accelerator(**kwargs):
    """``accelerate.Accelerator(**kwargs)``, on the CPU (gloo between processes) when there is no GPU."""
    from accelerate import Accelerator

    if not has_accelerator_device() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        kwargs.setdefault("cpu", True)
    return Accelerator(**kwargs)
