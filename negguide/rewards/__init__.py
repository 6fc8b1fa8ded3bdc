"""Reward callables ``(images: Tensor[B,3,H,W] in [0,1], prompts: list[str]) -> Tensor[B]``.

- ``ShapeWorldReward``: a small differentiable classifier of the bundled ShapeWorld (``rewards.shapeworld``).
- ``CLIPScoreReward``, ``PickScoreReward``: scaled cosine of CLIP image/text embeddings, differentiable w.r.t.
  the images (``rewards.clip``; transformers' ``CLIPModel``).
- ``WeightedReward``: a weighted sum of rewards that logs each component; ``check_reward_output`` checks a
  reward's output (finite float ``[B]``) (``rewards.combine``).

Names load on first use, so ``import negguide.rewards`` stays cheap.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ShapeWorldReward": ".shapeworld",
    "ShapeWorldNet": ".shapeworld",
    "ShapeWorldNetConfig": ".shapeworld",
    "CLIPScoreReward": ".clip",
    "PickScoreReward": ".clip",
    "WeightedReward": ".combine",
    "check_reward_output": ".combine",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
