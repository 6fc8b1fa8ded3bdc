"""Bad input through the guiders gets the same clear errors as through the pipelines, before any compute."""

from __future__ import annotations

import pytest
import torch
from helpers import ForwardCounter, call_kwargs, get_tiny

from negguide import PerpNegPipeline
from negguide.guiders import NAGGuider, PerpNegGuider, add_negatives
from negguide.nag import NAGSettings

# (pipeline call options, the guider's arguments): the guider takes PerpNegSettings' field names
PERP_NEG_BAD = [
    dict(negatives=["red"], negative_weights=[1.0, 2.0]),
    dict(negatives=["red"], negative_weights=[-1.0]),
    dict(negatives=["red"], negative_weights=[float("nan")]),
    dict(negatives=["red"], negative_weights=[float("inf")]),
    dict(negatives=["red"], negative_windows=[(0.5, 1.5)]),
    dict(negatives=["red"], negative_windows=[(0.8, 0.2)]),
    dict(negatives=["red", "blue"], negative_windows=[(0.1, 0.2)]),
    dict(negatives=[3]),
    dict(negatives=["red"], guidance_mode="sideways"),
    dict(negatives=["red"], perp_neg_eps=0.0),
    dict(positives=["a square"], guidance_mode="plain"),
]
NAG_BAD = [
    dict(negatives=["red"], negative_weights=[1.0, 2.0]),
    dict(negatives=["red"], negative_weights=[-1.0]),
    dict(negatives=["red"], tau=0.5),
    dict(negatives=["red"], alpha=1.5),
    dict(negatives=["red"], eps=0.0),
    dict(negatives=["red"], negative_windows=[(0.8, 0.2)]),
    dict(negatives=["red"], blocks=[]),
]


def _error(call):
    with pytest.raises((ValueError, TypeError)) as caught:
        call()
    return type(caught.value), str(caught.value)


@pytest.mark.parametrize("options", PERP_NEG_BAD, ids=range(len(PERP_NEG_BAD)))
def test_perp_neg_settings_fail_as_in_the_pipeline(options):
    pipe = PerpNegPipeline.from_pipe(get_tiny("sdxl"))
    counter = ForwardCounter(pipe.unet)
    try:
        want = _error(lambda: pipe("a red shape", **options, **call_kwargs("sdxl")))
    finally:
        counter.remove()
    arguments = dict(options)
    if "guidance_mode" in arguments:
        arguments["mode"] = arguments.pop("guidance_mode")
    if "perp_neg_eps" in arguments:
        arguments["eps"] = arguments.pop("perp_neg_eps")
    assert _error(lambda: PerpNegGuider(**arguments)) == want
    assert counter.calls == 0


@pytest.mark.parametrize("options", NAG_BAD, ids=range(len(NAG_BAD)))
def test_nag_settings_fail_as_in_the_pipeline(options):
    # the pipeline takes nag=NAGSettings(...): its errors are the dataclass's
    assert _error(lambda: NAGGuider(**options)) == _error(lambda: NAGSettings(**options))


@pytest.mark.parametrize(
    "arguments, match",
    [
        (dict(guidance_scale=float("nan")), "guidance_scale = nan is not finite"),
        (dict(guidance_scale="7"), "guidance_scale = '7' must be a number"),
        (dict(guidance_rescale=1.5), r"guidance_rescale = 1.5 is outside \[0.0, 1.0\]"),
        (dict(start=1.0), "start = 1.0 leaves no step to guide"),
        (dict(start=0.6, stop=0.4), r"\(start, stop\) = \(0.6, 0.4\) is reversed"),
        (dict(enabled="yes"), "enabled = 'yes' must be True or False"),
        (dict(negatvies=["red"]), r"PerpNegGuider does not take \['negatvies'\]; its arguments are"),
    ],
)
def test_the_guidance_arguments_are_checked(arguments, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PerpNegGuider(**arguments)


class _Calls:
    """Forward calls of several modules (pre-hooks: they count even when a later hook raises)."""

    def __init__(self, *modules):
        self.count = 0
        self._handles = [m.register_forward_pre_hook(self._hook) for m in modules]

    def _hook(self, module, args):
        self.count += 1

    def remove(self):
        for handle in self._handles:
            handle.remove()


def test_nag_blocks_the_family_lacks_fail_as_in_the_pipeline_before_any_forward(modular):
    pipe = get_tiny("sdxl")
    want = _error(
        lambda: PerpNegPipeline.from_pipe(pipe)(
            "a red shape",
            negative_mode="nag",
            nag=NAGSettings(negatives=["red"], blocks=["single"]),
            **call_kwargs("sdxl"),
        )
    )
    calls = _Calls(pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    try:
        got = _error(lambda: modular.run("sdxl", NAGGuider(negatives=["red"], blocks=["single"])))
    finally:
        calls.remove()
    assert got == want and "blocks has 'single'" in got[1]
    assert calls.count == 0  # refused before the text encoders and the UNet ran


def test_sd3_without_an_unconditional_prompt_is_refused_before_any_forward(modular):
    pipe = get_tiny("sd3")
    calls = _Calls(pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3)
    try:
        with pytest.raises(ValueError, match="pass negative_prompt=''"):
            modular.run("sd3", PerpNegGuider(negatives=["red"]), negative_prompt=None)
    finally:
        calls.remove()
    assert calls.count == 0


@pytest.mark.parametrize(
    "guider", [PerpNegGuider(negatives=["red"]), NAGGuider(negatives=["red"])], ids=["perp-neg", "nag"]
)
def test_stock_blocks_cannot_carry_the_negatives_and_say_so_before_the_denoiser_runs(modular, guider):
    calls = _Calls(modular.denoiser("sdxl"))
    try:
        with pytest.raises(ValueError, match=r"add_negatives\(blocks\)"):
            modular.run("sdxl", guider, negguide=False)
    finally:
        calls.remove()
    assert calls.count == 0


def test_add_negatives_checks_its_blocks():
    from diffusers.modular_pipelines import StableDiffusionXLAutoBlocks

    blocks = StableDiffusionXLAutoBlocks()
    with pytest.raises(TypeError, match="takes diffusers modular pipeline blocks"):
        add_negatives("sdxl")
    with pytest.raises(ValueError, match="already have negguide's 'negguide_negatives' step"):
        add_negatives(add_negatives(blocks))
    assert "negguide_negatives" not in blocks.sub_blocks  # the caller's blocks are left as they are
    from diffusers.modular_pipelines import QwenImageAutoBlocks

    with pytest.raises(ValueError, match="add_negatives supports the modular blocks of"):
        add_negatives(QwenImageAutoBlocks())


def test_a_guider_outside_a_pipeline_refuses_missing_inputs():
    guider = PerpNegGuider(guidance_scale=5.0)
    guider.set_state(0, 4, torch.tensor(999))
    with pytest.raises(ValueError, match="no unconditional inputs"):
        guider.prepare_inputs({"encoder_hidden_states": torch.ones(1, 2, 3)})
