"""Perp-Neg settings: one validated dataclass feeds the Python API, the CLI flags and the demo's sliders."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from negguide.guidance.combine import DEFAULT_EPS
from negguide.guidance.windows import FULL_WINDOW, validate_window

MODES = ("perp_neg", "plain")


def _as_text_list(value, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f"{name} must be a string or a list of strings, got {type(value).__name__}: {value!r}")


def _check_weights(weights, count: int, name: str, prompts_name: str) -> list[float]:
    if weights is None:
        return [1.0] * count
    if isinstance(weights, (int, float)) and not isinstance(weights, bool):
        weights = [weights] * count
    if isinstance(weights, str) or not hasattr(weights, "__len__"):
        raise TypeError(f"{name} must be a list of numbers, one per entry of {prompts_name}; got {weights!r}")
    weights = list(weights)
    if len(weights) != count:
        raise ValueError(
            f"{name} has {len(weights)} entries but {prompts_name} has {count}: give one weight per prompt"
        )
    out = []
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise TypeError(f"{name}[{i}] = {w!r} is not a number")
        if not math.isfinite(w):
            raise ValueError(f"{name}[{i}] = {w} is not finite: use a finite weight such as 1.0")
        if w < 0:
            raise ValueError(
                f"{name}[{i}] = {w} is negative: weights are >= 0 and the sign is built in "
                f"(a negative prompt is removed; use {abs(w)})"
            )
        out.append(float(w))
    return out


@dataclass
class PerpNegSettings:
    """Several weighted negative prompts removed perpendicular to the positive (Armandpour et al., 2023).

    Each negative ``i`` has a weight ``w_i >= 0`` and a window ``(start, end)`` in fractions of the sampling run;
    outside its window (or with weight 0) its branch is not computed. ``positives`` are extra positive prompts
    whose parts perpendicular to the main prompt are added with ``positive_weights`` (composition).
    ``mode="plain"`` replaces Perp-Neg by plain negative prompting (the negatives take the unconditional
    branch's place, like diffusers' ``negative_prompt``), for comparison.
    """

    negatives: list = field(default_factory=list, metadata={"help": "negative prompts"})
    negative_weights: list | None = field(
        default=None,
        metadata={
            "help": "one weight >= 0 per negative (default 1.0)",
            "min": 0.0,
            "max": 5.0,
            "step": 0.05,
            "default": 1.0,
        },
    )
    negative_windows: list | None = field(
        default=None,
        metadata={
            "help": "one (start, end) window per negative, fractions of the run",
            "min": 0.0,
            "max": 1.0,
            "step": 0.05,
        },
    )
    positives: list = field(default_factory=list, metadata={"help": "extra positive prompts (composition)"})
    positive_weights: list | None = field(
        default=None,
        metadata={"help": "one weight >= 0 per extra positive", "min": 0.0, "max": 5.0, "step": 0.05, "default": 1.0},
    )
    mode: str = field(default="perp_neg", metadata={"help": "perp_neg or plain", "choices": MODES})
    eps: float = field(default=DEFAULT_EPS, metadata={"help": "epsilon added to ||D_pos||^2"})

    def __post_init__(self) -> None:
        self.negatives = _as_text_list(self.negatives, "negatives")
        self.positives = _as_text_list(self.positives, "positives")
        self.negative_weights = _check_weights(
            self.negative_weights, len(self.negatives), "negative_weights", "negatives"
        )
        self.positive_weights = _check_weights(
            self.positive_weights, len(self.positives), "positive_weights", "positives"
        )
        if self.negative_windows is None:
            self.negative_windows = [FULL_WINDOW] * len(self.negatives)
        elif (
            isinstance(self.negative_windows, tuple)
            and len(self.negative_windows) == 2
            and all(isinstance(v, (int, float)) for v in self.negative_windows)
        ):
            self.negative_windows = [self.negative_windows] * len(self.negatives)  # one window for all
        else:
            windows = list(self.negative_windows)
            if len(windows) != len(self.negatives):
                raise ValueError(
                    f"negative_windows has {len(windows)} entries but negatives has {len(self.negatives)}: "
                    "give one (start, end) window per negative"
                )
            self.negative_windows = windows
        self.negative_windows = [
            validate_window(w, f"negative_windows[{i}]") for i, w in enumerate(self.negative_windows)
        ]
        if self.mode not in MODES:
            raise ValueError(f"mode = {self.mode!r} is not one of {MODES}")
        if (
            isinstance(self.eps, bool)
            or not isinstance(self.eps, (int, float))
            or not (self.eps > 0 and math.isfinite(self.eps))
        ):
            raise ValueError(f"eps = {self.eps!r} must be a small positive number such as 1e-8")
        if self.mode == "plain" and self.positives:
            raise ValueError("extra positives need mode='perp_neg': plain negative prompting has no composition term")

    @property
    def is_noop(self) -> bool:
        """True when no branch beyond diffusers' own CFG can ever run."""
        return not self.positives and all(w == 0 for w in self.negative_weights)

    @classmethod
    def field_specs(cls) -> dict:
        """Field name -> metadata (help, min, max, step, choices): for CLI flags and demo sliders."""
        return {f.name: dict(f.metadata) for f in fields(cls)}
