"""Helpers the tests share (import them with ``from helpers import ...``): tiny seeded pipelines of all four
families (built once per session), their call kwargs, a forward counter, the repository's paths, and a process
killed in the middle of a checkpoint save."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

from negguide.testing import tiny_pipeline

#: the repository root, its tests/data folder and the helper scripts for multi-process tests
REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
DISTRIBUTED = REPO / "tests" / "distributed"

_CACHE: dict = {}


def get_tiny(family: str):
    """A session-wide tiny pipeline (do not mutate it: use from_pipe or copies)."""
    if family not in _CACHE:
        _CACHE[family] = tiny_pipeline(family)
    return _CACHE[family]


def call_kwargs(family: str, steps: int = 4, seed: int = 0, **extra) -> dict:
    """Small, fast call arguments for ``family`` with a seeded CPU generator and latent output."""
    kwargs = dict(
        num_inference_steps=steps,
        height=32,
        width=32,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
    )
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


#: the judge's reading of one generated image, as `negguide generate` prints it
READING = re.compile(r"^(\(nothing\)|(red|green|blue|yellow) (circ|sq|tri)(\|.+)?)$")


def make_assets(folder: str, pipe) -> dict:
    """A red-circle reference and a mask, a negative embedding of this model, and a (non-zero) LoRA for it."""
    from diffusers import StableDiffusion3Pipeline

    from negguide.reneg.embedding import null_embedding
    from negguide.shapeworld.bench_negtome import reference_image

    paths = {
        k: os.path.join(folder, v)
        for k, v in dict(
            reference="red_circle.png", mask="mask.png", empty="empty_mask.png", reneg="neg.safetensors", lora="lora"
        ).items()
    }
    array = reference_image("a red circle", 64).permute(1, 2, 0).numpy()
    Image.fromarray((array * 255).round().astype("uint8")).save(paths["reference"])
    mask = np.zeros((64, 64), np.uint8)
    mask[12:52, 12:52] = 255
    Image.fromarray(mask).save(paths["mask"])
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(paths["empty"])
    embedding = null_embedding(pipe, text="blue", max_sequence_length=pipe.family_pipeline().tokenizer_max_length)
    embedding.save(paths["reneg"])
    generator, state = torch.Generator().manual_seed(0), {}
    for name, module in pipe.transformer.named_modules():  # rank-4 LoRA on the attention projections, non-zero
        if isinstance(module, torch.nn.Linear) and re.search(r"attn\.(to_q|to_k|to_v|to_out\.0)$", name):
            state[f"{name}.lora_A.weight"] = torch.randn(4, module.in_features, generator=generator) * 0.3
            state[f"{name}.lora_B.weight"] = torch.randn(module.out_features, 4, generator=generator) * 0.3
    StableDiffusion3Pipeline.save_lora_weights(paths["lora"], transformer_lora_layers=state)
    return paths


class Killed(BaseException):
    """A simulated kill of the training process (a BaseException: no ``except Exception`` of the code stops it)."""


#: a run of 2 steps with a checkpoint after each, killed once at every point of a checkpoint save, each rerun resuming
#: where the last kill left it: (the point for :func:`killed_during_save`, the step the rerun resumes at). The kills
#: hit: step 1's FOLDER.tmp -> FOLDER (nothing saved yet); step 2's FOLDER -> FOLDER.old; step 2's FOLDER.tmp ->
#: FOLDER (the rerun resumes from FOLDER.old); step 2's deletion of that FOLDER.old (after FOLDER.tmp -> FOLDER)
KILL_CHAIN = ((1, 0), (2, 1), (2, 1), ("delete-old", 2))


@contextlib.contextmanager
def killed_during_save(point):
    """Inside the block, the process "dies" (:class:`Killed`) at ``point`` of a checkpoint save: an int n, the n-th
    call of os.replace / os.rename that moves a FOLDER.tmp or makes a FOLDER.old; or "delete-old", the first
    deletion of a FOLDER.old."""
    calls = [0]

    def renaming(real):
        def rename(src, dst, *args, **kwargs):
            if str(src).endswith(".tmp") or str(dst).endswith(".old"):
                calls[0] += 1
                if calls[0] == point:
                    raise Killed(f"killed at rename {point}: {src} -> {dst}")
            return real(src, dst, *args, **kwargs)

        return rename

    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if point == "delete-old" and str(path).endswith(".old"):
            raise Killed(f"killed deleting {path}")
        return real_rmtree(path, *args, **kwargs)

    with (
        mock.patch("os.replace", renaming(os.replace)),
        mock.patch("os.rename", renaming(os.rename)),
        mock.patch("shutil.rmtree", rmtree),
    ):
        yield


def check_kill_chain(make_trainer, result, want: dict, history: list, folder: Path) -> None:
    """Kill a 2-step trainer at every point of its checkpoint saves (KILL_CHAIN), rerunning after each kill: every
    rerun resumes where the last kill left it, and the final run equals the uninterrupted one (``want``, ``history``)."""
    import pytest

    start = 0
    for point, resumes_at in KILL_CHAIN:  # each rerun resumes what the last kill left
        run = make_trainer()
        assert run.step == start and run.history == history[:start]
        with killed_during_save(point), pytest.raises(Killed):
            run.train(progress=False)
        start = resumes_at
    resumed = make_trainer()
    assert resumed.step == 2 and sorted(os.listdir(folder / "checkpoint.old"))  # the last kill's leftover
    resumed.train(progress=False)
    torch.testing.assert_close(result(resumed), want, rtol=1e-5, atol=1e-6)
    assert [h["reward"] for h in resumed.history] == pytest.approx([h["reward"] for h in history], rel=1e-5)
