"""Diffusers' pipeline mixins on negguide's pipelines: LoRA, textual inversion, CPU offload, VAE tiling and slicing,
attention backends.

:class:`~negguide.PerpNegPipeline` (and :class:`~negguide.NegToMePipeline`) run the family's own diffusers pipeline
(``pipe.family_pipeline()``) on the same module objects. :class:`FamilyMixins` forwards a declared list of methods
(:data:`FORWARDED`) to where diffusers keeps them, so ``pipe.load_lora_weights(...)`` is the family pipeline's
``load_lora_weights`` acting on the shared modules:

- ``"family"``: the family pipeline's method (LoRA, textual inversion, offload). A LoRA injected there is in the
  shared UNet/transformer and text encoders; a textual-inversion token is in the shared tokenizer and text encoder;
  offload hooks belong to the pipeline whose ``__call__`` ends with ``maybe_free_model_hooks()``, the family one.
- ``"vae"`` / ``"denoiser"``: a method of the component (diffusers 0.42 removed ``enable_vae_tiling`` and friends
  from the pipelines; the attention backend is set on the denoiser).

A name is an attribute of a pipeline only where its target really has it: ``hasattr(pipe, name)`` and ``dir(pipe)``
say so per family, and using a missing one raises an ``AttributeError`` that names the family and the alternative
(SD3 has no textual inversion; only Flux's denoiser, in diffusers 0.42, honours attention backends).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from negguide.core.families import get_adapter

_TI_ALTERNATIVE = (
    "pass a learned negative as negative_prompt_embeds (and negative_pooled_prompt_embeds), e.g. a ReNeg "
    "embedding (negguide.reneg), or use a family with a textual-inversion loader (SD1.x/2.x, SDXL, Flux)"
)
_BACKEND_ALTERNATIVE = (
    "its attention processors ignore diffusers' attention backends; use pipe.enable_xformers_memory_efficient_"
    "attention(), pipe.enable_attention_slicing() or the denoiser's set_attn_processor(...) instead"
)


def _takes_backend(denoiser) -> bool:
    return any(hasattr(getattr(m, "processor", None), "_attention_backend") for m in denoiser.modules())


@dataclass(frozen=True)
class Forward:
    """One forwarded method: ``pipe.<name>`` is ``<target>.<method>`` (target ``"family"``: the family pipeline)."""

    group: str
    target: str
    method: str
    available: Callable | None = None  # (target object) -> bool, beyond hasattr
    alternative: str = ""  # said when the name is unavailable on a family


def _on_family(group: str, names: tuple, alternative: str = "") -> dict:
    return {name: Forward(group, "family", name, alternative=alternative) for name in names}


#: every forwarded name -> where it goes
FORWARDED: dict[str, Forward] = {
    **_on_family(
        "LoRA",
        (
            "load_lora_weights",
            "set_adapters",
            "get_active_adapters",
            "get_list_adapters",
            "enable_lora",
            "disable_lora",
            "delete_adapters",
            "fuse_lora",
            "unfuse_lora",
            "unload_lora_weights",
            "set_lora_device",
            "enable_lora_hotswap",
        ),
    ),
    **_on_family(
        "textual inversion",
        ("load_textual_inversion", "unload_textual_inversion", "maybe_convert_prompt"),
        _TI_ALTERNATIVE,
    ),
    **_on_family(
        "offload",
        ("enable_model_cpu_offload", "enable_sequential_cpu_offload", "remove_all_hooks", "maybe_free_model_hooks"),
    ),
    "enable_vae_tiling": Forward("VAE", "vae", "enable_tiling"),
    "disable_vae_tiling": Forward("VAE", "vae", "disable_tiling"),
    "enable_vae_slicing": Forward("VAE", "vae", "enable_slicing"),
    "disable_vae_slicing": Forward("VAE", "vae", "disable_slicing"),
    "set_attention_backend": Forward(
        "attention", "denoiser", "set_attention_backend", _takes_backend, _BACKEND_ALTERNATIVE
    ),
    "reset_attention_backend": Forward(
        "attention", "denoiser", "reset_attention_backend", _takes_backend, _BACKEND_ALTERNATIVE
    ),
}


def _family_class(family: str):
    import diffusers

    return getattr(diffusers, get_adapter(family).pipeline_class)


def _missing(pipe, name: str) -> str | None:
    """Why ``pipe.<name>`` is not available (None: it is), without building anything."""
    spec = FORWARDED[name]
    family = pipe.__dict__.get("family")
    if family is None:
        return f"{type(pipe).__name__}.{name} needs a pipeline with components (no family detected yet)"
    if spec.target == "family":
        owner = _family_class(family)
        if hasattr(owner, spec.method):
            return None
        return f"{name} is not available on the {family} family: diffusers' {owner.__name__} has no {name}; " + (
            spec.alternative or "call the family pipeline's own methods (pipe.family_pipeline())"
        )
    attr = get_adapter(family).denoiser_attr if spec.target == "denoiser" else spec.target
    component = getattr(pipe, attr, None)
    if component is not None and hasattr(component, spec.method) and (spec.available or bool)(component):
        return None
    return f"{name} is not available on the {family} family: pipe.{attr} ({type(component).__name__}): " + (
        spec.alternative or f"it has no {spec.method}"
    )


class _Forwarded:
    """The descriptor behind each name of :data:`FORWARDED`: the target's bound method, or AttributeError."""

    def __init__(self, name: str, spec: Forward):
        self.name, self.spec = name, spec
        where = "the family's diffusers pipeline" if spec.target == "family" else f"the {spec.target}"
        self.__doc__ = (
            f"{spec.group}: {where}'s ``{spec.method}`` (diffusers' documentation applies); an AttributeError on "
            f"a family where {where} lacks it."
        )

    def __get__(self, pipe, owner=None):
        if pipe is None:
            return self  # class access: help() and the API docs read __doc__
        reason = _missing(pipe, self.name)
        if reason is not None:
            raise AttributeError(reason)
        if self.spec.target == "family":
            target = pipe.family_pipeline()
        elif self.spec.target == "denoiser":
            target = getattr(pipe, get_adapter(pipe.family).denoiser_attr)
        else:
            target = getattr(pipe, self.spec.target)
        method = getattr(target, self.spec.method)
        if self.name == "load_textual_inversion":
            return _checked_textual_inversion(pipe.family, method)
        return method


def _checked_textual_inversion(family: str, load):
    """``load_textual_inversion`` with a clear error for an A1111/ComfyUI SDXL file (``clip_l`` and ``clip_g``)."""
    import functools

    @functools.wraps(load)
    def load_textual_inversion(pretrained_model_name_or_path, *args, **kwargs):
        keys = _state_dict_keys(pretrained_model_name_or_path)
        if {"clip_l", "clip_g"} <= keys:
            raise ValueError(
                f"{pretrained_model_name_or_path!s:.80} is an SDXL embedding with one tensor per text encoder "
                f"(clip_l, clip_g), on a {family} pipeline; load each half into its encoder: "
                "state = safetensors.torch.load_file(path); "
                "pipe.load_textual_inversion(state['clip_l'], token=T, text_encoder=pipe.text_encoder, "
                "tokenizer=pipe.tokenizer); pipe.load_textual_inversion(state['clip_g'], token=T, "
                "text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)"
            )
        return load(pretrained_model_name_or_path, *args, **kwargs)

    return load_textual_inversion


def _state_dict_keys(source) -> set:
    """The keys of a state dict or of a local .safetensors file (read from its header), else an empty set."""
    if isinstance(source, dict):
        return set(source)
    if isinstance(source, (str, os.PathLike)) and str(source).endswith(".safetensors") and os.path.isfile(source):
        from safetensors import safe_open

        with safe_open(os.fspath(source), framework="pt") as handle:
            return set(handle.keys())
    return set()


def carry_offload(previous, pipeline) -> None:
    """A family pipeline rebuilt because a component was replaced keeps model CPU offload on (the hooks move to the
    current components; diffusers' own pipelines need ``enable_model_cpu_offload()`` again after a swap)."""
    if previous is not None and getattr(previous, "_all_hooks", None):
        pipeline.enable_model_cpu_offload(device=previous._offload_device)


class FamilyMixins:
    """Forwards :data:`FORWARDED` (LoRA, textual inversion, CPU offload, VAE tiling/slicing, attention backends).

    The host defines ``family`` (an attribute set in ``__init__``) and ``family_pipeline()``. Put it before
    ``DiffusionPipeline`` in the bases: its descriptors replace the pipeline's own ``enable_model_cpu_offload``,
    ``enable_sequential_cpu_offload``, ``remove_all_hooks`` and ``maybe_free_model_hooks``, whose hooks must belong
    to the family pipeline that runs the call.

    SDXL textual inversion: an A1111/ComfyUI SDXL embedding holds ``clip_l`` and ``clip_g`` tensors, one per text
    encoder; load each with ``pipe.load_textual_inversion(state["clip_l"], token=T, text_encoder=pipe.text_encoder,
    tokenizer=pipe.tokenizer)`` and ``(state["clip_g"], token=T, text_encoder=pipe.text_encoder_2,
    tokenizer=pipe.tokenizer_2)``. On Flux, ``load_textual_inversion`` loads into the CLIP encoder (the pooled
    embedding), as in diffusers; T5 reads the token as text.
    """

    def __getattr__(self, name: str):
        if name in FORWARDED:  # a descriptor refused: say why (the descriptor raises again if it is available)
            reason = _missing(self, name)
            if reason is None:
                return FORWARDED_DESCRIPTORS[name].__get__(self, type(self))
            raise AttributeError(reason)
        fallback = getattr(super(), "__getattr__", None)  # ConfigMixin's: config entries
        if fallback is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return fallback(name)

    def __dir__(self):
        return [n for n in super().__dir__() if n not in FORWARDED or _missing(self, n) is None]


FORWARDED_DESCRIPTORS = {name: _Forwarded(name, spec) for name, spec in FORWARDED.items()}
for _name, _descriptor in FORWARDED_DESCRIPTORS.items():
    setattr(FamilyMixins, _name, _descriptor)
del _name, _descriptor
