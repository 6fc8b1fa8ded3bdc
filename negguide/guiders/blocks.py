"""Modular-pipeline blocks that bring a negguide guider the conditions beyond diffusers' two.

diffusers' loop denoisers build the guider's inputs as ``(conditional, unconditional)`` tuples from fixed pipeline
state fields (``prompt_embeds`` / ``negative_prompt_embeds``, ...), so a guider sees no other condition.
:func:`add_negatives` returns a copy of a family's blocks with two changes:

* :class:`NegativePromptsStep` runs first: it checks the guider against the pipeline (before any compute) and
  encodes the guider's extra prompts (:meth:`~negguide.guiders.base.BranchGuidance.branch_texts`) with the
  pipeline's own text encoders into the state field ``negguide_conditions``, the way the text encoder block puts
  ``prompt_embeds`` there;
* every loop denoiser that asks the guider for its batches is wrapped in :class:`NegativesLoopDenoiser`, which reads
  ``negguide_conditions`` from the state and extends the guider's input tuples to
  ``(conditional, unconditional, extra_0, extra_1, ...)`` before the guider sees them. The wrapped block itself
  runs unchanged.

A stock guider passes through both untouched, so the returned blocks behave as the originals with it.
"""

from __future__ import annotations

import copy

import torch
from diffusers.modular_pipelines.modular_pipeline import (
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    PipelineState,
)
from diffusers.modular_pipelines.modular_pipeline_utils import InputParam, OutputParam

from negguide.guiders.base import UNCOND, BranchGuidance
from negguide.guiders.encode import MODEL_NAMES, encode_texts

STEP_NAME = "negguide_negatives"
CONDITIONS = "negguide_conditions"


def _conditions_output() -> OutputParam:
    return OutputParam(
        CONDITIONS,
        type_hint=dict,
        description="the negguide guider's extra conditions: {branch name: {guider input name: [1, ...] tensor}}",
    )


class NegativePromptsStep(ModularPipelineBlocks):
    """Checks a negguide guider against the pipeline and encodes its negatives (and extra positives)."""

    family: str = ""

    @property
    def description(self) -> str:
        return (
            "negguide: checks the guider against the pipeline, then encodes the guider's negative (and extra "
            "positive) prompts with the pipeline's text encoders; nothing for a guider that needs none"
        )

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [_conditions_output()]

    def options(self, block_state) -> dict:
        """The encoding options of the call (the family's text encoder inputs)."""
        return {}

    def unconditional_text(self, guider, block_state) -> str | None:
        """The unconditional prompt this step encodes for ``guider`` (None: the family's text encoder makes it)."""
        return None

    @torch.no_grad()
    def __call__(self, components, state: PipelineState):
        block_state = self.get_block_state(state)
        guider = getattr(components, "guider", None)
        texts: list = []
        if isinstance(guider, BranchGuidance):
            guider.reset_state()  # the text encoder's num_conditions question then covers every step of the run
            denoiser = getattr(components, "unet", None)
            if denoiser is None:
                denoiser = getattr(components, "transformer", None)
            call = {"negative_prompt": getattr(block_state, "negative_prompt", None)}
            guider.check_pipeline(self.family, denoiser, call)
            texts = guider.branch_texts()
        unconditional = self.unconditional_text(guider, block_state)
        if unconditional is not None:
            texts = [(UNCOND, unconditional), *texts]
        options = {k: v for k, v in self.options(block_state).items() if v is not None}
        block_state.negguide_conditions = encode_texts(self.family, components, texts, options) if texts else {}
        self.set_block_state(state, block_state)
        return components, state


class SDXLNegativePromptsStep(NegativePromptsStep):
    model_name = "stable-diffusion-xl"
    family = "sdxl"

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("clip_skip")]

    def options(self, block_state) -> dict:
        return {"clip_skip": block_state.clip_skip}


class SD3NegativePromptsStep(NegativePromptsStep):
    model_name = "stable-diffusion-3"
    family = "sd3"

    @property
    def inputs(self) -> list[InputParam]:
        # the same defaults as diffusers' SD3 text encoder block: the first block to declare an input sets it
        return [
            InputParam("negative_prompt"),
            InputParam("clip_skip", type_hint=int),
            InputParam("max_sequence_length", type_hint=int, default=256),
        ]

    def options(self, block_state) -> dict:
        return {"clip_skip": block_state.clip_skip, "max_sequence_length": block_state.max_sequence_length}


class FluxNegativePromptsStep(NegativePromptsStep):
    model_name = "flux"
    family = "flux"

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("negative_prompt", description="the unconditional prompt of true CFG (default '')"),
            InputParam("max_sequence_length", type_hint=int, default=512, required=False),
        ]

    def options(self, block_state) -> dict:
        return {"max_sequence_length": block_state.max_sequence_length}

    def unconditional_text(self, guider, block_state) -> str | None:
        # diffusers' Flux text encoder makes no unconditional embeddings: FluxPipeline's true CFG encodes
        # negative_prompt, "" by default
        if isinstance(guider, BranchGuidance):
            needed = guider.needs_unconditional()
        else:
            needed = guider is not None and guider.num_conditions > 1
        if not needed:
            return None
        negative = block_state.negative_prompt
        if negative is not None and not isinstance(negative, str):
            raise TypeError(f"negative_prompt must be a string on this Flux pipeline, got {type(negative).__name__}")
        return negative or ""


STEPS = {"sdxl": SDXLNegativePromptsStep, "sd3": SD3NegativePromptsStep, "flux": FluxNegativePromptsStep}


def extend_inputs(data: dict, conditions: dict, names: list[str]) -> dict:
    """The guider inputs ``data`` with one more tuple entry per branch of ``names`` for every input the
    conditions hold (and the unconditional entry where ``data`` has none and the conditions have ``"uncond"``); a
    condition of one row is repeated to the conditional entry's rows."""
    missing = [n for n in names if n not in conditions]
    if missing:
        raise ValueError(
            f"the pipeline state holds no conditions for the guider's branches {missing}: the guider changed after "
            f"the {STEP_NAME} step ran; run the whole pipeline again"
        )
    out = {}
    for key, value in data.items():
        cond, uncond = (value[0], value[1]) if isinstance(value, tuple) else (value, None)
        parts = [conditions[n].get(key) for n in names]
        fill = conditions.get(UNCOND, {}).get(key) if uncond is None else None
        if fill is None and all(p is None for p in parts):
            out[key] = value
            continue
        if uncond is None:
            uncond = _fit(fill, cond)
        out[key] = (cond, uncond, *(_fit(cond if p is None else p, cond) for p in parts))
    return out


def _fit(part, cond):
    """``part`` with the rows, device and dtype of the conditional entry (None stays None)."""
    if part is None or part is cond:
        return part
    if part.shape[0] != cond.shape[0]:
        part = part.expand(cond.shape[0], *part.shape[1:]).contiguous()
    return part.to(device=cond.device, dtype=cond.dtype)


class _GuiderView:
    """The guider, with its inputs extended by the state's conditions (everything else is the guider's own)."""

    def __init__(self, guider, conditions: dict):
        self._guider, self._conditions = guider, conditions

    def prepare_inputs(self, data: dict):
        texts = self._guider.branch_texts() if isinstance(self._guider, BranchGuidance) else []
        names = [name for name, _ in texts]
        return self._guider.prepare_inputs(extend_inputs(data, self._conditions, names))

    def __call__(self, data):
        return self._guider(data)

    def __getattr__(self, name: str):
        return getattr(self._guider, name)


class _PipelineView:
    """The pipeline with :class:`_GuiderView` as its guider, for one call of a loop denoiser."""

    def __init__(self, pipeline, guider: _GuiderView):
        self._pipeline, self.guider = pipeline, guider

    def __getattr__(self, name: str):
        return getattr(self._pipeline, name)


class NegativesLoopDenoiser(ModularPipelineBlocks):
    """A diffusers loop denoiser whose guider also receives the state's ``negguide_conditions``."""

    def __init__(self, block: ModularPipelineBlocks):
        super().__init__()
        self.block = block
        self.model_name = block.model_name

    @property
    def description(self) -> str:
        return f"{self.block.description} (negguide: the guider also receives the {CONDITIONS} of the state)"

    @property
    def expected_components(self):
        return self.block.expected_components

    @property
    def expected_configs(self):
        return self.block.expected_configs

    @property
    def inputs(self) -> list[InputParam]:
        return [
            *self.block.inputs,
            InputParam(CONDITIONS, type_hint=dict, description=_conditions_output().description),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return self.block.intermediate_outputs

    @torch.no_grad()
    def __call__(self, components, block_state, i: int, t):
        conditions = getattr(block_state, CONDITIONS, None)
        guider = getattr(components, "guider", None)
        if not conditions:
            return self.block(components, block_state, i, t)
        _, block_state = self.block(_PipelineView(components, _GuiderView(guider, conditions)), block_state, i, t)
        return components, block_state


def _asks_guider(block) -> bool:
    return any(spec.name == "guider" for spec in block.expected_components) and not block.sub_blocks


def _family(blocks) -> str:
    stack = [blocks]
    while stack:
        block = stack.pop(0)
        if block.model_name in MODEL_NAMES:
            return MODEL_NAMES[block.model_name]
        stack.extend(block.sub_blocks.values())
    raise ValueError(
        f"add_negatives supports the modular blocks of {sorted(MODEL_NAMES)}; {type(blocks).__name__} is none of them"
    )


def _wrap(block, family: str) -> int:
    count = 0
    for name, sub in list(block.sub_blocks.items()):
        if isinstance(block, LoopSequentialPipelineBlocks) and _asks_guider(sub):
            block.sub_blocks[name] = NegativesLoopDenoiser(sub)
            count += 1
        elif family == "flux" and isinstance(block, LoopSequentialPipelineBlocks) and _flux_denoiser(sub):
            from negguide.guiders.flux import FluxGuidedLoopDenoiser

            block.sub_blocks[name] = NegativesLoopDenoiser(FluxGuidedLoopDenoiser())
            count += 1
        else:
            count += _wrap(sub, family)
    return count


def _flux_denoiser(block) -> bool:
    from diffusers.modular_pipelines.flux.denoise import FluxLoopDenoiser

    return type(block) is FluxLoopDenoiser


def add_negatives(blocks: ModularPipelineBlocks) -> ModularPipelineBlocks:
    """A copy of a family's modular blocks (SDXL, SD3, Flux) through which a negguide guider receives its negatives.

    ``blocks`` is left as it is. With a stock guider the copy computes what ``blocks`` computes.

        blocks = add_negatives(StableDiffusionXLAutoBlocks())
        pipe = blocks.init_pipeline()
        pipe.update_components(**components, guider=PerpNegGuider(negatives=["blurry"]))
    """
    if not isinstance(blocks, ModularPipelineBlocks):
        raise TypeError(f"add_negatives takes diffusers modular pipeline blocks, got {type(blocks).__name__}")
    if STEP_NAME in blocks.sub_blocks:
        raise ValueError(f"these blocks already have negguide's {STEP_NAME!r} step; give the original blocks")
    family = _family(blocks)
    blocks = copy.deepcopy(blocks)
    if not _wrap(blocks, family):
        raise ValueError(f"{type(blocks).__name__} has no denoising loop that asks a guider for its batches")
    blocks.sub_blocks.insert(STEP_NAME, STEPS[family](), 0)
    return blocks
