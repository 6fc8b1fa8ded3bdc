"""Memory-bounded denoiser forwards: the batch of one call run in chunks of at most ``max_rows`` rows.

The multi-branch core stacks K + 2 branches into one batch; where that batch does not fit in memory,
:class:`RowChunking` runs the denoiser's own computation chunk by chunk and concatenates the outputs. It wraps the
module's ``forward`` (not ``__call__``), so forward hooks on the denoiser (the branch expansion and combination)
still see the whole batch, while the layers inside see at most ``max_rows`` rows. Every row of a diffusers denoiser
is computed independently of the others, so the result equals the single forward up to float summation order.
"""

from __future__ import annotations

import functools
import inspect

import torch

# tensors that are never per row even where their first dimension happens to equal the row count: Flux's
# sequence-major position ids [tokens, 3] (their deprecated batch-major [B, tokens, 3] form is per row)
SHARED_2D_KEYS = ("img_ids", "txt_ids")


def check_max_rows(value, *, negtome: bool = False, nag: bool = False) -> int | None:
    """``value`` if it is a whole number >= 1 or None; ValueError (before any compute) otherwise, and where the
    call also runs a method whose hooks work across the rows of the whole batch (NegToMe, NAG)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"max_rows_per_forward = {value!r} must be a whole number >= 1 (the most batch rows one denoiser forward "
            f"runs) or None (every row of a step in one forward)"
        )
    for name, on in (("NegToMe (negtome=)", negtome), ("NAG (nag=, or negative_mode routing negatives to NAG)", nag)):
        if on:
            raise ValueError(
                f"max_rows_per_forward does not combine with {name} yet: its hooks work across the rows of the whole "
                f"batch; drop one of them"
            )
    return int(value)


def _slice(value, key: str, rows: int, start: int, stop: int):
    if isinstance(value, torch.Tensor):
        shared = key in SHARED_2D_KEYS and value.ndim == 2
        if value.ndim >= 1 and value.shape[0] == rows and not shared:
            return value[start:stop]
        return value
    if isinstance(value, dict):
        return {k: _slice(v, k, rows, start, stop) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_slice(v, key, rows, start, stop) for v in value)
    return value


def split_rows(call: dict, rows: int, max_rows: int) -> list[dict]:
    """``call`` (keyword arguments of one forward over ``rows`` rows) as calls over consecutive chunks of at most
    ``max_rows`` rows. Only tensors whose first dimension is ``rows`` are sliced (nested dicts, lists and tuples
    included: SDXL's ``added_cond_kwargs``); scalars, shared tensors and everything else are passed to every chunk."""
    return [
        {k: _slice(v, k, rows, start, min(start + max_rows, rows)) for k, v in call.items()}
        for start in range(0, rows, max_rows)
    ]


def concat_outputs(outputs: list):
    """The chunks' outputs as one: tensors concatenated along the batch; a tuple's tensors likewise; a diffusers
    output's ``sample`` likewise (the first chunk's output object is reused)."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if type(first) is tuple:
        return tuple(
            torch.cat([o[i] for o in outputs]) if isinstance(item, torch.Tensor) else item
            for i, item in enumerate(first)
        )
    first.sample = torch.cat([o.sample for o in outputs])
    return first


class RowChunking:
    """While installed, every forward of ``denoiser`` over more than ``max_rows`` rows runs as forwards over
    chunks of at most ``max_rows`` rows whose outputs are concatenated. ``max_rows=None``: a no-op.

    ``latent_key`` names the forward argument whose first dimension is the row count (default: the first one).
    """

    def __init__(self, denoiser: torch.nn.Module, max_rows: int | None, latent_key: str | None = None):
        self.denoiser = denoiser
        self.max_rows = check_max_rows(max_rows)
        self.latent_key = latent_key
        self._original = None
        self._had_instance_forward = False

    def install(self) -> RowChunking:
        if self.max_rows is None:
            return self
        if self._original is not None:
            raise RuntimeError("RowChunking is already installed; remove() it first")
        module = self.denoiser
        original = module.forward  # a bound method, or an instance attribute (accelerate's offload hooks)
        signature = inspect.signature(original)
        key = self.latent_key or next(iter(signature.parameters))
        extra = next((n for n, p in signature.parameters.items() if p.kind is p.VAR_KEYWORD), None)
        max_rows = self.max_rows

        @functools.wraps(original)
        def forward(*args, **kwargs):
            call = dict(signature.bind_partial(*args, **kwargs).arguments)
            call.update(call.pop(extra, None) or {})  # a forward(..., **kwargs) takes its extras flat
            rows = call[key].shape[0]
            if rows <= max_rows:
                return original(*args, **kwargs)
            return concat_outputs([original(**part) for part in split_rows(call, rows, max_rows)])

        self._had_instance_forward = "forward" in module.__dict__
        self._original = original
        module.forward = forward
        return self

    def remove(self) -> None:
        if self._original is None:
            return
        if self._had_instance_forward:
            self.denoiser.forward = self._original
        else:
            self.denoiser.__dict__.pop("forward", None)
        self._original = None

    def __enter__(self) -> RowChunking:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()
