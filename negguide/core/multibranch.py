"""The shared multi-branch core: all branches of a step in ONE batched denoiser forward.

The diffusers pipeline runs its own loop with its own guidance switched off, so it calls the denoiser once per
step with the positive rows only. A reversible pair of forward hooks on the denoiser turns that call into a call on
every branch the step needs (unconditional, positive, extra positives, active negatives), stacked branch-major
along the batch, and replaces the output with the combiner's result. Everything else (prompt encoding, latents,
scheduler, callbacks, decoding) stays the pipeline's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from negguide.core.families import Conditioning, FamilyAdapter, get_nested, set_nested

POSITIVE = "positive"

# plan(step_index, num_steps) -> branch names in row order; "positive" takes its conditioning from the call
StepPlan = Callable[[int, int], list]
# combine(predictions by branch name, step_index, num_steps) -> guided prediction [B, ...]
Combiner = Callable[[dict, int, int], torch.Tensor]


@dataclass
class StepRecord:
    """What one denoiser call computed: for tests and for counting forwards."""

    step_index: int
    branches: list
    rows: int


@dataclass
class MultiBranchDenoiser:
    """Reversible hooks that batch every branch of a step into one forward of ``denoiser``.

    ``branch_conditioning`` maps each non-positive branch name to its conditioning (rows = B, same as the call's).
    ``num_steps`` returns the length of the sampling run (read at the first call, after the pipeline set it).
    """

    denoiser: torch.nn.Module
    adapter: FamilyAdapter
    branch_conditioning: dict
    plan: StepPlan
    combine: Combiner
    num_steps: Callable[[], int]
    records: list = field(default_factory=list)
    _handles: list = field(default_factory=list)
    _pending: list = field(default_factory=list)

    # ------------------------------------------------------------------ install / remove
    def install(self) -> MultiBranchDenoiser:
        if self._handles:
            raise RuntimeError("MultiBranchDenoiser is already installed; remove() it first")
        self._signature = inspect.signature(self.denoiser.forward)
        # the branch expansion runs first and the combination last, so hooks that work on the expanded batch
        # (NegToMe) sit inside it whatever order they were installed in
        self._handles = [
            self.denoiser.register_forward_pre_hook(self._before, with_kwargs=True, prepend=True),
            self.denoiser.register_forward_hook(self._after, with_kwargs=True),
        ]
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._pending = []

    def __enter__(self) -> MultiBranchDenoiser:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    # ------------------------------------------------------------------ hooks
    def _before(self, module, args, kwargs):
        step = len(self.records)
        total = self.num_steps()
        names = self.plan(step, total)
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        latents = bound[self.adapter.latent_key]
        batch = latents.shape[0]
        self.records.append(StepRecord(step, list(names), batch * len(names)))
        self._pending.append((names, step, total))
        if names == [POSITIVE]:
            return None  # nothing to add: the call runs as the pipeline made it
        count = len(names)
        call = dict(bound)
        call[self.adapter.latent_key] = torch.cat([latents] * count)  # [count * B, ...], branch-major
        for key in self.adapter.per_row_keys:
            value = get_nested(call, key)
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
                set_nested(call, key, torch.cat([value] * count))
        for key in self.adapter.conditioning_keys:
            positive = get_nested(bound, key)
            parts = [positive if name == POSITIVE else self.branch_conditioning[name][key] for name in names]
            set_nested(call, key, torch.cat(parts))
        return (), call

    def _after(self, module, args, kwargs, output):
        names, step, total = self._pending.pop(0)
        if names == [POSITIVE]:
            return None
        sample = output[0] if isinstance(output, tuple) else output.sample
        chunks = sample.chunk(len(names))  # [count * B, ...] -> count x [B, ...]
        guided = self.combine(dict(zip(names, chunks)), step, total)
        if isinstance(output, tuple):
            return (guided, *output[1:])
        output.sample = guided
        return output


def check_conditioning(adapter: FamilyAdapter, name: str, conditioning: Conditioning, like: Conditioning) -> None:
    """Each branch's conditioning must match the positive's shapes (ValueError naming the branch otherwise)."""
    for key in adapter.conditioning_keys:
        got, want = conditioning.get(key), like.get(key)
        if got is None or want is None:
            continue
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(
                f"the {name} branch has {key} of shape {tuple(got.shape)} but the prompt's is {tuple(want.shape)}: "
                f"embeddings must come from the same text encoders, with one row per image (or one row to share)"
            )
