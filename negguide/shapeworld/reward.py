"""A small differentiable ShapeWorld reward: P(the image shows what the prompt states), in [0, 1].

A CNN (``ShapeWorldNet``, about 0.2M parameters) reads a 64x64 RGB image and predicts

- the *layout*: no object, one object in the left half, one in the right half, one in each half, or
  something else (three or more objects, two in one half) -- an object belongs to the half holding its centre;
- for each half, the colour (red/green/blue/yellow) and shape (circle/square/triangle) of "its" object: the
  object in that half, or, when the image holds a single object, that object (so both halves' heads name it and
  an object straddling the middle splits only the layout, never the attributes).

``ShapeWorldReward`` turns these into the probability that the judge's ``caption_satisfied`` holds, treating the
heads as independent. With ``L/R`` the layout probabilities and ``m_h(spec)`` = P(colour_h is allowed by spec) *
P(shape_h is allowed by spec) (an unstated attribute allows everything):

- "" (empty prompt): 1 (the judge always accepts it);
- one object, "a red circle" / "a circle" / "a red shape":  P(left) m_L(a) + P(right) m_R(a)
  (exactly one object, anywhere, with the stated attributes; the judge's rule);
- "A and B":            P(both) [m_L(a) m_R(b) + m_L(b) m_R(a) - m_L(a^b) m_R(a^b)]  (either order; union rule);
- "A to the left of B": P(both) m_L(a) m_R(b);   "A to the right of B": P(both) m_R(a) m_L(b).

Everything is differentiable w.r.t. the images. ``log_prob=True`` returns log(p + 1e-6) instead.
The bundled weights live in ``assets/shapeworld/reward/`` (train them with
``python -m experiments.shapeworld_reward.train``; see that module for the command, seed, time and data size).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from negguide.rewards.inputs import check_images_and_prompts
from negguide.rewards.registry import register_reward
from negguide.shapeworld.assets import REWARD_FOLDER
from negguide.shapeworld.world import COLOURS, SHAPES, ParsedCaption, parse_caption

#: layout classes, in head order
LAYOUTS: tuple[str, ...] = ("none", "left", "right", "both", "other")
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
#: default folder of the bundled weights (repository root / assets / shapeworld / reward)
DEFAULT_FOLDER = REWARD_FOLDER
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class ShapeWorldNetConfig:
    """Sizes of ``ShapeWorldNet``: ``channels`` of the five conv stages (strides 2, 1, 2, 2, 2: 64 -> 4 pixels),
    ``hidden`` width of the head MLP, ``image_size`` the side the net reads (inputs are resized to it)."""

    channels: tuple[int, ...] = (24, 32, 48, 64, 64)
    hidden: int = 128
    image_size: int = 64

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) != 5 or min(self.channels) < 1:
            raise ValueError(f"channels={self.channels} must be 5 positive ints")
        if self.hidden < 1:
            raise ValueError(f"hidden={self.hidden} must be a positive int")
        if self.image_size != 64:
            raise ValueError(f"image_size={self.image_size}: ShapeWorldNet reads 64x64 images (4x4 after 4 strides)")


class ShapeWorldNet(nn.Module):
    """Conv stages (GroupNorm, SiLU) -> 4x4 map -> MLP -> logits: layout [5], then for left and right
    colour [4] and shape [3] (``split`` cuts the 19 logits into these heads)."""

    n_logits = len(LAYOUTS) + 2 * (len(COLOURS) + len(SHAPES))

    def __init__(self, config: ShapeWorldNetConfig = ShapeWorldNetConfig()):
        super().__init__()
        self.config = config
        layers, c_in = [], 3
        for c, (k, s) in zip(config.channels, [(5, 2), (3, 1), (3, 2), (3, 2), (3, 2)]):
            layers += [nn.Conv2d(c_in, c, k, s, k // 2), nn.GroupNorm(min(8, c), c), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * 16, config.hidden), nn.SiLU(), nn.Linear(config.hidden, self.n_logits)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[B, 3, 64, 64]`` in [0, 1] -> logits ``[B, 19]``."""
        return self.head(self.features(images * 2.0 - 1.0))

    @staticmethod
    def split(logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits ``[B, 19]`` -> named heads: layout [B,5], colour_left [B,4], shape_left [B,3], colour_right,
        shape_right."""
        nc, ns = len(COLOURS), len(SHAPES)
        sizes = [len(LAYOUTS), nc, ns, nc, ns]
        names = ["layout", "colour_left", "shape_left", "colour_right", "shape_right"]
        return dict(zip(names, torch.split(logits, sizes, dim=-1)))


def head_probabilities(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Softmax of every head of ``ShapeWorldNet.split(logits)``."""
    return {k: v.softmax(-1) for k, v in ShapeWorldNet.split(logits).items()}


def half_attribute_probabilities(probs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per half, P(colour) over (red, green, blue, yellow, none) ``[B, 5]`` and P(shape) over
    (circle, square, triangle, none) ``[B, 4]``: the object in that half, or none."""
    lay = probs["layout"]  # [B, 5] none, left, right, both, other
    present = {"left": lay[:, 1] + lay[:, 3], "right": lay[:, 2] + lay[:, 3]}
    out = {}
    for half, p in present.items():
        for kind in ("colour", "shape"):
            attr = probs[f"{kind}_{half}"] * p[:, None]  # [B, n]
            out[f"{kind}_{half}"] = torch.cat([attr, (1.0 - p)[:, None]], dim=1)  # [B, n + 1]
    return out


# ----------------------------------------------------------------------------------------------- prompt math

KINDS = ("empty", "single", "and", "left_of", "right_of")


def spec_masks(parsed: ParsedCaption) -> tuple[str, torch.Tensor, torch.Tensor]:
    """A parsed caption as (kind, colour masks ``[2, 4]``, shape masks ``[2, 3]``): row i allows the colours and
    shapes that object i may have (all ones where unstated; row 1 all ones for one-object captions)."""
    cm, sm = torch.ones(2, len(COLOURS)), torch.ones(2, len(SHAPES))
    for i, spec in enumerate(parsed.objects):
        if spec.colour is not None:
            cm[i] = torch.tensor([float(c == spec.colour) for c in COLOURS])
        if spec.shape is not None:
            sm[i] = torch.tensor([float(s == spec.shape) for s in SHAPES])
    n = len(parsed.objects)
    kind = "empty" if n == 0 else "single" if n == 1 else (parsed.relation or "and")
    return kind, cm, sm


def caption_probability(
    probs: dict[str, torch.Tensor], kinds: torch.Tensor, cmask: torch.Tensor, smask: torch.Tensor
) -> torch.Tensor:
    """P(caption holds) ``[B]`` from head probabilities, kind indices ``[B]`` (into ``KINDS``), colour masks
    ``[B, 2, 4]`` and shape masks ``[B, 2, 3]`` (see the module docstring for the rules)."""

    def match(half: str, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # c [B, 4], s [B, 3] -> [B]
        return (probs[f"colour_{half}"] * c).sum(-1) * (probs[f"shape_{half}"] * s).sum(-1)

    a_c, b_c, a_s, b_s = cmask[:, 0], cmask[:, 1], smask[:, 0], smask[:, 1]
    ab_c, ab_s = a_c * b_c, a_s * b_s  # both specs at once (conflicting attributes allow nothing)
    lay = probs["layout"]
    p_left, p_right, p_both = lay[:, 1], lay[:, 2], lay[:, 3]
    la, ra = match("left", a_c, a_s), match("right", a_c, a_s)  # object a on the left / right
    lb, rb = match("left", b_c, b_s), match("right", b_c, b_s)
    both_ab = match("left", ab_c, ab_s) * match("right", ab_c, ab_s)
    table = torch.stack(
        [
            torch.ones_like(p_left),  # empty
            p_left * la + p_right * ra,  # single
            p_both * (la * rb + lb * ra - both_ab),  # and (either order)
            p_both * la * rb,  # a left of b
            p_both * ra * lb,  # a right of b
        ],
        dim=1,
    )  # [B, 5]
    return table.gather(1, kinds[:, None]).squeeze(1).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------- the reward


class ShapeWorldReward(nn.Module):
    """Reward callable ``(images [B,3,H,W] in [0,1], prompts list[str]) -> Tensor[B]``: the probability (or with
    ``log_prob=True`` its log) that each image shows what its prompt states, differentiable w.r.t. images.
    Images of another size are resized to 64x64 (bilinear, antialiased). Parameters are frozen."""

    def __init__(self, net: ShapeWorldNet | None = None, log_prob: bool = False):
        super().__init__()
        self.net = net if net is not None else ShapeWorldNet()
        self.log_prob = bool(log_prob)
        self.net.requires_grad_(False)
        self.eval()
        self._parsed: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None, log_prob: bool = False) -> ShapeWorldReward:
        """Load ``model.safetensors`` + ``config.json`` from ``folder`` (default: the bundled
        ``assets/shapeworld/reward``); offline."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = os.fspath(folder) if folder is not None else DEFAULT_FOLDER
        paths = check_folder(folder)
        try:
            with open(paths[0]) as f:
                cfg = json.load(f)
            net = ShapeWorldNet(ShapeWorldNetConfig(**cfg["net"]))
            net.load_state_dict({k: v.float() for k, v in load_file(paths[1]).items()})
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:  # damaged files
            detail = " ".join(f"{type(error).__name__}: {error}".split())[:200]
            raise ValueError(
                f"the ShapeWorld reward at {folder!r} is damaged or of another version ({detail}); train it again"
                " with `python -m experiments.shapeworld_reward.train --out <folder>`"
            ) from None
        return cls(net, log_prob=log_prob)

    def save_pretrained(self, folder: str | os.PathLike, extra: dict | None = None) -> None:
        """Write ``config.json`` (net sizes + ``extra``) and ``model.safetensors`` (float16) to ``folder``."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, os.path.join(folder, WEIGHTS_NAME))
        with open(os.path.join(folder, CONFIG_NAME), "w") as f:
            json.dump({"net": asdict(self.net.config), **(extra or {})}, f, indent=1)

    def _prompt_tensors(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = []
        for p in prompts:
            if not isinstance(p, str):
                raise TypeError(f"every prompt must be a str, got {type(p).__name__} ({p!r})")
            if p not in self._parsed:
                kind, cm, sm = spec_masks(parse_caption(p))  # raises ValueError naming the bad word
                self._parsed[p] = (KINDS.index(kind), cm, sm)
            rows.append(self._parsed[p])
        kinds = torch.tensor([r[0] for r in rows], device=device)
        return kinds, torch.stack([r[1] for r in rows]).to(device), torch.stack([r[2] for r in rows]).to(device)

    def head_probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Softmax of every head for images ``[B, 3, H, W]`` in [0, 1] (resized to 64x64 if needed)."""
        size = self.net.config.image_size
        if tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        param = next(self.net.parameters())
        return head_probabilities(self.net(images.to(param.device, param.dtype)).float())

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images_and_prompts(images, prompts, min_size=8, single_prompt=False)
        kinds, cmask, smask = self._prompt_tensors(list(prompts), next(self.net.parameters()).device)
        p = caption_probability(self.head_probabilities(images), kinds, cmask, smask)  # [B]
        return torch.log(p + 1e-6) if self.log_prob else p


def check_folder(folder: str) -> list[str]:
    """The paths of a reward folder's config and weights; FileNotFoundError naming the folder if either is missing."""
    paths = [os.path.join(folder, n) for n in (CONFIG_NAME, WEIGHTS_NAME)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"no ShapeWorld reward weights at {folder!r} (missing {missing}); train them with"
            " `python -m experiments.shapeworld_reward.train --out <folder>`, or pass folder=None for the bundled"
            " ones"
        )
    return paths


def _loader(log_prob: bool):
    def load(folder: str | None):
        return ShapeWorldReward.from_pretrained(folder, log_prob=log_prob)

    return load


register_reward(
    "shapeworld",
    _loader(False),
    help="the ShapeWorld classifier's probability (=FOLDER: other weights)",
    check=check_folder,
)
register_reward(
    "shapeworld-log", _loader(True), help="its log-probability (=FOLDER: other weights)", check=check_folder
)
