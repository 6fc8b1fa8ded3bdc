"""One request at a time on the demo's shared pipeline, and the pipeline as it was after every request.

The demo's queue already runs one generation at a time; :func:`exclusive` is the second line of defence: a lock
around each whole request (whatever path it came by), and, when the request ends (also by an error), the hooks and
markers of negguide's methods (NegToMe, Perp-Neg's branches, NAG) and LoRA adapters put back as they were before
it, so no request sees another's.
"""

from __future__ import annotations

import contextlib
import logging
import threading

log = logging.getLogger("negguide.demo")
HOOKS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)
MARK = "_negguide"  # the attributes a method sets on a module while it is applied (NegToMe's, NAG's)
_LOCK_ATTR = "_negguide_demo_lock"
_CREATE = threading.Lock()


def pipeline_lock(pipe) -> threading.Lock:
    """The one lock of a pipeline (created on first use)."""
    with _CREATE:
        lock = pipe.__dict__.get(_LOCK_ATTR)
        if lock is None:
            lock = threading.Lock()
            object.__setattr__(pipe, _LOCK_ATTR, lock)
        return lock


def _modules(pipe) -> list:
    import torch

    found = {}
    for component in getattr(pipe, "components", {}).values():
        if isinstance(component, torch.nn.Module):
            for module in component.modules():
                found[id(module)] = module
    return list(found.values())


def _has_lora(modules) -> bool:
    return any(type(m).__module__.startswith("peft.") for m in modules)


def snapshot(pipe) -> dict:
    """Each module's forward hooks and method markers, and whether LoRA adapters are loaded."""
    modules = _modules(pipe)
    return dict(
        modules=[
            (m, {a: set(getattr(m, a)) for a in HOOKS if isinstance(getattr(m, a, None), dict)}, _marks(m))
            for m in modules
        ],
        lora=_has_lora(modules),
    )


def _ours(hook) -> bool:
    """A hook of negguide's methods (other libraries' hooks, e.g. transformers' lazily installed output capture,
    belong to the model and stay)."""
    module = getattr(hook, "__module__", None) or getattr(getattr(hook, "func", None), "__module__", None) or ""
    return module.startswith("negguide.")


def _marks(module) -> set:
    return {k for k in vars(module) if k.startswith(MARK)}


def restore(pipe, before: dict) -> list[str]:
    """Put back what changed since :func:`snapshot`: LoRA adapters unloaded, added hooks and markers removed.
    Returns what was restored (empty when the request cleaned up after itself)."""
    restored = []
    if not before["lora"] and _has_lora(_modules(pipe)):
        target = pipe if hasattr(pipe, "unload_lora_weights") else pipe.family_pipeline()
        target.unload_lora_weights()
        restored.append("LoRA adapters")
    hooks = marks = 0
    for module, saved, saved_marks in before["modules"]:
        for attr, keys in saved.items():
            table = getattr(module, attr)
            for key in [k for k in table if k not in keys and _ours(table[k])]:
                del table[key]
                hooks += 1
        for name in _marks(module) - saved_marks:
            delattr(module, name)
            marks += 1
    restored += [f"{hooks} hooks"] * bool(hooks) + [f"{marks} markers"] * bool(marks)
    return restored


@contextlib.contextmanager
def exclusive(pipe):
    """Hold the pipeline's lock for a whole request; afterwards (also after an error) restore its state."""
    with pipeline_lock(pipe):
        before = snapshot(pipe)
        try:
            yield
        finally:
            restored = restore(pipe, before)
            if restored:
                log.warning("a request left the pipeline changed; restored: %s", ", ".join(restored))
