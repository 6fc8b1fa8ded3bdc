"""What negguide's guiders share on top of diffusers' ``BaseGuidance``: validated settings, the branch plan of a
step, the batches for the modular pipeline's denoise loop, and a record of what each step computed.

A diffusers loop denoiser hands the guider a dict of model inputs whose conditioning values are tuples
``(conditional, unconditional)``; the guider returns one batch per prediction it needs and the loop runs the
denoiser once per batch. A negguide guider needs predictions beyond the unconditional one (Perp-Neg's negatives
and extra positives) or attention-space negatives (NAG); their inputs arrive as further tuple entries,
``(conditional, unconditional, extra_0, extra_1, ...)``, in the order of :meth:`BranchGuidance.branch_texts`
(see :mod:`negguide.guiders.blocks`, which encodes them and extends the tuples).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance

from negguide.core.multibranch import POSITIVE, StepRecord
from negguide.guidance.windows import is_active
from negguide.guiders.fields import GuidanceSettings, as_config, build_signature, describe, split_arguments

if TYPE_CHECKING:
    from diffusers.modular_pipelines.modular_pipeline import BlockState

UNCOND = "uncond"
#: the guider inputs tuple index of the conditional and unconditional entries (diffusers' convention)
STANDARD_INDEX = {POSITIVE: 0, UNCOND: 1}
#: the guider input that holds the text embeddings, in diffusers' SDXL and SD3 loop denoisers and negguide's Flux one
TEXT_FIELDS = ("prompt_embeds", "encoder_hidden_states")


def identifier(branch: str) -> str:
    """The prediction name a branch's batch carries (a keyword of ``forward``): ``pred_cond``, ``pred_uncond``,
    ``pred_negative_0``, ``pred_positive_1``, ..."""
    return {POSITIVE: "pred_cond", UNCOND: "pred_uncond"}.get(branch) or "pred_" + branch.replace(":", "_")


def guider_init(settings_class):
    """The ``__init__`` of a guider over :class:`GuidanceSettings` and ``settings_class``: keyword arguments only,
    its signature (and so diffusers' config, ``from_config`` and ``save_pretrained``) built from the dataclasses."""

    def __init__(self, **arguments):
        self._setup(arguments)

    __init__.__signature__ = build_signature(GuidanceSettings, settings_class)
    __init__.__doc__ = describe(GuidanceSettings, settings_class)
    return register_to_config(__init__)


class BranchGuidance(BaseGuidance):
    """Base of the negguide guiders. Subclasses set ``settings_class``, ``__init__ = guider_init(settings_class)``,
    :meth:`branches`, :meth:`branch_texts` and ``forward``."""

    settings_class: type = None
    _input_predictions = ["pred_cond", "pred_uncond"]

    def _setup(self, arguments: dict) -> None:
        own, method = split_arguments(arguments, type(self).__name__, GuidanceSettings, self.settings_class)
        self.guidance = GuidanceSettings(**own)  # every check runs here, before the guider exists
        self.settings = self.settings_class(**method)
        super().__init__(self.guidance.start, self.guidance.stop, self.guidance.enabled)
        self.guidance_scale = self.guidance.guidance_scale
        self.guidance_rescale = self.guidance.guidance_rescale
        # the saved guider_config.json holds the validated values (one entry per negative, windows as pairs)
        self.register_to_config(**as_config(self.guidance), **as_config(self.settings))
        self.step_records: list[StepRecord] = []

    # ------------------------------------------------------------------ what a step computes
    def branches(self) -> list[str]:
        """The branches of the current step in batch order; the first is always the conditional one."""
        raise NotImplementedError

    def branch_texts(self) -> list[tuple[str, str]]:
        """(branch name, text) of every condition beyond diffusers' two that a run may use, in the order of the
        extra guider-input tuple entries; the pipeline encodes them (:mod:`negguide.guiders.blocks`)."""
        raise NotImplementedError

    def needs_unconditional(self) -> bool:
        """Whether some step of a run may use the unconditional branch."""
        return self._enabled and not math.isclose(self.guidance_scale, 1.0)

    def check_pipeline(self, family: str, denoiser: torch.nn.Module, inputs: dict) -> None:
        """Refuse, before any compute, what this guider cannot do on this pipeline (``inputs``: the call's)."""
        if family == "sd3" and self.needs_unconditional() and inputs.get("negative_prompt") is None:
            raise ValueError(
                f"{type(self).__name__} needs the unconditional branch, and diffusers' SD3 modular text encoder makes "
                f"its embeddings only from a negative_prompt: pass negative_prompt='' (StableDiffusion3Pipeline's "
                f"unconditional prompt), or guidance_scale=1 without Perp-Neg negatives"
            )

    def enable(self) -> None:
        """Turn the guidance back on after :meth:`disable`; a guider built with ``enabled=False`` stays off.

        diffusers' SDXL denoise loop calls ``enable()`` at every run (it disables guidance only for LCM UNets): it
        would otherwise switch on a guider configured off, after its text encoder made no unconditional embeddings
        for it."""
        if self.guidance.enabled:
            super().enable()

    def in_run(self) -> bool:
        return self._num_inference_steps is not None and self._step is not None

    def guiding(self) -> bool:
        """Enabled and inside the guider's (start, stop) window, with diffusers' rounding of the window to steps."""
        if not self._enabled:
            return False
        if not self.in_run():
            return True
        steps = self._num_inference_steps
        return int(self._start * steps) <= self._step < int(self._stop * steps)

    def cfg_on(self) -> bool:
        """diffusers' ClassifierFreeGuidance rule: guiding, and a scale that is not 1."""
        return self.guiding() and not math.isclose(self.guidance_scale, 1.0)

    def window_open(self, window) -> bool:
        """Whether a per-negative window (negguide's convention) holds the current step; any window outside a run."""
        return not self.in_run() or is_active(window, self._step, self._num_inference_steps)

    @property
    def num_conditions(self) -> int:
        return len(self.branches())

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared == 1  # the conditional batch comes first

    def reset_state(self) -> None:
        """Forget the last run's step, so that questions asked before a run (``num_conditions``) cover all steps."""
        self._step = self._num_inference_steps = self._timestep = None
        self._count_prepared = 0

    def set_state(self, step: int, num_inference_steps: int, timestep) -> None:
        super().set_state(step, num_inference_steps, timestep)
        if step == 0:
            self.step_records = []

    # ------------------------------------------------------------------ batches
    def prepare_inputs(self, data: dict) -> list[BlockState]:
        from diffusers.modular_pipelines.modular_pipeline import BlockState

        names = self.branches()
        index = dict(STANDARD_INDEX)
        index.update({name: 2 + k for k, (name, _) in enumerate(self.branch_texts())})
        width = max((len(v) for v in data.values() if isinstance(v, tuple)), default=1)
        missing = [n for n in names if index[n] >= width]
        if missing:
            raise ValueError(self._missing_message(missing, width))
        batches = []
        for name in names:
            values = {
                k: (v[index[name]] if isinstance(v, tuple) and index[name] < len(v) else _first(v))
                for k, v in data.items()
            }
            values[self._identifier_key] = identifier(name)
            batches.append(BlockState(**values))
        rows = next((t.shape[0] for t in map(_first, data.values()) if isinstance(t, torch.Tensor)), 0)
        self.step_records.append(StepRecord(self._step or 0, list(names), rows * len(names)))
        return batches

    def prepare_inputs_from_block_state(self, data: BlockState, input_fields: dict) -> list[BlockState]:
        """``input_fields`` maps a guider input to a state field or to a tuple of them (conditional, unconditional,
        extras...); the batches are :meth:`prepare_inputs`'."""
        values = {}
        for key, field in input_fields.items():
            if isinstance(field, tuple):
                values[key] = tuple(getattr(data, name, None) for name in field)
            else:
                values[key] = getattr(data, field, None)
        return self.prepare_inputs(values)

    def _missing_message(self, missing: list, width: int) -> str:
        if UNCOND in missing and width < 2:
            return (
                f"{type(self).__name__} needs the unconditional branch but the pipeline passed no unconditional "
                f"inputs (diffusers' SD3 modular text encoder makes them only from a negative_prompt: pass "
                f"negative_prompt='')"
            )
        return (
            f"{type(self).__name__} needs the branches {[m for m in missing if m != UNCOND]} but the pipeline's denoise "
            f"loop passed the guider only {width} entries per input (diffusers' loop denoisers pass the conditional "
            f"and unconditional ones): build the pipeline from negguide.guiders.add_negatives(blocks)"
        )

    # ------------------------------------------------------------------ shared guidance
    def finish(self, pred: torch.Tensor, pred_cond: torch.Tensor) -> torch.Tensor:
        """guidance_rescale, as diffusers' guiders apply it."""
        if self.guidance_rescale > 0.0:
            from diffusers.guiders.guider_utils import rescale_noise_cfg

            pred = rescale_noise_cfg(pred, pred_cond, self.guidance_rescale)
        return pred


def _first(value):
    """The conditional entry of a guider input (a tuple's first), or the value itself."""
    return value[0] if isinstance(value, tuple) else value
