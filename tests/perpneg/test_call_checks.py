"""Hostile standard arguments of a pipeline call are refused with a clear error before any denoiser forward."""

from __future__ import annotations

import pytest
import torch
from helpers import ForwardCounter, call_kwargs, get_tiny

from negguide import PerpNegPipeline
from negguide.core.families import get_adapter

CASES = [
    ("sd", dict(num_images_per_prompt=0), ValueError, "num_images_per_prompt = 0"),
    ("sd", dict(num_images_per_prompt=-3), ValueError, "num_images_per_prompt = -3"),
    ("sd", dict(num_images_per_prompt=10**6), ValueError, "split the batch"),
    ("sd", dict(num_images_per_prompt=1.5), ValueError, "num_images_per_prompt = 1.5"),
    ("sd", dict(height=-32), ValueError, "height = -32"),
    ("sd", dict(height=0), ValueError, "height = 0"),
    ("sd", dict(width=0), ValueError, "width = 0"),
    ("sd", dict(num_inference_steps=0), ValueError, "num_inference_steps = 0"),
    ("sd", dict(prompt=[]), ValueError, "empty list"),
    ("sd", dict(prompt=["a cat", 3]), TypeError, "prompt[1] is a int"),
    ("sd", dict(prompt=None, prompt_embeds=torch.zeros(1, 77, 32, dtype=torch.float64)), TypeError, "float64"),
    ("sd", dict(prompt=None, prompt_embeds=torch.zeros(1, 77, 32, dtype=torch.float16)), TypeError, "float16"),
    ("sd", dict(prompt=None, prompt_embeds=torch.zeros(1, 77, 32, dtype=torch.long)), TypeError, "floating-point"),
    ("sdxl", dict(prompt=None, prompt_embeds=torch.zeros(1, 77, 64)), ValueError, "without pooled_prompt_embeds"),
    ("sd3", dict(prompt=None, prompt_embeds=torch.zeros(1, 93, 32)), ValueError, "without pooled_prompt_embeds"),
    ("flux", dict(prompt=None, prompt_embeds=torch.zeros(1, 16, 32)), ValueError, "without pooled_prompt_embeds"),
]


@pytest.mark.parametrize("family, bad, error, message", CASES)
def test_bad_call_arguments_fail_before_compute(family, bad, error, message):
    pipe = PerpNegPipeline.from_pipe(get_tiny(family))
    kwargs = {"prompt": "a red circle", **call_kwargs(family), **bad}
    counter = ForwardCounter(getattr(pipe, get_adapter(family).denoiser_attr))
    try:
        with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
            pipe(negatives=["blue"], **kwargs)
        with pytest.raises(error):  # with every negguide feature off too: the plain call is checked the same way
            pipe(**kwargs)
    finally:
        counter.remove()
    assert counter.calls == 0
