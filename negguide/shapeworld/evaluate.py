"""Judge a ShapeWorld text-to-image pipeline: prompt accuracy on full, partial and two-object captions."""

from __future__ import annotations

import numpy as np
import torch

from negguide.shapeworld.judge import prompt_correct
from negguide.shapeworld.world import COLOURS, SHAPES

SINGLE_FULL = tuple(f"a {c} {s}" for s in SHAPES for c in COLOURS)
PARTIAL = tuple(f"a {s}" for s in SHAPES) + tuple(f"a {c} shape" for c in COLOURS)
TWO_OBJECT = (
    "a red circle and a blue square",
    "a yellow triangle and a green circle",
    "a blue circle and a red triangle",
    "a green square to the left of a yellow circle",
    "a red triangle to the left of a blue triangle",
    "a yellow square to the right of a green triangle",
)
PROMPT_SETS = {"single_full": SINGLE_FULL, "partial": PARTIAL, "two_object": TWO_OBJECT}


@torch.no_grad()
def generate(pipe, prompt: str, n: int, seed: int, guidance_scale: float, steps: int = 20, **kwargs) -> np.ndarray:
    """``n`` images for ``prompt`` as float numpy ``[n, H, W, 3]`` in [0, 1], seeded on the CPU."""
    gen = torch.Generator("cpu").manual_seed(int(seed))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt=prompt,
        num_images_per_prompt=n,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=gen,
        output_type="np",
        **kwargs,
    )
    return out.images


def evaluate_model(
    pipe,
    n_per_prompt: int = 8,
    seed: int = 10_000,
    guidance_scale: float = 5.0,
    steps: int = 20,
    sets: dict[str, tuple[str, ...]] | None = None,
    **pipe_kwargs,
) -> dict:
    """Accuracy (``judge.prompt_correct``) per prompt set and per prompt; prompt ``i`` of a set uses seed
    ``seed + i`` (keep ``seed`` away from anything training used). Extra kwargs go to the pipeline call,
    e.g. ``max_sequence_length``, ``height``, ``width``."""
    if not isinstance(n_per_prompt, int) or n_per_prompt < 1:
        raise ValueError(f"n_per_prompt={n_per_prompt!r} must be a positive int")
    sets = PROMPT_SETS if sets is None else sets
    report: dict = {"guidance_scale": guidance_scale, "steps": steps, "n_per_prompt": n_per_prompt, "per_prompt": {}}
    for name, prompts in sets.items():
        hits = []
        for i, prompt in enumerate(prompts):
            images = generate(pipe, prompt, n_per_prompt, seed + i, guidance_scale, steps, **pipe_kwargs)
            ok = prompt_correct(images, prompt)
            report["per_prompt"][prompt] = float(ok.mean())
            hits.append(ok)
        report[name] = float(np.concatenate(hits).mean())
    return report


def load_pipeline(folder: str = "assets/shapeworld/sd3", **kwargs):
    """A ShapeWorld model folder as its diffusers pipeline: the SD3-layout model (it has no T5: diffusers needs to
    be told text_encoder_3/tokenizer_3 are None) or the SD-format one (a plain StableDiffusionPipeline)."""
    import json
    import os

    with open(os.path.join(folder, "model_index.json")) as f:
        kind = json.load(f)["_class_name"]
    if kind == "StableDiffusion3Pipeline":
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None, **kwargs)
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(folder, **kwargs)
