"""A Flux loop denoiser that asks a guider for its batches.

diffusers' Flux modular pipeline (0.42) runs its transformer once per step on the prompt, with no guider component
and no unconditional branch: no guider can be set on it. :func:`negguide.guiders.add_negatives` puts
:class:`FluxGuidedLoopDenoiser` in its loop instead. It runs the guider protocol of the SDXL and SD3 loop denoisers
(``set_state``, ``prepare_inputs``, ``prepare_models`` / ``cleanup_models`` around each batch, then the guider on the
predictions) with the guider inputs ``encoder_hidden_states`` and ``pooled_projections``. Its default guider is
``ClassifierFreeGuidance(guidance_scale=1.0)``, which computes what the stock block computes. The unconditional
embeddings, where a guider needs them (Flux's true CFG), are the ``negative_prompt``'s (default ``""``), encoded by
the negguide step like FluxPipeline's ``true_cfg_scale`` path encodes them. The distilled guidance embedding stays the
pipeline's ``guidance_scale`` input; the guider's ``guidance_scale`` is the true-CFG scale.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.models import FluxTransformer2DModel
from diffusers.modular_pipelines.modular_pipeline import ModularPipelineBlocks
from diffusers.modular_pipelines.modular_pipeline_utils import ComponentSpec, InputParam


class FluxGuidedLoopDenoiser(ModularPipelineBlocks):
    """One step of Flux denoising with a guider: one transformer call per batch the guider asks for."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return "negguide: a step of the Flux denoising loop that runs one transformer call per guider batch"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [
            ComponentSpec(
                "guider",
                ClassifierFreeGuidance,
                config=FrozenDict({"guidance_scale": 1.0}),
                default_creation_method="from_config",
            ),
            ComponentSpec("transformer", FluxTransformer2DModel),
        ]

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("joint_attention_kwargs"),
            InputParam("latents", required=True, type_hint=torch.Tensor, description="the latents being denoised"),
            InputParam("guidance", type_hint=torch.Tensor, description="the distilled guidance embedding's scale"),
            InputParam("prompt_embeds", required=True, type_hint=torch.Tensor, description="T5 prompt embeddings"),
            InputParam("pooled_prompt_embeds", required=True, type_hint=torch.Tensor, description="CLIP pooled"),
            InputParam("txt_ids", required=True, type_hint=torch.Tensor, description="text RoPE positions"),
            InputParam("img_ids", required=True, type_hint=torch.Tensor, description="image RoPE positions"),
            InputParam("num_inference_steps", required=True, type_hint=int, description="steps of the run"),
        ]

    @torch.no_grad()
    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        guider = components.guider
        guider.set_state(step=i, num_inference_steps=block_state.num_inference_steps, timestep=t)
        inputs = {
            "encoder_hidden_states": block_state.prompt_embeds,
            "pooled_projections": block_state.pooled_prompt_embeds,
        }
        batches = guider.prepare_inputs(inputs)
        for batch in batches:
            guider.prepare_models(components.transformer)
            batch.noise_pred = components.transformer(
                hidden_states=block_state.latents,
                timestep=t.flatten() / 1000,
                guidance=block_state.guidance,
                encoder_hidden_states=batch.encoder_hidden_states,
                pooled_projections=batch.pooled_projections,
                joint_attention_kwargs=block_state.joint_attention_kwargs,
                txt_ids=block_state.txt_ids,
                img_ids=block_state.img_ids,
                return_dict=False,
            )[0]
            guider.cleanup_models(components.transformer)
        block_state.noise_pred = guider(batches).pred
        return components, block_state
