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
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points


@dataclass(frozen=True)
class RewardKind:
    """A registered reward kind: ``load(source or None)`` returns the reward callable; ``check(source)``, when
    given, refuses a bad source before anything loads (by default: a source must exist on disk or be a hub id)."""

    name: str
    load: Callable
    needs_source: bool
    help: str
    check: Callable | None = None


class RewardSourceNotFound(FileNotFoundError, ValueError):
    """A spec's source (``NAME=SOURCE``) is missing (not on disk, nor a hub id where the kind takes one): bad input,
    so a ValueError naming the spec, and a FileNotFoundError as the loaders raised before."""


_KINDS: dict[str, RewardKind] = {}
#: the entry-point group of packages that add reward kinds: each entry point names a module that calls
#: :func:`register_reward` when imported (loaded on the first lookup, so the registry stays cheap)
ENTRY_POINT_GROUP = "negguide.rewards"
_providers_loaded = False


def register_reward(
    name: str, load: Callable, needs_source: bool = False, help: str = "", check: Callable | None = None
) -> None:
    """Make ``name`` usable in reward specs; ``load(source)`` gets the text after ``=`` (or None). ``check(source)``
    (optional) raises FileNotFoundError or ValueError for a source that cannot load, before any spec loads; without
    it a source must exist on disk or be a hub id (owner/name)."""
    if not isinstance(name, str) or not name or any(c in name for c in "=@ "):
        raise ValueError(f"reward name {name!r} must be non-empty and hold no '=', '@' or space")
    if not callable(load):
        raise TypeError(f"load must be callable (source -> reward), got {type(load).__name__}")
    if check is not None and not callable(check):
        raise TypeError(f"check must be callable (source -> None) or None, got {type(check).__name__}")
    _KINDS[name] = RewardKind(name, load, needs_source, help, check)


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
    text, at, weight_text = spec.rpartition("@") if "@" in spec else (spec, "", "")
    name, equals, source = text.partition("=")
    kinds = reward_kinds()
    if name not in kinds:
        choices = ", ".join(f"{k}=PATH" if v.needs_source else k for k, v in sorted(kinds.items()))
        raise ValueError(f"unknown reward {name!r} in {spec!r}; use one of {choices}")
    if kinds[name].needs_source and not source:
        raise ValueError(f"reward {name!r} needs a model: {name}=PATH_OR_HUB_ID")
    if equals and not source:
        raise ValueError(f"reward {spec!r} has '=' but no folder after it: {name}=FOLDER, or {name} alone")
    if at and not weight_text.strip():
        raise ValueError(f"reward {spec!r} has '@' but no weight after it: {text}@WEIGHT, e.g. {text}@0.5")
    try:
        weight = float(weight_text) if at else 1.0
    except ValueError:
        raise ValueError(f"reward weight in {spec!r} is not a number") from None
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(
            f"reward weight in {spec!r} must be a finite number >= 0 (a negative weight would train "
            "the model to lower the reward)"
        )
    return RewardSpec(name, source or None, weight)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_source(spec: RewardSpec, kind: RewardKind) -> None:
    """Refuse a spec's source before anything loads: the kind's own ``check``, or else the source must exist on
    disk or be a hub id (owner/name). A missing source is :class:`RewardSourceNotFound`, a bad one a ValueError;
    both name the spec."""
    source = spec.source
    if source is None:
        return
    if kind.check is None:
        if not os.path.exists(source) and not _HUB_ID.fullmatch(source):
            raise RewardSourceNotFound(
                f"reward {spec.label!r}: {source!r} does not exist; give a folder or a hub id (owner/name)"
            )
        return
    try:
        kind.check(source)
    except FileNotFoundError as error:
        raise RewardSourceNotFound(f"reward {spec.label!r}: {_one_line(error)}") from None
    except ValueError as error:
        raise ValueError(f"reward {spec.label!r}: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def build_reward(specs: list[str] | None, default: str = "shapeworld"):
    """The reward callable for ``specs`` (``[default]`` when empty; one string is one spec): one reward, or their
    weighted sum.

    Every spec is parsed and checked (names, weights, duplicates, sources on disk) before any model loads; a
    source that does not load (a damaged folder) is a ValueError naming its spec."""
    if isinstance(specs, str):
        specs = [specs]
    if specs is not None and not isinstance(specs, (list, tuple)):
        raise TypeError(f"specs must be a list of reward specs such as ['clip=PATH@0.5'], got {type(specs).__name__}")
    parsed = [parse_reward_spec(spec) for spec in (specs or [default])]
    labels = [p.label for p in parsed]
    for label in labels:
        if labels.count(label) > 1:
            raise ValueError(f"reward {label!r} is given twice; give it once with the sum of its weights")
    if all(p.weight == 0 for p in parsed):
        raise ValueError(f"every reward weight in {list(specs or [default])} is 0: the reward would be constant")
    kinds = reward_kinds()
    for p in parsed:
        check_source(p, kinds[p.name])
    parts = []
    for p in parsed:
        try:
            parts.append((p.label, kinds[p.name].load(p.source), p.weight))
        except FileNotFoundError as error:
            raise RewardSourceNotFound(f"reward {p.label!r}: {_one_line(error)}") from None
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"cannot load reward {p.label!r}: {_one_line(error)}") from None
    if len(parts) == 1 and parts[0][2] == 1.0:
        return parts[0][1]
    from negguide.rewards.combine import WeightedReward

    return WeightedReward({label: (reward, weight) for label, reward, weight in parts})


def check_prompts_for_reward(reward, prompts, what: str = "the reward", chunk: int = 32, device=None) -> None:
    """Score every distinct prompt once on plain grey images (on ``device``), before training: a prompt the reward
    cannot read (a ShapeWorld reward knows four colours and three shapes) is a ValueError now instead of a
    traceback mid-run."""
    import torch

    distinct = list(dict.fromkeys(prompts))
    with torch.no_grad():
        for start in range(0, len(distinct), chunk):
            batch = distinct[start : start + chunk]
            try:
                reward(torch.full((len(batch), 3, 64, 64), 0.5, device=device), batch)
            except (ValueError, TypeError, KeyError) as error:
                raise ValueError(f"{what} cannot score the training prompts: {error}") from None
