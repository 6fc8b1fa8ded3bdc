"""One Accelerator factory for negguide's trainers.

accelerate only starts CPU data parallelism (gloo) when asked for the CPU explicitly; launched by torchrun or
``accelerate launch --multi_gpu`` on a machine without a GPU it would otherwise run every process alone, each
training on its share of the batch with nobody averaging gradients. ``make_accelerator`` asks for the CPU
whenever the machine has no accelerator, so ``torchrun --nproc_per_node 2 ...`` trains as one process does.

accelerate also keeps one process-wide state: a second Accelerator with another ``mixed_precision`` raises. In a
single process (a notebook, a test session training twice) ``make_accelerator`` resets that state first, so each
trainer gets the precision it asks for; launched processes keep accelerate's rule (one precision per launch).
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
    from accelerate.state import AcceleratorState

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not has_accelerator_device() and launched:
        kwargs.setdefault("cpu", True)
    wanted = kwargs.get("mixed_precision")
    if not launched and wanted is not None and AcceleratorState._shared_state:
        current = AcceleratorState._shared_state.get("_mixed_precision")
        if current is not None and str(current) != str(wanted):
            AcceleratorState._reset_state()  # this process only: its distributed state (none) is kept
    return Accelerator(**kwargs)
