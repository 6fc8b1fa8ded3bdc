"""The guiders' constructor arguments, generated from settings dataclasses (no torch or diffusers here).

A negguide guider takes the arguments diffusers' guiders share (``guidance_scale``, ``guidance_rescale``, ``start``,
``stop``, ``enabled``: :class:`GuidanceSettings`) plus every field of its method's settings dataclass
(:class:`~negguide.perpneg.PerpNegSettings`, :class:`~negguide.nag.NAGSettings`). The constructor's signature is
built from those dataclasses, with their defaults, so they stay the one source of truth: a field added to a
dataclass becomes a guider argument, an entry of its saved ``guider_config.json`` and a validated value, with the
same error messages as the pipelines give.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass

from negguide.core.settings import Settings, field_default, setting


@dataclass
class GuidanceSettings(Settings):
    """The classifier-free guidance part every negguide guider shares with diffusers' ``ClassifierFreeGuidance``."""

    guidance_scale: float = setting(
        7.5,
        "CFG scale s; 1 switches CFG off, as in diffusers' ClassifierFreeGuidance",
        hint="a finite number such as 7.5 (1 turns CFG off)",
    )
    guidance_rescale: float = setting(
        0.0,
        "rescale of the guided prediction towards the conditional one's std (Lin et al. 2023)",
        min=0.0,
        max=1.0,
        hint="a fraction in [0, 1]; 0 switches the rescale off",
    )
    start: float = setting(
        0.0, "fraction of the run where the guidance starts", min=0.0, max=1.0, hint="a fraction such as 0.0"
    )
    stop: float = setting(1.0, "fraction of the run where the guidance stops", min=0.0, max=1.0, hint="e.g. 1.0")
    enabled: bool = setting(True, "False: the conditional prediction only, as diffusers' disabled guiders")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.start >= 1.0:
            raise ValueError(f"start = {self.start} leaves no step to guide: give a fraction below 1, e.g. 0.0")
        if self.start > self.stop:
            raise ValueError(
                f"(start, stop) = ({self.start}, {self.stop}) is reversed: start must not exceed stop, "
                f"e.g. ({self.stop}, {self.start})"
            )


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def build_signature(*settings_classes) -> inspect.Signature:
    """``(self, *, field=default, ...)`` over the fields of ``settings_classes``, in order, with their defaults and
    annotations; a field name given by two of them is a programming error (ValueError)."""
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    seen: set = set()
    for cls in settings_classes:
        hints = typing.get_type_hints(cls)
        for name in field_names(cls):
            if name in seen:
                raise ValueError(f"{cls.__name__}.{name} is also a field of another settings class of this guider")
            seen.add(name)
            parameters.append(
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=field_default(cls, name), annotation=hints[name]
                )
            )
    return inspect.Signature(parameters)


def split_arguments(arguments: dict, guider: str, *settings_classes) -> list[dict]:
    """The keyword arguments of a guider, one dict per settings class; TypeError naming an unknown argument."""
    names = [set(field_names(cls)) for cls in settings_classes]
    unknown = sorted(set(arguments) - set().union(*names))
    if unknown:
        allowed = sorted(set().union(*names))
        raise TypeError(f"{guider} does not take {unknown}; its arguments are {allowed}")
    return [{k: v for k, v in arguments.items() if k in group} for group in names]


def as_config(settings) -> dict:
    """A settings dataclass as the plain values a ``guider_config.json`` holds (tuples become lists there)."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def describe(*settings_classes) -> str:
    """An ``Args:`` section listing every field of ``settings_classes`` with its help text and default."""
    lines = ["Args:"]
    for cls in settings_classes:
        for f in dataclasses.fields(cls):
            default = field_default(cls, f.name)
            lines.append(f"    {f.name} (= {default!r}): {f.metadata.get('help', '')} ({cls.__name__})")
    return "\n".join(lines)
