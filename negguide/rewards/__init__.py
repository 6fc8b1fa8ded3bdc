"""Reward callables ``(images: Tensor[B,3,H,W] in [0,1], prompts: list[str]) -> Tensor[B]``.

- ``CLIPScoreReward``, ``PickScoreReward``: scaled cosine of CLIP image/text embeddings, differentiable w.r.t.
  the images (``rewards.clip``; transformers' ``CLIPModel``).
- ``WeightedReward``: a weighted sum of rewards that logs each component; ``check_reward_output`` checks a
  reward's output (finite float ``[B]``) (``rewards.combine``).
- ``build_reward``, ``register_reward``: the registry that turns specs such as ``clip=PATH@0.5`` into a reward
  (``rewards.registry``).

The ShapeWorld classifier reward is :class:`negguide.shapeworld.ShapeWorldReward`. Names load on first use, so
``import negguide.rewards`` stays cheap.
"""

from __future__ import annotations

from negguide._lazy import lazy_exports

_EXPORTS = {
    "CLIPScoreReward": "negguide.rewards.clip",
    "PickScoreReward": "negguide.rewards.clip",
    "WeightedReward": "negguide.rewards.combine",
    "check_reward_output": "negguide.rewards.combine",
    "build_reward": "negguide.rewards.registry",
    "register_reward": "negguide.rewards.registry",
}
_DEPRECATED = {  # moved to the ShapeWorld package in 0.2
    "ShapeWorldReward": "negguide.shapeworld.reward",
    "ShapeWorldNet": "negguide.shapeworld.reward",
    "ShapeWorldNetConfig": "negguide.shapeworld.reward",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _DEPRECATED)
