"""The reward registry: a spec such as ``clip=PATH@0.5`` names a reward, its weights and its weight.

``NAME[=SOURCE][@WEIGHT]``: ``NAME`` is a registered reward kind, ``SOURCE`` a folder or hub id that kind loads
(some kinds have a default), ``WEIGHT`` a non-negative number (default 1). Several specs are summed with their
weights (:class:`~negguide.rewards.combine.WeightedReward`). Both trainers (``negguide train-reneg``,
``negguide train-nft``) build their reward here.

Built in: ``clip=PATH`` (:class:`~negguide.rewards.clip.CLIPScoreReward`) and ``pickscore=PATH``
(:class:`~negguide.rewards.clip.PickScoreReward`). Other packages register their own kinds with
:func:`register_reward` (``negguide.shapeworld`` registers ``shapeworld`` and ``shapeworld-log``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points


@dataclass(frozen=True)
class RewardKind:
    """A registered reward kind: ``load(source or None)`` returns the reward callable."""

    name: str
    load: Callable
    needs_source: bool
    help: str


_KINDS: dict[str, RewardKind] = {}
#: the entry-point group of packages that add reward kinds: each entry point names a module that calls
#: :func:`register_reward` when imported (loaded on the first lookup, so the registry stays cheap)
ENTRY_POINT_GROUP = "negguide.rewards"
_providers_loaded = False


def register_reward(name: str, load: Callable, needs_source: bool = False, help: str = "") -> None:
    """Make ``name`` usable in reward specs; ``load(source)`` gets the text after ``=`` (or None)."""
    if not name or any(c in name for c in "=@ "):
        raise ValueError(f"reward name {name!r} must be non-empty and hold no '=', '@' or space")
    _KINDS[name] = RewardKind(name, load, needs_source, help)


def _load_providers() -> None:
    global _providers_loaded
    if not _providers_loaded:
        _providers_loaded = True
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            entry_point.load()


def _load_clip(kind: str):
    def load(source: str):
        from negguide.rewards import clip

        cls = clip.CLIPScoreReward if kind == "clip" else clip.PickScoreReward
        return cls.from_pretrained(source)

    return load


register_reward("clip", _load_clip("clip"), needs_source=True, help="CLIP score of a CLIP model folder or hub id")
register_reward("pickscore", _load_clip("pickscore"), needs_source=True, help="PickScore of a model folder or hub id")


def reward_kinds() -> dict[str, RewardKind]:
    """Every registered reward kind by name."""
    _load_providers()
    return dict(_KINDS)


@dataclass(frozen=True)
class RewardSpec:
    """One parsed spec: ``name``, ``source`` (or None) and ``weight``."""

    name: str
    source: str | None
    weight: float

    @property
    def label(self) -> str:
        return self.name + (f"={self.source}" if self.source else "")


def parse_reward_spec(spec: str) -> RewardSpec:
    """``NAME[=SOURCE][@WEIGHT]`` -> :class:`RewardSpec`, checked before anything loads."""
    if not isinstance(spec, str):
        raise TypeError(f"a reward spec is a string such as 'clip=PATH@0.5', got {type(spec).__name__}")
    text, _, weight_text = spec.partition("@")
    name, _, source = text.partition("=")
    kinds = reward_kinds()
    if name not in kinds:
        choices = ", ".join(f"{k}=PATH" if v.needs_source else k for k, v in sorted(kinds.items()))
        raise ValueError(f"unknown reward {name!r} in {spec!r}; use one of {choices}")
    if kinds[name].needs_source and not source:
        raise ValueError(f"reward {name!r} needs a model: {name}=PATH_OR_HUB_ID")
    try:
        weight = float(weight_text) if weight_text else 1.0
    except ValueError:
        raise ValueError(f"reward weight in {spec!r} is not a number") from None
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(
            f"reward weight in {spec!r} must be a finite number >= 0 (a negative weight would train "
            "the model to lower the reward)"
        )
    return RewardSpec(name, source or None, weight)


def build_reward(specs: list[str] | None, default: str = "shapeworld"):
    """The reward callable for ``specs`` (``[default]`` when empty): one reward, or their weighted sum.

    Every spec is parsed and checked (names, weights, duplicates) before any model loads."""
    parsed = [parse_reward_spec(spec) for spec in (specs or [default])]
    labels = [p.label for p in parsed]
    for label in labels:
        if labels.count(label) > 1:
            raise ValueError(f"reward {label!r} is given twice; give it once with the sum of its weights")
    kinds = reward_kinds()
    parts = [(p.label, kinds[p.name].load(p.source), p.weight) for p in parsed]
    if len(parts) == 1 and parts[0][2] == 1.0:
        return parts[0][1]
    from negguide.rewards.combine import WeightedReward

    return WeightedReward({label: (reward, weight) for label, reward, weight in parts})
