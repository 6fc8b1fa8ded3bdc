"""Weighted sums of reward callables, and the output check every reward consumer can reuse.

``WeightedReward({"clip": clip_reward, "pick": (pick_reward, 0.5)})`` is itself a reward callable
``(images [B,3,H,W] in [0,1], prompts list[str]) -> Tensor[B]`` returning ``sum_i w_i * r_i(images, prompts)``;
it checks each component's output with ``check_reward_output`` and keeps the last values per component in
``.last`` for logging.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping

import torch
from torch import nn

RewardFn = Callable[[torch.Tensor, list], torch.Tensor]


def check_reward_output(value, batch: int, name: str = "reward") -> torch.Tensor:
    """Check that the reward ``name`` returned a finite floating-point tensor of shape ``[batch]``; return it.

    Raises ``TypeError`` (not a tensor, not floating point) or ``ValueError`` (other shape, NaN or inf) naming
    ``name``, what it returned, and the fix. Checking finiteness reads one value back from the device.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"reward {name!r} returned {type(value).__name__}, expected a float torch.Tensor of shape [{batch}]"
            " (one score per image)"
        )
    if not value.is_floating_point():
        raise TypeError(
            f"reward {name!r} returned a tensor of dtype {value.dtype}, expected a floating-point tensor of shape"
            f" [{batch}]; return value.float()"
        )
    if tuple(value.shape) != (batch,):
        hint = ""
        if value.numel() == batch:
            hint = f"; reshape it with value.reshape({batch})"
        elif value.ndim >= 1 and value.shape[0] == batch:
            hint = "; reduce every dim but the batch dim (e.g. value.flatten(1).mean(1))"
        raise ValueError(
            f"reward {name!r} returned shape {tuple(value.shape)}, expected [{batch}] (one score per image){hint}"
        )
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(
            f"reward {name!r} returned non-finite values (NaN or inf) at batch indices {bad[:8]}"
            f"{' ...' if len(bad) > 8 else ''}: {value.detach().cpu().tolist()[:8]}"
        )
    return value


def _check_weight(weight, name: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise TypeError(f"weight of reward {name!r} must be a finite number, got {type(weight).__name__} ({weight!r})")
    weight = float(weight)
    if not math.isfinite(weight):
        raise ValueError(f"weight of reward {name!r} must be a finite number, got {weight}")
    return weight


def _default_name(fn, taken: set[str]) -> str:
    base = getattr(fn, "__name__", None) or type(fn).__name__
    name, i = base, 2
    while name in taken:
        name, i = f"{base}#{i}", i + 1
    return name


class WeightedReward(nn.Module):
    """``sum_i w_i * r_i(images, prompts)`` over reward callables, itself a reward callable (``Tensor[B]``).

    ``rewards`` is either

    - a dict ``name -> reward`` (weight 1) or ``name -> (reward, weight)``, or
    - a list of ``(reward, weight)`` or ``(name, reward, weight)`` tuples (unnamed components are named after
      their function or class, with ``#2``, ``#3``... for repeats).

    Weights must be finite numbers. A weight of 0 makes the component *log-only*: it is computed under
    ``torch.no_grad()`` and shows up in ``.last`` but adds nothing to the sum (so it costs no backward).

    Every component's output is checked with ``check_reward_output`` (a finite float tensor of shape ``[B]``);
    a failure raises naming the component. After each call, ``.last`` maps every component name to its
    (detached) values and ``.last_total`` holds the (detached) weighted sum. Components that are ``nn.Module``\\ s
    are registered as submodules, so ``.to(device)`` moves them. The sum is computed in float32.
    """

    def __init__(self, rewards: Mapping[str, object] | list | tuple):
        super().__init__()
        entries: list[tuple[str, RewardFn, float]] = []
        taken: set[str] = set()
        if isinstance(rewards, Mapping):
            for name, item in rewards.items():
                if not isinstance(name, str):
                    raise TypeError(f"reward names must be str, got {type(name).__name__} ({name!r})")
                fn, weight = item if isinstance(item, tuple) and len(item) == 2 else (item, 1.0)
                entries.append((name, fn, weight))
                taken.add(name)
        elif isinstance(rewards, (list, tuple)):
            for i, item in enumerate(rewards):
                if not isinstance(item, tuple) or len(item) not in (2, 3):
                    raise TypeError(
                        f"rewards[{i}] must be a (reward, weight) or (name, reward, weight) tuple, got"
                        f" {type(item).__name__} ({item!r})"
                    )
                if len(item) == 3:
                    name, fn, weight = item
                    if not isinstance(name, str):
                        raise TypeError(f"rewards[{i}]: the name must be a str, got {type(name).__name__}")
                    if name in taken:
                        raise ValueError(f"rewards[{i}]: the name {name!r} is used twice; give each a unique name")
                else:
                    fn, weight = item
                    name = _default_name(fn, taken)
                entries.append((name, fn, weight))
                taken.add(name)
        else:
            raise TypeError(
                "rewards must be a dict {name: reward or (reward, weight)} or a list of (reward, weight) tuples,"
                f" got {type(rewards).__name__}"
            )
        if not entries:
            raise ValueError("WeightedReward needs at least one reward; pass e.g. {'clip': clip_reward}")
        checked = []
        for name, fn, weight in entries:
            if not callable(fn):
                raise TypeError(
                    f"reward {name!r} must be callable as fn(images, prompts) -> Tensor[B], got {type(fn).__name__}"
                )
            checked.append((name, fn, _check_weight(weight, name)))
        self.names: tuple[str, ...] = tuple(n for n, _, _ in checked)
        self.weights: dict[str, float] = {n: w for n, _, w in checked}
        self._fns: dict[str, RewardFn] = {n: f for n, f, _ in checked}
        # register module components (so .to()/.parameters() see them); keys are positions, names may hold dots
        self.components = nn.ModuleList([f for _, f, _ in checked if isinstance(f, nn.Module)])
        self.last: dict[str, torch.Tensor] = {}
        self.last_total: torch.Tensor | None = None

    def forward(self, images: torch.Tensor, prompts) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim < 1:
            raise TypeError(
                f"images must be a torch.Tensor [B, 3, H, W] in [0, 1], got {type(images).__name__}"
                + (f" of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else "")
            )
        batch = images.shape[0]
        total, last = None, {}
        for name in self.names:
            fn, weight = self._fns[name], self.weights[name]
            if weight == 0.0:
                with torch.no_grad():
                    value = check_reward_output(fn(images, prompts), batch, name)
            else:
                value = check_reward_output(fn(images, prompts), batch, name)
            last[name] = value.detach()
            if weight != 0.0:
                term = weight * value.float()
                total = term if total is None else total + term.to(total.device)
        if total is None:  # every weight is 0: a constant 0, still on the right device
            total = torch.zeros(batch, device=images.device)
        self.last = last
        self.last_total = total.detach()
        return total

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={w:g}" for n, w in self.weights.items())
