"""The one checkpoint writer and reader (negguide.core.checkpoint): a round trip of tensors, optimizer, RNG states
and config; a save killed at each of its renames and at the deletion of FOLDER.old leaves a checkpoint that reads
back complete; damaged files are refused with a message naming them; a changed config is refused unless allowed."""

from __future__ import annotations

import hashlib
import json
import os
import random

import numpy as np
import pytest
import torch
from helpers import Killed, killed_during_save

from negguide.core.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint

CONFIG = {"lr": 1e-3, "seed": 0, "steps": 4, "prompts": "2 prompts, sha256:0123"}


def _trained():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(2):
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    return net, opt


def _save(folder, step: int, net, opt=None, **extra) -> None:
    tensors = {"model": net.state_dict(), "ema": {"w": torch.full((2,), float(step))}}
    save_checkpoint(folder, step, {**CONFIG, **extra}, tensors, opt, {"history": list(range(step))})


def test_round_trip_restores_tensors_optimizer_rng_and_state(tmp_path):
    folder = str(tmp_path / "checkpoint")
    net, opt = _trained()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    _save(folder, 2, net, opt)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]
    assert sorted(os.listdir(folder)) == [
        "ema.safetensors",
        "manifest.json",
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "rng.json",
        "rng.safetensors",
        "state.json",
    ]
    ckpt = load_checkpoint(folder, CONFIG)
    assert ckpt.path == folder and ckpt.step == 2 and ckpt.meta == {"history": [0, 1]} and ckpt.changes == {}
    net2 = torch.nn.Linear(3, 2)
    net2.load_state_dict(ckpt.group("model"))
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-2)
    ckpt.load_optimizer(opt2)
    x = torch.randn(4, 3)
    for n, o in ((net, opt), (net2, opt2)):  # the same next step from both
        n(x).pow(2).sum().backward()
        o.step()
    torch.testing.assert_close(net2.weight, net.weight, rtol=1e-5, atol=1e-6)
    ckpt.restore_rng()
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    with pytest.raises(CheckpointError, match="holds no adapter.safetensors"):
        ckpt.group("adapter")
    assert load_checkpoint(str(tmp_path / "none")) is None


@pytest.mark.parametrize("point", [1, 2, "delete-old"])
def test_a_save_killed_anywhere_leaves_a_complete_checkpoint(tmp_path, point):
    """Kill the save of step 2 over a checkpoint of step 1 at FOLDER -> FOLDER.old (1), FOLDER.tmp -> FOLDER (2)
    or the deletion of FOLDER.old: step 1 (or, once renamed, step 2) reads back; the next save cleans up."""
    folder = str(tmp_path / "checkpoint")
    net, _ = _trained()
    _save(folder, 1, net)
    with killed_during_save(point), pytest.raises(Killed):
        _save(folder, 2, net)
    left = {1: ["checkpoint", "checkpoint.tmp"], 2: ["checkpoint.old", "checkpoint.tmp"]}
    assert sorted(os.listdir(tmp_path)) == left.get(point, ["checkpoint", "checkpoint.old"])
    ckpt = load_checkpoint(folder, CONFIG)
    assert ckpt.step == (2 if point == "delete-old" else 1) and ckpt.meta["history"] == list(range(ckpt.step))
    assert ckpt.path == (folder + ".old" if point == 2 else folder)
    _save(folder, 3, net)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"] and load_checkpoint(folder).step == 3


def test_a_first_save_killed_before_its_rename_leaves_no_checkpoint(tmp_path):
    folder = str(tmp_path / "checkpoint")
    with killed_during_save(1), pytest.raises(Killed):
        _save(folder, 1, _trained()[0])
    assert os.listdir(tmp_path) == ["checkpoint.tmp"] and find_checkpoint(folder) is None
    assert load_checkpoint(folder, CONFIG) is None  # FOLDER.tmp alone is never read


def _rewrite_manifest(folder: str) -> None:
    """Make the manifest agree with the files again (to reach the parsers behind the checksums)."""
    path = os.path.join(folder, "manifest.json")
    manifest = json.loads(open(path).read())
    for name, entry in manifest["files"].items():
        data = open(os.path.join(folder, name), "rb").read()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    open(path, "w").write(json.dumps(manifest))


def _flip_byte(path: str) -> None:
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0x10  # inside the last tensor's bytes
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: _flip_byte(f + "/model.safetensors"), r"model.safetensors is damaged \(its sha256 differs"),
        (lambda f: open(f + "/optimizer.safetensors", "r+b").truncate(100), r"optimizer.safetensors is truncated"),
        (lambda f: open(f + "/state.json", "w").write("{garbage"), "state.json is truncated or altered"),
        (lambda f: os.remove(f + "/state.json"), "state.json is missing"),
        (lambda f: os.remove(f + "/manifest.json"), "it has no manifest.json"),
        (lambda f: open(f + "/manifest.json", "w").write("{garbage"), "manifest.json is not valid JSON"),
        (
            lambda f: (open(f + "/state.json", "w").write("{garbage"), _rewrite_manifest(f)),
            "state.json is not valid JSON",
        ),
        (
            lambda f: (open(f + "/model.safetensors", "r+b").truncate(20), _rewrite_manifest(f)),
            "model.safetensors is not a safetensors file",
        ),
    ],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage, message):
    folder = str(tmp_path / "checkpoint")
    net, opt = _trained()
    _save(folder, 2, net, opt)
    damage(folder)
    with pytest.raises(CheckpointError, match=message) as refused:
        load_checkpoint(folder, CONFIG)
    assert "move the folder away (or delete it) to start the run over" in str(refused.value)
    assert refused.value.__cause__ is None and (refused.value.__context__ is None or refused.value.__suppress_context__)
    assert os.path.isdir(folder)  # refused, never deleted


def test_a_damaged_checkpoint_names_the_previous_one_when_it_is_there(tmp_path):
    folder = str(tmp_path / "checkpoint")
    net, _ = _trained()
    _save(folder, 1, net)
    with killed_during_save("delete-old"), pytest.raises(Killed):
        _save(folder, 2, net)
    _flip_byte(folder + "/ema.safetensors")
    with pytest.raises(CheckpointError, match=r"checkpoint.old' is resumed instead"):
        load_checkpoint(folder)


def test_a_changed_config_is_refused_unless_allowed_and_the_change_is_logged(tmp_path):
    folder = str(tmp_path / "checkpoint")
    net, _ = _trained()
    _save(folder, 2, net)
    changed = {**CONFIG, "lr": 2e-3, "seed": 1, "steps": 6, "prompts": "3 prompts, sha256:4567"}
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(folder, changed, may_change=("steps",), override="--resume-with-changed-config")
    text = str(refused.value)
    assert 'lr: 0.001 -> 0.002; prompts: "2 prompts, sha256:0123" -> "3 prompts, sha256:4567"; seed: 0 -> 1' in text
    assert "steps" not in text and "--resume-with-changed-config" in text
    ckpt = load_checkpoint(folder, {**CONFIG, "steps": 6}, may_change=("steps",))  # an allowed change
    assert ckpt.changes == {"steps": (4, 6)}
    ckpt = load_checkpoint(folder, changed, may_change=("steps",), allow_config_change=True)
    assert ckpt.step == 2 and set(ckpt.changes) == {"lr", "prompts", "seed", "steps"}
    save_checkpoint(folder, 3, changed, {"model": net.state_dict()}, config_log=ckpt.config_log)
    again = load_checkpoint(folder, changed)
    assert again.config == changed and again.changes == {}
    assert again.config_log == [{"step": 2, "changes": {k: list(v) for k, v in ckpt.changes.items()}}]
    # a setting added since the save is no change while it holds its default
    assert load_checkpoint(folder, {**changed, "new": 5}, defaults={"new": 5}).changes == {}
    with pytest.raises(CheckpointError, match=r"new: \(absent\) -> 6"):
        load_checkpoint(folder, {**changed, "new": 6}, defaults={"new": 5})
