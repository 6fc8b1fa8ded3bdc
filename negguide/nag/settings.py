"""NAG settings: one validated dataclass for the Python API, the CLI flags and the demo's sliders (no torch here).

Normalized Attention Guidance (Chen et al. 2025, arXiv 2505.21179) extrapolates attention features, per guided
layer and image token, away from each negative prompt's, bounds the result's L1 norm and blends it back:

    Z~ = Z+ + sum_i s_i (Z+ - Z-_i)          Z^ = Z~ min(1, tau ||Z+||_1 / ||Z~||_1)          Z = alpha Z^ + (1 - alpha) Z+

The weights ``s_i`` are the paper's ``s``; the reference code's ``nag_scale`` is ``s + 1`` (it writes
``Z~ = nag_scale Z+ - (nag_scale - 1) Z-``), so its ``nag_scale=5`` is ``negative_weights=[4.0]`` here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from negguide.core.settings import Settings, setting, validate
from negguide.guidance.windows import FULL_WINDOW, validate_window

NAG_EPS = 1e-6  # added to every norm (a zero feature vector is left alone instead of dividing 0 by 0)

#: the block selectors of each family: an alias, or a module-name prefix such as "up_blocks.1" or
#: "single_transformer_blocks.3". UNets guide the cross-attention (attn2) of the selected transformer blocks,
#: MMDiTs the joint attention (attn) of the selected blocks.
BLOCK_ALIASES = {
    "sd": {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."},
    "sdxl": {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."},
    "sd3": {"joint": "transformer_blocks."},
    "flux": {"joint": "transformer_blocks.", "single": "single_transformer_blocks."},
}

#: per-family defaults, from the reference code (github.com/ChenDarYen/Normalized-Attention-Guidance):
#: SDXL: tau 2.5, alpha 0.5, every UNet attn2, README example nag_scale 3 (s = 2);
#: SD3: tau 2.5, alpha 0.125, every joint attention; Flux: tau 2.5, alpha 0.25, every joint and single block,
#: README example nag_scale 5 (s = 4). SD1.x is not in the reference code and follows SDXL (same UNet
#: cross-attention); the reference gives no SD3 scale and SD3 follows Flux (same MMDiT kind).
FAMILY_DEFAULTS = {
    "sd": dict(weight=2.0, tau=2.5, alpha=0.5, blocks=("down", "mid", "up")),
    "sdxl": dict(weight=2.0, tau=2.5, alpha=0.5, blocks=("down", "mid", "up")),
    "sd3": dict(weight=4.0, tau=2.5, alpha=0.125, blocks=("joint",)),
    "flux": dict(weight=4.0, tau=2.5, alpha=0.25, blocks=("joint", "single")),
}

WEIGHT_HINT = "weights are >= 0 (the reference code's nag_scale minus 1); 0 switches a negative off"


def _as_list(value):
    return [] if value is None else [value] if isinstance(value, str) else value


def _check_count(values, count: int, name: str, what: str) -> None:
    if values is not None and len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries but negatives has {count}: give one {what}")


@dataclass
class NAGSettings(Settings):
    """Negative prompts applied inside attention, where CFG is off (few-step and distilled models too).

    Each negative ``i`` has a weight ``s_i >= 0`` and a window ``(start, end)`` in fractions of the sampling run;
    outside its window, or with weight 0, its attention is never computed. ``None`` fields take the family's
    default (:data:`FAMILY_DEFAULTS`) in :meth:`resolved`. The formula is the paper's
    (:func:`negguide.nag.math.nag_combine`).
    """

    negatives: list[str] = setting([], "negative prompts (or give encoded embeddings to the hooks)")
    negative_weights: list[float] | None = setting(
        None,
        "one scale s >= 0 per negative (family default 2-4)",
        min=0.0,
        max=20.0,
        step=0.25,
        default=4.0,
        hint=WEIGHT_HINT,
    )
    negative_windows: list[tuple[float, float]] | None = setting(
        None,
        "one (start, end) window per negative, fractions of the run",
        min=0.0,
        max=1.0,
        step=0.05,
        hint="give fractions of the sampling run, e.g. (0.0, 0.5)",
    )
    tau: float | None = setting(
        None,
        "bound on ||Z~||_1 / ||Z+||_1 per token (family default 2.5)",
        min=1.0,
        max=20.0,
        step=0.1,
        hint="tau >= 1 (below 1 it would shrink unguided features too), e.g. 2.5",
    )
    alpha: float | None = setting(
        None,
        "blend of the guided features (family default 0.125-0.5)",
        min=0.0,
        max=1.0,
        step=0.025,
        hint="a fraction in [0, 1]; 0 switches NAG off",
    )
    blocks: tuple[str, ...] | None = setting(
        None, "attention blocks: down/mid/up (UNet), joint/single (transformers) or module-name prefixes"
    )
    eps: float = setting(
        NAG_EPS, "epsilon added to every norm", min=0.0, low_open=True, hint="a small positive number such as 1e-6"
    )

    def __post_init__(self) -> None:
        self.negatives = _as_list(self.negatives)
        if isinstance(self.blocks, str):
            self.blocks = (self.blocks,)
        weights, windows = self.negative_weights, self.negative_windows
        count = len(self.negatives) if isinstance(self.negatives, (list, tuple)) else 0
        if isinstance(weights, (int, float)) and not isinstance(weights, bool):
            self.negative_weights = [weights] * max(count, 1)  # one number for every negative
        if isinstance(windows, tuple) and len(windows) == 2 and all(isinstance(v, (int, float)) for v in windows):
            self.negative_windows = [windows] * max(count, 1)  # one window for every negative
        validate(self)
        if self.negatives:
            _check_count(self.negative_weights, count, "negative_weights", "weight per negative")
            _check_count(self.negative_windows, count, "negative_windows", "(start, end) window per negative")
        if self.negative_windows is not None:
            self.negative_windows = [
                validate_window(w, f"negative_windows[{i}]") for i, w in enumerate(self.negative_windows)
            ]
        if self.blocks is not None and (not self.blocks or not all(self.blocks)):
            raise TypeError(f"blocks must be a non-empty list of block names such as ['up'], got {self.blocks!r}")

    def resolved(self, family: str, count: int | None = None) -> NAGSettings:
        """A copy for ``family`` with every ``None`` filled in: ``count`` negatives (default: the prompts), the
        family's weight, tau, alpha and blocks, full windows; ValueError for blocks the family does not have."""
        if family not in FAMILY_DEFAULTS:
            raise ValueError(f"family = {family!r} is unknown; choose one of {sorted(FAMILY_DEFAULTS)}")
        count = len(self.negatives) if count is None else count
        if self.negatives and count != len(self.negatives):
            raise ValueError(f"{count} negative contexts were given for {len(self.negatives)} negative prompts")
        defaults = FAMILY_DEFAULTS[family]
        weights = self._fit(self.negative_weights, [defaults["weight"]], count, "negative_weights", "weight")
        windows = self._fit(self.negative_windows, [FULL_WINDOW], count, "negative_windows", "window")
        blocks = tuple(self.blocks or defaults["blocks"])
        check_blocks(family, blocks)
        return replace(
            self,
            negative_weights=weights,
            negative_windows=windows,
            tau=defaults["tau"] if self.tau is None else self.tau,
            alpha=defaults["alpha"] if self.alpha is None else self.alpha,
            blocks=blocks,
        )

    def _fit(self, values, default: list, count: int, name: str, what: str) -> list:
        """One entry per negative context: ``None`` is the default, one entry (without prompts) is shared."""
        if values is None:
            return default * count
        if len(values) == 1 and not self.negatives:
            values = values * count
        _check_count(values, count, name, f"{what} per negative context")
        return list(values)

    @property
    def is_noop(self) -> bool:
        """True when no negative can ever change a feature (no weight above 0, or alpha = 0)."""
        return self.alpha == 0 or not any(w > 0 for w in self.negative_weights or [1.0] * len(self.negatives))


def check_blocks(family: str, blocks) -> None:
    """ValueError unless every entry of ``blocks`` is an alias of ``family`` or starts with one's prefix."""
    aliases = BLOCK_ALIASES[family]
    for block in blocks:
        if block in aliases or any(block.startswith(prefix) for prefix in aliases.values()):
            continue
        raise ValueError(
            f"blocks has {block!r}, which {family} models do not have; use one of {sorted(aliases)} or a "
            f"module-name prefix starting with one of {sorted(aliases.values())}"
        )
