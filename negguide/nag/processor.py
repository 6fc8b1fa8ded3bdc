"""The per-call state NAG's hooks share, and :class:`NAGProcessor`, the wrapper around a guided attention module's
processor (see :mod:`negguide.nag.hooks` for how the handle installs it and drives the state)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from negguide.nag.math import nag_combine

if TYPE_CHECKING:
    from negguide.nag.hooks import NAGHandle


@dataclass
class CallState:
    """What the current denoiser call guides; replaced by the handle at every call (``on`` False: nothing)."""

    on: bool = False
    total: int = 0  # rows of the denoiser call
    rows: slice = field(default_factory=lambda: slice(None))  # the guided rows (contiguous)
    active: list = field(default_factory=list)  # indices of the negatives computed in this call
    scales: list = field(default_factory=list)
    contexts: dict = field(default_factory=dict)  # negative -> [g, L, D]; MMDiT: its text stream at this block
    text_tokens: int = 0  # the positive's text tokens (Flux single blocks put them before the image tokens)
    negative: int | None = None  # MMDiT, whole-block pass: the negative whose block pass is running
    captured: dict = field(default_factory=dict)  # (wrapper id, negative) -> Z- [g, N, C] (whole-block pass)
    block_pass: Any = None  # MMDiT: the running block's BlockPass (negguide.nag.mmdit), if it has one


def rows_of(value, rows: slice, total: int):
    """Per-row tensors (in lists and tuples too) cut to the guided rows; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.ndim and value.shape[0] == total else value
    if isinstance(value, (list, tuple)):
        return type(value)(rows_of(v, rows, total) for v in value)
    return value


def put_rows(full: torch.Tensor, rows: slice, part: torch.Tensor) -> torch.Tensor:
    start, stop, _ = rows.indices(full.shape[0])
    if start == 0 and stop == full.shape[0]:
        return part
    return torch.cat([full[:start], part, full[stop:]])


def _with_arg(args: tuple, kwargs: dict, index: int, name: str, value) -> tuple[tuple, dict]:
    """(args, kwargs) with the processor argument ``name`` (positional ``index`` after hidden_states) set."""
    if len(args) > index:
        return (*args[:index], value, *args[index + 1 :]), kwargs
    return args, {**kwargs, name: value}


class NAGProcessor:
    """Calls the wrapped processor ``inner`` and guides the image features of the guided rows (see the module
    docstring). It shows ``inner``'s call signature, so diffusers passes it the same keyword arguments."""

    def __init__(self, inner, handle: NAGHandle, kind: str):
        self.inner, self.handle, self.kind = inner, handle, kind

        def call(*args, **kwargs):
            return self._run(*args, **kwargs)

        call.__signature__ = inspect.signature(inner.__call__)
        self.__call__ = call  # what diffusers inspects: processor.__call__

    def __call__(self, *args, **kwargs):
        return self._run(*args, **kwargs)

    def __getattr__(self, name: str):  # the wrapped processor's attributes (not its dunders)
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _run(self, attn, hidden_states, *args, **kwargs):
        state = self.handle.state
        if not state.on:
            return self.inner(attn, hidden_states, *args, **kwargs)
        if self.kind == "cross":
            return self._cross(state, attn, hidden_states, args, kwargs)
        if state.negative is not None:
            return self._keep_negative(state, attn, hidden_states, args, kwargs)
        return self._guide(state, attn, hidden_states, args, kwargs)

    def _features(self, attn, hidden_states, args, kwargs, replace: Callable | None = None):
        """Run ``inner``; return (its output, the input of ``attn.to_out[0]``), which ``replace`` may swap."""
        seen: list = []

        def hook(module, inputs):
            if not inputs:
                raise RuntimeError(f"{type(self.inner).__name__} passes the features to to_out[0] by keyword")
            seen.append(inputs[0])
            return None if replace is None else (replace(inputs[0]), *inputs[1:])

        handle = attn.to_out[0].register_forward_pre_hook(hook)
        try:
            output = self.inner(attn, hidden_states, *args, **kwargs)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise RuntimeError(
                f"{type(self.inner).__name__} called attn.to_out[0] {len(seen)} times; NAG guides the features "
                f"before the output projection and needs processors that project them exactly once"
            )
        return output, seen[0]

    def _combine(self, negatives: list, scales: list) -> Callable:
        s = self.handle.settings
        return lambda z: nag_combine(z, negatives, scales, s.tau, s.alpha, s.eps)

    def _cross(self, state: CallState, attn, hidden_states, args, kwargs):
        text = args[0] if args else kwargs.get("encoder_hidden_states")
        if text is None:  # called as self-attention: nothing to guide
            return self.inner(attn, hidden_states, *args, **kwargs)
        rows, total = state.rows, state.total
        query = hidden_states[rows]
        others = tuple(rows_of(a, rows, total) for a in args)
        rest = {k: rows_of(v, rows, total) for k, v in kwargs.items()}
        negatives = []
        for i in state.active:
            context = state.contexts[i]
            if isinstance(text, tuple):  # IP-Adapter: (text, image embeddings); only the text is replaced
                context = (context, *rows_of(text[1:], rows, total))
            n_args, n_kwargs = _with_arg(others, rest, 0, "encoder_hidden_states", context)
            n_args, n_kwargs = _with_arg(n_args, n_kwargs, 1, "attention_mask", None)  # negatives are unmasked
            negatives.append(self._features(attn, query, n_args, n_kwargs)[1])
        combine = self._combine(negatives, state.scales)
        replace = lambda z: put_rows(z, rows, combine(z[rows]))
        return self._features(attn, hidden_states, args, kwargs, replace)[0]

    def _keep_negative(self, state: CallState, attn, hidden_states, args, kwargs):
        i = state.negative
        if self.kind == "joint":
            output, features = self._features(attn, hidden_states, args, kwargs)
        else:  # single block: the negative's text tokens come first in the output
            output = self.inner(attn, hidden_states, *args, **kwargs)
            features = output[:, state.contexts[i].shape[1] :]
        state.captured[(id(self), i)] = features
        return output

    def _guide(self, state: CallState, attn, hidden_states, args, kwargs):
        block_pass = state.block_pass
        if block_pass is not None and block_pass.attn is attn:  # Z- computed here, from the positive's projections
            negatives = block_pass.run
        else:  # Z- captured by the whole-block passes that ran before this call
            found = {i: state.captured.pop((id(self), i)) for i in state.active if (id(self), i) in state.captured}
            if not found:
                return self.inner(attn, hidden_states, *args, **kwargs)
            negatives = lambda: found

        def combine(z: torch.Tensor) -> torch.Tensor:
            z_negs = negatives()
            pairs = [(z_negs[i], s) for i, s in zip(state.active, state.scales) if i in z_negs]
            return self._combine([p[0] for p in pairs], [p[1] for p in pairs])(z)

        rows = state.rows
        if self.kind == "joint":
            replace = lambda z: put_rows(z, rows, combine(z[rows]))
            return self._features(attn, hidden_states, args, kwargs, replace)[0]
        output = self.inner(attn, hidden_states, *args, **kwargs)
        text = state.text_tokens
        guided = output[rows]
        guided = torch.cat([guided[:, :text], combine(guided[:, text:])], dim=1)
        return put_rows(output, rows, guided)
