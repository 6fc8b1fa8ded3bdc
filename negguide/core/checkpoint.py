"""Training checkpoints, one writer and one reader for every trainer: a folder written atomically, every tensor in
safetensors, a sha256 manifest of every file, and the run's config, which a resumed run must match.

    FOLDER/
      manifest.json          format, version and {file: {"sha256", "bytes"}} of every other file (written last)
      state.json             {"step", "config", "config_log", ...the trainer's own entries (history, ...)}
      NAME.safetensors       one per tensor group (a model's weights, an adapter, an EMA)
      optimizer.safetensors  the optimizer's tensors, keyed "<param index>.<name>"
      optimizer.json         its param groups and non-tensor state
      rng.safetensors        torch's CPU (and CUDA) generator states, numpy's MT19937 key
      rng.json               the rest of numpy's state and Python's random state

    save_checkpoint(folder, 7, config, tensors={"model": weights}, optimizer=opt, meta={"history": history})
    ckpt = load_checkpoint(folder, config, may_change=("steps",))   # None when there is no checkpoint
    model.load_state_dict(ckpt.group("model")); ckpt.load_optimizer(opt); ckpt.restore_rng()

A save writes FOLDER.tmp, renames FOLDER -> FOLDER.old and FOLDER.tmp -> FOLDER, then deletes FOLDER.old, so a crash
at any point leaves one complete checkpoint. Reading takes FOLDER when it exists, else FOLDER.old (a save killed
between its renames), and never FOLDER.tmp (the next save deletes it); reading changes nothing on disk. A file that
fails its checksum, a missing file, or a config that differs from the run's (outside the trainer's allow-list of
fields that may change, e.g. ``steps``) is refused with a :class:`CheckpointError` naming it and the way out.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field

import numpy as np
import torch

FORMAT, VERSION = "negguide-checkpoint", 1
MANIFEST, STATE = "manifest.json", "state.json"
_OWN = ("optimizer", "rng")  # groups the writer fills itself
_STATE_KEYS = ("step", "config", "config_log")
_ABSENT = object()  # a field one config lacks


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: damaged, incomplete, or saved with another config."""


def fingerprint(value) -> str:
    """A short sha256 of ``value``'s JSON (e.g. a prompt list), to compare in a config without storing it whole."""
    text = json.dumps(value, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- bytes
def _json_bytes(value, default=None) -> bytes:
    return json.dumps(value, indent=1, default=default).encode()


def _tensor_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sync_folder(path: str) -> None:
    """fsync a folder, so the renames in it survive a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- optimizer, RNG
def optimizer_state(optimizer) -> tuple[dict, dict]:
    """(tensors keyed "<param index>.<name>", JSON: param groups and the non-tensor state) of an optimizer."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def rng_state() -> tuple[dict, dict]:
    """(tensors, JSON) of the global random states: torch CPU (and CUDA when in use), numpy, Python."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    return tensors, {
        "numpy": [name, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }


# ---------------------------------------------------------------------------------------------- writing
def save_checkpoint(
    folder: str,
    step: int,
    config: dict,
    tensors: dict | None = None,
    optimizer=None,
    meta: dict | None = None,
    config_log: list | None = None,
) -> None:
    """Write the checkpoint of ``step`` to ``folder`` atomically (see the module's docstring for the layout).

    ``config``: the run's settings (JSON); ``tensors``: {group name: {key: tensor}}, one NAME.safetensors each;
    ``optimizer``: a torch optimizer or None; ``meta``: more JSON entries of state.json (history, ...);
    ``config_log``: the record of config changes at earlier resumes (:attr:`Checkpoint.config_log`)."""
    files = {}
    for name, group in (tensors or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", name) or name in _OWN:
            raise ValueError(f"tensor group name {name!r} must be letters, digits or _ and not one of {_OWN}")
        files[f"{name}.safetensors"] = _tensor_bytes(group)
    if optimizer is not None:
        moments, groups = optimizer_state(optimizer)
        files["optimizer.safetensors"], files["optimizer.json"] = _tensor_bytes(moments), _json_bytes(groups)
    states, numbers = rng_state()
    files["rng.safetensors"], files["rng.json"] = _tensor_bytes(states), _json_bytes(numbers)
    clash = sorted(set(meta or {}) & set(_STATE_KEYS))
    if clash:
        raise ValueError(f"meta may not set {clash}: the writer owns them")
    state = {"step": int(step), "config": config, "config_log": list(config_log or []), **(meta or {})}
    files[STATE] = _json_bytes(state, default=str)  # a config value JSON cannot hold is kept as its str()
    entries = {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in files.items()}
    files[MANIFEST] = _json_bytes({"format": FORMAT, "version": VERSION, "files": entries})

    tmp, old = folder + ".tmp", folder + ".old"
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)  # a save killed before its renames: never read
    os.makedirs(tmp)
    for name, data in files.items():  # the manifest last
        _write(os.path.join(tmp, name), data)
    _sync_folder(tmp)
    if os.path.isdir(folder):
        if os.path.lexists(old):
            shutil.rmtree(old)  # superseded by FOLDER (a save killed while deleting it)
        os.replace(folder, old)
    # without FOLDER, a FOLDER.old (a save killed between its renames) stays the fallback until the next rename
    os.replace(tmp, folder)
    _sync_folder(os.path.dirname(os.path.abspath(folder)))
    if os.path.lexists(old):
        shutil.rmtree(old)


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class Checkpoint:
    """A checkpoint read back, every file checked against the manifest.

    ``path``: the folder read (FOLDER, or FOLDER.old after a save killed between its renames); ``step``, ``config``
    (the one it was saved with), ``meta`` (the trainer's other state.json entries), ``tensors`` ({group: {key:
    tensor}} on the CPU), ``changes`` ({field: (saved, now)} of this resume, allowed or overridden) and
    ``config_log`` (earlier resumes' changes, this one's last): pass it to the next :func:`save_checkpoint`."""

    path: str
    step: int
    config: dict
    meta: dict
    tensors: dict
    changes: dict = field(default_factory=dict)
    config_log: list = field(default_factory=list)
    optimizer_data: tuple | None = None  # (tensors, JSON) of optimizer.safetensors / optimizer.json
    rng_data: tuple | None = None  # (tensors, JSON) of rng.safetensors / rng.json

    def group(self, name: str) -> dict:
        """The tensors of NAME.safetensors; a CheckpointError when the checkpoint has none."""
        if name not in self.tensors:
            raise CheckpointError(
                f"checkpoint {self.path!r} holds no {name}.safetensors (it has {sorted(self.tensors)}): it was "
                "written by another trainer or another configuration; train into another output folder"
            )
        return self.tensors[name]

    def load_optimizer(self, optimizer) -> None:
        """Restore ``optimizer``'s state (moments, step counts, param groups)."""
        if self.optimizer_data is None:
            raise CheckpointError(f"checkpoint {self.path!r} holds no optimizer state; train into another folder")
        tensors, meta = self.optimizer_data
        saved = sum(len(g["params"]) for g in meta["param_groups"])
        mine = sum(len(g["params"]) for g in optimizer.param_groups)
        if saved != mine or len(meta["param_groups"]) != len(optimizer.param_groups):
            raise CheckpointError(
                f"checkpoint {self.path!r} holds an optimizer of {saved} tensors, this run's has {mine}: the model "
                "differs from the run that saved it; resume with its settings or train into another folder"
            )
        state: dict = {}
        for key, value in [*tensors.items(), *meta["scalars"].items()]:
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})

    def restore_rng(self) -> None:
        """Set torch's (CPU, and CUDA when the device count matches), numpy's and Python's global random states."""
        if self.rng_data is None:
            return
        tensors, numbers = self.rng_data
        torch.set_rng_state(tensors["torch"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
        if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        name, pos, has_gauss, cached = numbers["numpy"]
        np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
        version, internal, gauss = numbers["python"]
        random.setstate((version, tuple(internal), gauss))


def find_checkpoint(folder: str) -> str | None:
    """The folder to resume from: FOLDER, else FOLDER.old (a save killed between its renames), else None (a lone
    FOLDER.tmp is a save killed before its renames: incomplete, never read)."""
    for path in (folder, folder + ".old"):
        if os.path.lexists(path):
            return path
    return None


def _refuse(path: str, what: str) -> CheckpointError:
    way_out = "move the folder away (or delete it) to start the run over"
    if not path.endswith(".old") and os.path.isdir(path + ".old"):
        way_out = f"move it away and the previous checkpoint in {path + '.old'!r} is resumed instead"
    return CheckpointError(f"checkpoint {path!r} cannot be resumed: {what}; {way_out}")


def _parse_json(path: str, name: str, data: bytes):
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _refuse(path, f"{name} is not valid JSON ({error})") from None


def _parse_tensors(path: str, name: str, data: bytes) -> dict:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as error:  # safetensors raises its own error type for every malformed file
        raise _refuse(path, f"{name} is not a safetensors file ({error})") from None


def _verified_files(path: str) -> dict:
    """{file name: bytes} of every file the manifest lists, each checked for presence, size and sha256."""
    if not os.path.isdir(path):
        raise _refuse(path, "it is not a folder")
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise _refuse(path, f"it has no {MANIFEST} (incomplete, or not written by this version of negguide)")
    with open(manifest_path, "rb") as f:
        manifest = _parse_json(path, MANIFEST, f.read())
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, dict) or manifest.get("format") != FORMAT or STATE not in entries:
        raise _refuse(path, f"{MANIFEST} is not a {FORMAT} manifest listing {STATE}")
    if manifest.get("version") != VERSION:
        raise _refuse(path, f"it has format version {manifest.get('version')!r}, this negguide reads {VERSION}")
    files = {}
    for name, entry in entries.items():
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", "..", MANIFEST):
            raise _refuse(path, f"{MANIFEST} lists a bad file name {name!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int):
            raise _refuse(path, f"{MANIFEST} has a malformed entry for {name}")
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise _refuse(path, f"{name} is missing")
        with open(file, "rb") as f:
            data = f.read()
        if len(data) != entry["bytes"]:
            raise _refuse(
                path, f"{name} is truncated or altered ({len(data)} bytes, the manifest says {entry['bytes']})"
            )
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise _refuse(path, f"{name} is damaged (its sha256 differs from the manifest's)")
        files[name] = data
    return files


def _show(value) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def config_changes(saved: dict, current: dict, defaults: dict | None = None) -> dict:
    """{field: (saved, current)} of the fields whose values differ (compared as JSON, so tuples equal lists); a
    field the saved config lacks is no change when ``current`` holds its default (a setting added since)."""
    current = json.loads(json.dumps(current, default=str))
    defaults = json.loads(json.dumps(defaults or {}, default=str))
    changes = {}
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, _ABSENT), current.get(key, _ABSENT)
        if old is _ABSENT and key in defaults and new == defaults[key]:
            continue
        if old != new:
            changes[key] = (old, new)
    return changes


def load_checkpoint(
    folder: str,
    config: dict | None = None,
    may_change=(),
    allow_config_change: bool = False,
    override: str = "allow_config_change=True",
    defaults: dict | None = None,
) -> Checkpoint | None:
    """The checkpoint in ``folder`` (or ``folder``.old, see :func:`find_checkpoint`), verified; None when there is none.

    With ``config`` (the new run's settings), a field that differs from the saved config and is not in
    ``may_change`` is refused, naming every such field (saved -> new), unless ``allow_config_change``; ``override``
    names that option in the message. ``defaults``: see :func:`config_changes`."""
    path = find_checkpoint(folder)
    if path is None:
        return None
    files = _verified_files(path)
    state = _parse_json(path, STATE, files[STATE])
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise _refuse(path, f"{STATE} has no step (a non-negative integer)")
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("config_log", []), list):
        raise _refuse(path, f"{STATE} has no config")
    groups = {n[: -len(".safetensors")]: data for n, data in files.items() if n.endswith(".safetensors")}
    tensors = {n: _parse_tensors(path, n + ".safetensors", data) for n, data in groups.items()}
    pairs = {}
    for own in _OWN:
        if (own in tensors) != (f"{own}.json" in files):
            raise _refuse(path, f"it holds only one of {own}.safetensors and {own}.json")
        if own in tensors:
            pairs[own] = (tensors.pop(own), _parse_json(path, f"{own}.json", files[f"{own}.json"]))
    ckpt = Checkpoint(
        path=path,
        step=state["step"],
        config=state["config"],
        meta={k: v for k, v in state.items() if k not in _STATE_KEYS},
        tensors=tensors,
        config_log=list(state.get("config_log", [])),
        optimizer_data=pairs.get("optimizer"),
        rng_data=pairs.get("rng"),
    )
    if config is not None:
        changes = config_changes(ckpt.config, config, defaults)
        refused = {k: v for k, v in changes.items() if k not in may_change}
        if refused and not allow_config_change:
            listed = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items())
            raise CheckpointError(
                f"checkpoint {path!r} was saved by a run with other settings ({listed}); resume with the "
                f"settings it was saved with, train into another output folder, or pass {override} to go on "
                "with the new ones (the change is recorded in the checkpoint)"
            )
        plain = lambda v: None if v is _ABSENT else v  # noqa: E731
        ckpt.changes = {k: (plain(a), plain(b)) for k, (a, b) in changes.items()}
        if changes:
            ckpt.config_log.append({"step": ckpt.step, "changes": {k: list(v) for k, v in ckpt.changes.items()}})
    return ckpt
