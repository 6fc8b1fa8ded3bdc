"""NAG on a diffusers denoiser: reversible wrappers around the guided attention modules' processors.

Each guided attention module keeps its processor (SDPA, xformers, LoRA, IP-Adapter, custom ones): a thin
:class:`NAGProcessor` calls it and reads (and, for the positive, replaces) the features at the input of the output
projection ``attn.to_out[0]``, where the reference code applies the guidance. Flux single blocks have no output
projection in the attention: there the processor's output is guided (its image tokens, after the text tokens).

* UNet (SD1.x/2.x, SDXL): the cross-attention ``attn2`` runs once more per active negative, on the same image
  tokens with the negative's embeddings as ``encoder_hidden_states`` (``Z-``), then once for the positive (``Z+``).
* MMDiT (SD3 joint blocks, Flux joint and single blocks): the negative's text tokens are a stream of their own
  that evolves block by block beside the (guided) image stream, as in the reference code. In every block up to the
  last guided one, each active negative's stream attends together with the image tokens, whose queries, keys and
  values are the positive's: ``Z-`` is that attention's image output, and the block's text side (adaptive norm,
  projections, feed-forward) makes the negative's stream for the next block. For diffusers' own blocks and
  processors this runs inside the positive's call of the block (:mod:`negguide.nag.mmdit`): the image stream's
  norm, projections and feed-forward run once. Any other block or processor is run whole once more per negative,
  before the positive, by a block pre-hook (its image output discarded); both give the same features. The
  negative's stream is modulated by the call's own ``temb`` (the reference's SD3 code does this; its Flux code
  uses the negative's pooled text).

Only the image tokens of the guided rows (``rows``: by default the conditional half of a batched CFG call) change.
A negative outside its window or of weight 0 is never computed; then every processor runs exactly as without NAG.
The windows read :class:`NAGProgress`, which ``callback_on_step_end=handle.progress.callback`` drives (or, without
it, the scheduler's ``step_index``). Nothing here reads a tensor's value on the host.

    handle = apply(pipe, NAGSettings(negatives=["blurry"]), encode_options={"max_sequence_length": 256})
    with handle:
        image = pipe("a cat", guidance_scale=0.0, callback_on_step_end=handle.progress.callback).images[0]
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from negguide.core.families import detect_family, get_adapter
from negguide.guidance.windows import is_active
from negguide.nag.mmdit import BlockPass, fast_kind
from negguide.nag.processor import CallState, NAGProcessor, rows_of
from negguide.nag.settings import BLOCK_ALIASES, NAGSettings

ATTR = "_negguide_nag"
_STREAMS = {"sd3": ("transformer_blocks",), "flux": ("transformer_blocks", "single_transformer_blocks")}


@dataclass
class NAGProgress:
    """The sampling step the windows are read at: set by :meth:`callback` (``callback_on_step_end``) or
    :meth:`set`; until then the scheduler's ``step_index`` (if it has one), else step 0."""

    step: int = 0
    num_steps: int | None = None
    scheduler: Any = None

    def set(self, step: int, num_steps: int) -> None:
        if num_steps <= 0 or not 0 <= step <= num_steps:
            raise ValueError(f"step {step} of {num_steps} is not a step of a sampling run")
        self.step, self.num_steps = step, num_steps

    def reset(self) -> None:
        self.step, self.num_steps = 0, None

    def callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """For ``callback_on_step_end``: the next step is ``step + 1``; after the last one, back to the start."""
        total = getattr(pipe, "_num_timesteps", None) or self.num_steps
        if not total or step + 1 >= total:
            self.reset()
        else:
            self.set(step + 1, total)
        return callback_kwargs

    def position(self) -> tuple[int, int]:
        """(step, num_steps) now; (0, 1) when nothing says where the run is."""
        if self.num_steps:
            return self.step, self.num_steps
        index = getattr(self.scheduler, "step_index", None)
        timesteps = getattr(self.scheduler, "timesteps", None)
        if index is not None and timesteps is not None and len(timesteps):
            return min(index, len(timesteps)), len(timesteps)
        return 0, 1


@dataclass
class Target:
    """One guided attention module; ``kind``: 'cross' (UNet attn2), 'joint' (MMDiT) or 'single' (Flux single)."""

    name: str
    module: torch.nn.Module
    kind: str


def _named(denoiser, family: str) -> dict:
    """The guidable attention modules by name: UNet cross-attention, MMDiT block attention."""
    if family in _STREAMS:
        return {
            f"{stream}.{i}.attn": (block.attn, "single" if stream.startswith("single") else "joint")
            for stream in _STREAMS[family]
            for i, block in enumerate(getattr(denoiser, stream, []))
        }
    return {
        n: (m, "cross")
        for n, m in denoiser.named_modules()
        if n.endswith(".attn2") and getattr(m, "is_cross_attention", False) and hasattr(m, "processor")
    }


def select_attention(denoiser: torch.nn.Module, family: str, blocks) -> list[Target]:
    """The guided attention modules for ``blocks`` (aliases or module-name prefixes); ValueError if none match."""
    found = _named(denoiser, family)
    if not found:
        raise ValueError(
            f"{type(denoiser).__name__} has no {'cross-attention' if family in ('sd', 'sdxl') else 'joint'} "
            f"attention layers with a processor: NAG cannot guide it"
        )
    chosen: dict = {}
    for block in blocks:
        prefix = BLOCK_ALIASES[family].get(block, block)
        matches = [n for n in found if n.startswith(prefix if prefix.endswith(".") else prefix + ".") or n == prefix]
        if not matches:
            raise ValueError(
                f"blocks has {block!r}, which matches no guidable attention of this {family} model; use one of "
                f"{sorted(BLOCK_ALIASES[family])} or a module-name prefix of {next(iter(found))!r}"
            )
        chosen.update({n: found[n] for n in matches})
    return [Target(n, m, kind) for n, (m, kind) in chosen.items()]


def _context_width(denoiser, family: str, targets: list) -> int:
    if family in _STREAMS:
        return denoiser.context_embedder.in_features
    kind = getattr(denoiser.config, "encoder_hid_dim_type", None)
    if getattr(denoiser, "encoder_hid_proj", None) is not None and kind == "text_proj":
        return denoiser.encoder_hid_proj.in_features
    if kind not in (None, "text_proj", "ip_image_proj"):
        raise ValueError(f"NAG does not support UNets with encoder_hid_dim_type = {kind!r}")
    return targets[0].module.to_k.in_features


class NAGHandle:
    """Installed NAG on one denoiser; ``remove()`` (or leaving the ``with`` block) restores every processor.

    ``contexts``: one encoded negative per negative, ``[rows, tokens, dim]`` tensors as the denoiser takes them
    (``encoder_hidden_states``; dicts from a family adapter's ``encode`` work too), with 1 row (shared) or one
    per guided row. ``rows(total) -> slice | None`` picks the guided rows of a call (None: leave it alone).
    """

    def __init__(self, denoiser, family: str, settings: NAGSettings, contexts, rows=None, progress=None):
        self.denoiser, self.family, self.adapter = denoiser, family, get_adapter(family)
        contexts = list(contexts or [])
        self.settings = settings.resolved(family, len(contexts))
        self.attention = select_attention(denoiser, family, self.settings.blocks)
        self.width = _context_width(denoiser, family, self.attention)
        self.contexts = self._checked(contexts)
        self.rows = rows or (lambda total: slice(0, total))
        self.progress = progress or NAGProgress()
        self.state = CallState()
        self._signature = inspect.signature(denoiser.forward)
        self._installed: list = []  # (module, previous processor, wrapper)
        self._hooks: list = []
        self._ready: dict = {}

    def _checked(self, contexts: list) -> list:
        out = []
        for i, context in enumerate(contexts):
            if isinstance(context, dict):
                context = context.get("encoder_hidden_states")
            if not isinstance(context, torch.Tensor) or context.ndim != 3:
                got = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
                raise ValueError(f"negative context {i} must be a [rows, tokens, dim] tensor, got {got}")
            if context.shape[-1] != self.width:
                raise ValueError(
                    f"negative context {i} has width {context.shape[-1]} but this {self.family} denoiser takes "
                    f"{self.width}: encode the negatives with the pipeline's own text encoders"
                )
            if not torch.isfinite(context).all():
                raise ValueError(f"negative context {i} holds NaN or infinite values")
            out.append(context)
        return out

    def set_contexts(self, contexts) -> None:
        """Replace the negatives' encoded contexts (same count as the settings' weights), e.g. per call."""
        contexts = list(contexts)
        if len(contexts) != len(self.settings.negative_weights):
            raise ValueError(f"{len(contexts)} contexts for {len(self.settings.negative_weights)} negatives")
        self.contexts, self._ready = self._checked(contexts), {}

    # ------------------------------------------------------------------ install / remove
    def install(self) -> NAGHandle:
        if getattr(self.denoiser, ATTR, None) is not None:
            raise RuntimeError("NAG is already applied to this denoiser; remove() it first")
        for target in self.attention:
            previous = target.module.processor
            wrapper = NAGProcessor(previous, self, target.kind)
            # shadow the attribute: a processor that is a module stays registered (state_dict, .to() unchanged)
            target.module.__dict__["processor"] = wrapper
            self._installed.append((target.module, previous, wrapper))
        self._hooks.append(self.denoiser.register_forward_pre_hook(self._before, with_kwargs=True))
        self._hooks.append(self.denoiser.register_forward_hook(self._after, always_call=True))
        blocks = self._stream_blocks()
        guided = {id(t.module) for t in self.attention}
        for index, block in enumerate(blocks):
            plan = (id(block.attn) in guided, index < len(blocks) - 1)  # (guided, a later block reads the stream)
            self._hooks.append(block.register_forward_pre_hook(self._negative_pass(block, *plan), with_kwargs=True))
            self._hooks.append(block.register_forward_hook(self._block_done, always_call=True))
        setattr(self.denoiser, ATTR, self)
        return self

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for module, previous, wrapper in reversed(self._installed):
            if module.__dict__.get("processor") is not wrapper:
                warnings.warn(
                    f"{type(module).__name__}'s processor was replaced while NAG was on; left as it is", stacklevel=2
                )
            elif isinstance(previous, torch.nn.Module) and module._modules.get("processor") is previous:
                del module.__dict__["processor"]
            else:
                module.__dict__["processor"] = previous
        self._hooks, self._installed = [], []
        if getattr(self.denoiser, ATTR, None) is self:
            delattr(self.denoiser, ATTR)
        self.state = CallState()

    def __enter__(self) -> NAGHandle:
        return self if self._hooks else self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    def _stream_blocks(self) -> list:
        """MMDiT blocks whose negative pass is needed: every block up to the last guided one."""
        if self.family not in _STREAMS:
            return []
        blocks = [b for stream in _STREAMS[self.family] for b in getattr(self.denoiser, stream, [])]
        guided = {id(t.module) for t in self.attention}
        last = max(i for i, b in enumerate(blocks) if id(b.attn) in guided)
        return blocks[: last + 1]

    # ------------------------------------------------------------------ hooks
    def _context(self, i: int, like: torch.Tensor, count: int) -> torch.Tensor:
        """Negative ``i``'s context on ``like``'s device and dtype, with 1 or ``count`` rows."""
        key = (i, like.device, like.dtype)
        if key not in self._ready:
            self._ready[key] = self.contexts[i].to(device=like.device, dtype=like.dtype)
        context = self._ready[key]
        if context.shape[0] not in (1, count):
            raise ValueError(f"negative context {i} has {context.shape[0]} rows; this call guides {count}: give 1")
        return context

    def _before(self, module, args, kwargs):
        s = self.settings
        self.state = state = CallState()
        step, total_steps = self.progress.position()
        active = [
            i
            for i, (w, window) in enumerate(zip(s.negative_weights, s.negative_windows))
            if w > 0 and is_active(window, step, total_steps)
        ]
        if not active or s.alpha == 0:
            return None
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        total = bound[self.adapter.latent_key].shape[0]
        rows = self.rows(total)
        if rows is None:
            return None
        start, stop, stride = rows.indices(total)
        if stride != 1 or stop <= start:
            raise ValueError(f"rows must be a non-empty contiguous slice of the {total} rows, got {rows}")
        text = bound.get("encoder_hidden_states")
        if not isinstance(text, torch.Tensor):
            raise ValueError("NAG needs the denoiser's encoder_hidden_states (the positive's text embeddings)")
        contexts = {i: self._context(i, text, stop - start) for i in active}
        if self.family == "flux":
            for i, context in contexts.items():
                if context.shape[1] != text.shape[1]:
                    raise ValueError(
                        f"Flux negative {i} has {context.shape[1]} text tokens but the prompt has {text.shape[1]} "
                        f"(rotary positions): encode it with the same max_sequence_length"
                    )
        if self.family in _STREAMS:  # the text stream's start, embedded once per shared row
            contexts = {i: self.denoiser.context_embedder(c) for i, c in contexts.items()}
        elif getattr(self.denoiser.config, "encoder_hid_dim_type", None) == "text_proj":
            contexts = {i: self.denoiser.encoder_hid_proj(c) for i, c in contexts.items()}
        contexts = {i: c.expand(stop - start, *c.shape[1:]) for i, c in contexts.items()}
        state.total, state.rows, state.active, state.contexts = total, slice(start, stop), active, contexts
        state.scales = [s.negative_weights[i] for i in active]
        state.text_tokens, state.on = text.shape[1], True
        return None

    def _after(self, module, args, output):
        if self.state.block_pass is not None:  # a block raised: stop capturing its projections
            self.state.block_pass.remove()
        self.state = CallState()  # drops the negatives' streams and features
        return None

    def _negative_pass(self, block: torch.nn.Module, guided: bool, need_stream: bool):
        signature = inspect.signature(block.forward)

        def hook(module, args, kwargs):
            state = self.state
            if not state.on:
                return None
            call = dict(signature.bind(*args, **kwargs).arguments)
            processor = module.attn.processor
            inner = processor.inner if isinstance(processor, NAGProcessor) else processor
            kind = fast_kind(module, inner, call)
            if kind is not None:  # the negatives run inside this call of the block
                state.block_pass = BlockPass(module, kind, state, call, guided, need_stream)
                return None
            call["hidden_states"] = call["hidden_states"][state.rows]
            call["temb"] = rows_of(call["temb"], state.rows, state.total)
            try:
                for i in state.active:
                    if state.contexts.get(i) is None:  # the stream ended (SD3's last block is context_pre_only)
                        continue
                    state.negative = i
                    call["encoder_hidden_states"] = state.contexts[i]
                    state.contexts[i] = module.forward(**call)[0]  # the image output is discarded
            finally:
                state.negative = None
            return None

        return hook

    def _block_done(self, module, args, output):
        """After a block: the negatives' streams advance (if its processor did not already) and capturing stops."""
        block_pass = self.state.block_pass
        if block_pass is None or block_pass.block is not module:
            return None
        self.state.block_pass = None
        block_pass.remove()
        if output is not None:  # None: the block raised
            block_pass.run()
        return None


def cfg_rows(pipe) -> Callable[[int], slice]:
    """The guided rows of a plain diffusers pipeline: the conditional half when it batches CFG, else all."""

    def rows(total: int) -> slice:
        try:
            cfg = bool(pipe.do_classifier_free_guidance)
        except AttributeError:  # not set before the call, or a pipeline (Flux) that runs branches separately
            cfg = False
        return slice(total // 2, total) if cfg and total % 2 == 0 else slice(0, total)

    return rows


def encode_negatives(pipe, family: str, prompts: list, options: dict | None = None) -> list:
    """One ``[1, tokens, dim]`` context per prompt, encoded by the pipeline's own text encoders."""
    adapter, device = get_adapter(family), pipe._execution_device
    with torch.no_grad():
        return [adapter.encode(pipe, [p], 1, device, options or {})["encoder_hidden_states"] for p in prompts]


def apply(pipe, settings: NAGSettings | None = None, contexts=None, *, rows=None, progress=None, encode_options=None):
    """Install NAG on a diffusers pipeline (SD1.x/2.x, SDXL, SD3, Flux) and return the handle.

    Without ``contexts`` the settings' negative prompts are encoded (``encode_options``: ``max_sequence_length``,
    ``clip_skip``, ``lora_scale``; Flux needs the prompt's ``max_sequence_length``). Every check runs first.
    """
    settings = NAGSettings() if settings is None else settings
    if not isinstance(settings, NAGSettings):
        raise TypeError(f"settings must be a NAGSettings, got {type(settings).__name__}")
    components = getattr(pipe, "components", None)
    if components is None:
        raise TypeError(f"apply() takes a diffusers pipeline, got {type(pipe).__name__}")
    family = detect_family(components)
    denoiser = components[get_adapter(family).denoiser_attr]
    count = len(settings.negatives) if contexts is None else len(contexts)
    if count == 0:
        raise ValueError("NAG needs negatives: give NAGSettings(negatives=[...]) or encoded contexts")
    select_attention(denoiser, family, settings.resolved(family, count).blocks)  # fail before encoding
    if contexts is None:
        contexts = encode_negatives(pipe, family, settings.negatives, encode_options)
    progress = progress or NAGProgress(scheduler=pipe.scheduler)
    return NAGHandle(denoiser, family, settings, contexts, rows or cfg_rows(pipe), progress).install()


def remove(pipe) -> bool:
    """Take NAG off ``pipe``'s denoiser; True when something was removed."""
    for name in ("unet", "transformer"):
        handle = getattr(getattr(pipe, name, None), ATTR, None)
        if handle is not None:
            handle.remove()
            return True
    return False
