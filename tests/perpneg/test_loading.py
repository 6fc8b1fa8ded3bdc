"""Loading: from_pretrained detects the family from a saved folder; diffusers' custom_pipeline finds the class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from helpers import call_kwargs, get_tiny

from negguide import PerpNegPipeline

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folders = {}
    for family in ("sd", "sdxl", "sd3", "flux"):
        folder = tmp_path_factory.mktemp(family)
        get_tiny(family).save_pretrained(folder)
        folders[family] = folder
    return folders


def test_from_pretrained_detects_family_offline(saved, family):
    pipe = PerpNegPipeline.from_pretrained(saved[family])
    assert pipe.family == family
    pipe.set_progress_bar_config(disable=True)
    options = dict(negatives=["red"], negative_weights=[1.0])
    got = pipe("a red shape", **options, **call_kwargs(family)).images
    # compare with the stock diffusers pipeline loaded from the same folder (loading may pick another attention
    # implementation for the text encoders than building from a config does)
    stock = DiffusionPipeline.from_pretrained(saved[family])
    expected = PerpNegPipeline.from_pipe(stock)("a red shape", **options, **call_kwargs(family)).images
    assert torch.equal(got, expected)


def test_custom_pipeline_entry_point(saved):
    pipe = DiffusionPipeline.from_pretrained(
        saved["sd"], custom_pipeline=str(REPO / "pipelines" / "perp_neg"), trust_remote_code=True
    )
    assert type(pipe).__name__ == "PerpNegPipeline" and pipe.family == "sd"
    pipe.set_progress_bar_config(disable=True)
    got = pipe("a red shape", negatives=["red"], **call_kwargs("sd")).images
    stock = DiffusionPipeline.from_pretrained(saved["sd"])
    expected = PerpNegPipeline.from_pipe(stock)("a red shape", negatives=["red"], **call_kwargs("sd")).images
    assert torch.equal(got, expected)


def test_from_pipe_shares_modules_and_save_round_trip(tmp_path):
    base = get_tiny("sdxl")
    pipe = PerpNegPipeline.from_pipe(base)
    assert pipe.unet is base.unet and pipe.text_encoder_2 is base.text_encoder_2
    pipe.save_pretrained(tmp_path)
    again = PerpNegPipeline.from_pretrained(tmp_path)
    assert again.family == "sdxl"
    for name, tensor in pipe.unet.state_dict().items():
        assert torch.equal(tensor, again.unet.state_dict()[name])


def test_negtome_custom_pipeline_entry_point(saved):
    import sys

    from negguide import NegToMePipeline, NegToMeSettings

    # diffusers caches every local custom pipeline as the module "diffusers_modules.local.pipeline" and re-executes
    # the next one into it: two folders in one process collide (see pipelines/README.md)
    sys.modules.pop("diffusers_modules.local.pipeline", None)
    pipe = DiffusionPipeline.from_pretrained(
        saved["sd3"], custom_pipeline=str(REPO / "pipelines" / "negtome"), trust_remote_code=True
    )
    assert type(pipe).__name__ == "NegToMePipeline" and pipe.family == "sd3"
    pipe.set_progress_bar_config(disable=True)
    settings = NegToMeSettings(window=(0.0, 1.0), threshold=0.0)
    kwargs = call_kwargs("sd3", num_images_per_prompt=2)
    got = pipe("a red shape", negtome=settings, **kwargs).images
    stock = DiffusionPipeline.from_pretrained(saved["sd3"])
    expected = NegToMePipeline.from_pipe(stock)(
        "a red shape", negtome=settings, **call_kwargs("sd3", num_images_per_prompt=2)
    ).images
    assert torch.equal(got, expected)
    plain = stock("a red shape", **call_kwargs("sd3", num_images_per_prompt=2)).images
    assert not torch.equal(got, plain)
