"""Checkpoint I/O for the ShapeWorld trainer: every tensor in safetensors, the rest in JSON, atomic writes.

A checkpoint folder holds ``state.json`` (stage, step, elapsed seconds, settings), ``model.safetensors`` and
``ema.safetensors`` (keys prefixed by component name) and ``optim.safetensors`` + ``optim.json``.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file


def _atomic(path: str, write) -> None:
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


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


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, json_meta) of an optimizer's state dict; tensors are keyed ``"{param_index}.{name}"``."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Load what ``optimizer_to_flat`` wrote back into ``opt``."""
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: str, state: dict, modules: dict, ema: dict, opt) -> None:
    """Write one checkpoint (``ema`` is a flat name->tensor dict; ``opt`` may be None)."""
    os.makedirs(folder, exist_ok=True)
    _atomic(os.path.join(folder, "model.safetensors"), lambda p: save_file(prefixed_state(modules), p))
    if ema:
        flat = {k: v.detach().cpu().contiguous() for k, v in ema.items()}
        _atomic(os.path.join(folder, "ema.safetensors"), lambda p: save_file(flat, p))
    if opt is not None:
        tensors, meta = optimizer_to_flat(opt)
        _atomic(os.path.join(folder, "optim.safetensors"), lambda p: save_file(tensors, p))
        _atomic(os.path.join(folder, "optim.json"), lambda p: open(p, "w").write(json.dumps(meta)))
    # state.json last: it marks the checkpoint complete
    _atomic(os.path.join(folder, "state.json"), lambda p: open(p, "w").write(json.dumps(state, indent=1)))


def read_state(folder: str) -> dict | None:
    """The ``state.json`` of a checkpoint folder, or None when there is none."""
    path = os.path.join(folder, "state.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_tensors(folder: str, name: str) -> dict[str, torch.Tensor]:
    """``{folder}/{name}.safetensors`` as a dict, or {} when missing."""
    path = os.path.join(folder, name + ".safetensors")
    return load_file(path) if os.path.exists(path) else {}


def load_optimizer(folder: str, opt) -> bool:
    """Restore ``opt`` from the folder; False when the folder has no optimizer state for it."""
    meta_path = os.path.join(folder, "optim.json")
    if not os.path.exists(meta_path):
        return False
    with open(meta_path) as f:
        meta = json.load(f)
    if len(meta["param_groups"][0]["params"]) != sum(len(g["params"]) for g in opt.param_groups):
        return False
    optimizer_from_flat(opt, load_tensors(folder, "optim"), meta)
    return True
