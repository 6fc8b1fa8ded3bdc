"""One validator for every settings dataclass: a field's type comes from its annotation, its limits from its
metadata, so the Python API, the CLI flags (:func:`negguide.cli.flags.add_setting_flags`) and the demo's sliders
read one source.

    @dataclass
    class Sampling(Settings):                                   # __post_init__ validates; field_specs() for the UI
        steps: int = setting(20, "denoising steps", min=1, max=150)
        mode: str = setting("fast", "fast or slow", choices=("fast", "slow"))
        window: tuple[float, float] | None = setting(None, "(start, end) fractions of the run", min=0.0, max=1.0)

The annotation gives the type: ``bool``, ``int`` (an integral float such as a slider's 20.0 becomes 20), ``float``
(finite; an int becomes a float), ``str``, ``dict``, a class, ``list[X]`` / ``tuple[X, ...]`` / ``tuple[X, X]``
(a list or a tuple, checked entry by entry and stored as the annotated container), ``X | None`` (None allowed) and
``Any`` (not checked). Metadata keys: ``help``; ``min`` and ``max`` (either may be left out; they bound a number,
and every number inside a list or tuple field); ``low_open`` (min itself is refused); ``infinite_ok`` (+-inf
allowed, NaN never); ``choices`` (of a value, or of every entry); ``hint`` (the fix, added to a range error);
``step`` (a slider's); ``default`` (where a slider starts instead of the field's default, e.g. one list entry's).
A wrong type raises TypeError; a value out of range or not among the choices raises ValueError; both name the
field, the value and what is allowed. A class's own cross-field checks run after :func:`validate`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from functools import cache
from typing import Any

MISSING = dataclasses.MISSING


def setting(default: Any = MISSING, help: str = "", /, *, default_factory: Any = MISSING, **meta) -> Any:
    """A dataclass field with its ``help`` and limits in the metadata; a list or dict default is copied per
    instance (no shared mutable default)."""
    if isinstance(default, (list, dict)):
        value = default
        default, default_factory = MISSING, lambda: type(value)(value)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help, **meta})


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a field's annotation allows: ``base`` (None: anything), ``nullable``, and for a list or tuple the
    entries' kind (``item``) and, for ``tuple[X, X]``, the exact ``length``."""

    base: type | None = None
    nullable: bool = False
    item: Kind | None = None
    length: int | None = None

    @property
    def leaf(self) -> Kind:
        """The kind of the scalars inside (``list[tuple[float, float]]`` -> float)."""
        return self.item.leaf if self.item is not None else self

    def describe(self) -> str:
        names = {bool: "True or False", int: "an integer", float: "a number", str: "a string", dict: "a dict"}
        if self.base in (list, tuple):
            size = f"{self.length} " if self.length else ""
            inner = f" of {size}{_plural(self.item.describe())}" if self.item is not None else ""
            return f"a list or tuple{inner}"
        text = names.get(self.base, "anything" if self.base is None else f"a {getattr(self.base, '__name__', '?')}")
        return text + (" or None" if self.nullable else "")


def _plural(text: str) -> str:
    return {"an integer": "integers", "a number": "numbers", "a string": "strings"}.get(text, text)


def kind_of(annotation) -> Kind:
    """The :class:`Kind` of a (resolved) annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        inner = kind_of(members[0]) if len(members) == 1 else Kind()
        return dataclasses.replace(inner, nullable=len(members) < len(args))
    if origin in (list, tuple):
        if not args:
            return Kind(origin)
        if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            return Kind(tuple, item=kind_of(args[0]), length=len(args))
        return Kind(origin, item=kind_of(args[0]))
    if isinstance(annotation, type) and annotation not in (object, typing.Any):
        return Kind(annotation)
    return Kind()  # Any, or an annotation this validator does not check


@cache
def rules(cls) -> tuple:
    """``(field, Kind)`` for every field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return tuple((f, kind_of(hints[f.name])) for f in dataclasses.fields(cls))


def validate(obj) -> None:
    """Check every field of the dataclass instance ``obj`` against its annotation and metadata, and store the
    normalized values (a frozen dataclass too)."""
    for f, kind in rules(type(obj)):
        value = getattr(obj, f.name)
        argument = f.metadata.get("call_argument")  # the field's name where a pipeline call takes it, if another
        label = f"{f.name} (the pipeline call's {argument})" if argument else f.name
        checked = check_value(value, kind, label, f.metadata)
        if checked is not value:
            object.__setattr__(obj, f.name, checked)


def field_default(cls, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls`` (a fresh one from its factory; None if required)."""
    f = cls.__dataclass_fields__[name]
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def field_specs(cls) -> dict:
    """Field name -> everything a flag or a slider needs: the metadata (help, min, max, step, choices, ...) plus
    ``default`` (the metadata's, else the field's), ``type`` (the scalar type inside: int, float, str, bool, or
    None), ``container`` (list, tuple or None), ``length`` (of a fixed-size tuple, or of each tuple entry of a list)
    and ``nullable``."""
    specs = {}
    for f, kind in rules(cls):
        length = kind.length if kind.length is not None else (kind.item.length if kind.item is not None else None)
        specs[f.name] = {
            "default": field_default(cls, f.name),
            "type": kind.leaf.base,
            "container": kind.base if kind.base in (list, tuple) else None,
            "length": length,
            "nullable": kind.nullable,
            **f.metadata,
        }
    return specs


def interval(meta) -> str:
    """``[min, max]`` (``(`` when ``low_open``; an unbounded side is -inf / inf)."""
    low, high = meta.get("min"), meta.get("max")
    left = "(" if meta.get("low_open") or low is None else "["
    return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{')' if high is None else ']'}"


def check_value(value, kind: Kind, name: str, meta) -> Any:
    """``value`` checked against ``kind`` and the metadata ``meta`` (normalized), or TypeError / ValueError."""
    if value is None:
        if kind.nullable or kind.base is None:
            return None
        raise TypeError(f"{name} = None is not allowed: give {kind.describe()}")
    base = kind.base
    if base is None:
        return value
    if base is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} = {value!r} must be True or False")
    elif base in (int, float):
        value = _number(value, base, name, meta)
    elif base in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} = {value!r} must be {kind.describe()}, got {type(value).__name__}")
        if kind.length is not None and len(value) != kind.length:
            raise ValueError(f"{name} = {value!r} has {len(value)} entries; give {kind.length}")
        items = [check_value(v, kind.item, f"{name}[{i}]", meta) for i, v in enumerate(value)] if kind.item else value
        return base(items)
    elif not isinstance(value, base):
        raise TypeError(f"{name} = {value!r} must be {kind.describe()}, got {type(value).__name__}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} = {value!r} is not one of {tuple(choices)}")
    return value


def _number(value, base: type, name: str, meta) -> int | float:
    hint = f"; {meta['hint']}" if meta.get("hint") else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        word = "an integer" if base is int else "a number"
        raise TypeError(f"{name} = {value!r} must be {word} in {interval(meta)}")
    if base is int:
        if not isinstance(value, numbers.Integral):
            if not float(value).is_integer():
                raise TypeError(f"{name} = {value!r} must be an integer in {interval(meta)}")
        value = int(value)
    else:
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not meta.get("infinite_ok")):
            raise ValueError(f"{name} = {value} is not finite: give a number in {interval(meta)}{hint}")
    low, high = meta.get("min"), meta.get("max")
    below = low is not None and (value <= low if meta.get("low_open") else value < low)
    if below or (high is not None and value > high):
        raise ValueError(f"{name} = {value!r} is outside {interval(meta)}{hint}")
    return value


class Settings:
    """Base of the settings dataclasses: validated on construction (a subclass with its own ``__post_init__``
    normalizes, calls :func:`validate`, then checks across fields) and described by :meth:`field_specs`."""

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def field_specs(cls) -> dict:
        return field_specs(cls)


def cosine_learning_rate(lr: float, step: int, steps: int, warmup_steps: int = 0) -> float:
    """The rate of the update made at ``step`` (0-based): linear warm-up over ``warmup_steps``, then cosine decay
    from ``lr`` to 0 at ``steps``; a pure function of the step, so a resumed run follows the same schedule."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
