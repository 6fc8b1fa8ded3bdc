"""The bundled-model trainer's checkpoints, written and read by negguide.core.checkpoint.

A run folder (``--ckpt RUN``) holds ``RUN/checkpoint/`` (swapped atomically at each save: ``model.safetensors`` and
``ema.safetensors`` keyed ``"{component}.{key}"``, the optimizer, RNG states, a checksum manifest and state.json with
the stage, step, elapsed seconds, data-mix phases and the run's flags) and ``RUN/evals.jsonl`` (the quick evaluations).
"""

from __future__ import annotations

import os

import torch

from negguide.core.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint"
#: the flags a resumed run may change: its budgets and schedules, where it runs and writes, and the data mix (kept as
#: phases in the state, so every step's batch stays a function of the checkpoint)
RESUME_MAY_CHANGE = (
    "out",
    "ckpt",
    "max_minutes",
    "vae_minutes",
    "ckpt_minutes",
    "eval_minutes",
    "threads",
    "device",
    "max_steps",
    "export_only",
    "two_object_prob",
    "pair_caption_weights",
    "resume_with_changed_config",
)
OVERRIDE = "--resume-with-changed-config"


def prefixed_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """One flat dict ``{f"{name}.{key}": tensor}`` over the state dicts of ``modules``."""
    return {
        f"{name}.{k}": v.detach().cpu().contiguous()
        for name, mod in modules.items()
        for k, v in mod.state_dict().items()
    }


def load_prefixed(modules: dict[str, torch.nn.Module], flat: dict[str, torch.Tensor]) -> None:
    """Inverse of ``prefixed_state`` (strict: every key of every module must be present)."""
    for name, mod in modules.items():
        head = name + "."
        mod.load_state_dict({k[len(head) :]: v for k, v in flat.items() if k.startswith(head)}, strict=True)


def run_config(args) -> dict:
    """The run's flags as a checkpoint records them (``--base`` as an absolute path; None where unused)."""
    config = dict(vars(args))
    if config.get("family") == "sd":
        config["base"] = os.path.abspath(config["base"])
    else:  # the SD3-layout model ignores them
        config["base"] = config["prediction"] = None
    return config


def save(run: str, state: dict, modules: dict, ema: dict, opt, args) -> None:
    """Write RUN/checkpoint: ``state`` (a JSON dict with "step"), the modules' weights, ``ema`` (a flat name -> tensor
    dict, may be empty), ``opt`` (may be None) and the run's flags."""
    tensors = {"model": prefixed_state(modules)}
    if ema:
        tensors["ema"] = ema
    meta = {k: v for k, v in state.items() if k not in ("step", "config_log")}
    config = run_config(args)
    save_checkpoint(os.path.join(run, CHECKPOINT), state["step"], config, tensors, opt, meta, state.get("config_log"))


def load(run: str, args=None) -> Checkpoint | None:
    """RUN/checkpoint, verified (and with ``args``, checked against the run's flags); None when the run has none."""
    if os.path.isfile(os.path.join(run, "state.json")) and not os.path.exists(os.path.join(run, CHECKPOINT)):
        raise CheckpointError(
            f"{run!r} holds a checkpoint of the older layout (state.json, no checksums); this trainer keeps its "
            f"checkpoint in {os.path.join(run, CHECKPOINT)!r}: train into another --ckpt folder"
        )
    config = None if args is None else run_config(args)
    allow = bool(getattr(args, "resume_with_changed_config", False))
    return load_checkpoint(os.path.join(run, CHECKPOINT), config, RESUME_MAY_CHANGE, allow, OVERRIDE)


def state_of(ckpt: Checkpoint) -> dict:
    """The trainer's state dict of a checkpoint: its step, its other state.json entries and its config log."""
    return {**ckpt.meta, "step": ckpt.step, "config_log": ckpt.config_log}


def read_state(run: str) -> dict | None:
    """The state of RUN's checkpoint (verified), or None when there is none."""
    ckpt = load(run)
    return None if ckpt is None else state_of(ckpt)
