"""Perp-Neg settings: one validated dataclass feeds the Python API, the CLI flags and the demo's sliders."""

from __future__ import annotations

from dataclasses import dataclass

from negguide.core.settings import Settings, setting, validate
from negguide.guidance.constants import DEFAULT_EPS
from negguide.guidance.windows import FULL_WINDOW, validate_window

MODES = ("perp_neg", "plain")
WEIGHT_HINT = "weights are >= 0 and the sign is built in (a negative prompt is removed)"


def _text_list(value):
    """A prompt or None as a list (other values go to the validator, which names what is wrong)."""
    return [] if value is None else [value] if isinstance(value, str) else value


def _weights(weights, count: int):
    """None: 1.0 each; one number: that number for every prompt."""
    if weights is None:
        return [1.0] * count
    return [weights] * count if isinstance(weights, (int, float)) and not isinstance(weights, bool) else weights


def _check_count(values: list, count: int, name: str, prompts_name: str, what: str) -> None:
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries but {prompts_name} has {count}: give one {what}")


@dataclass
class PerpNegSettings(Settings):
    """Several weighted negative prompts removed perpendicular to the positive (Armandpour et al., 2023).

    Each negative ``i`` has a weight ``w_i >= 0`` and a window ``(start, end)`` in fractions of the sampling run;
    outside its window (or with weight 0) its branch is not computed. ``positives`` are extra positive prompts
    whose parts perpendicular to the main prompt are added with ``positive_weights`` (composition).
    ``mode="plain"`` replaces Perp-Neg by plain negative prompting (the negatives take the unconditional
    branch's place, like diffusers' ``negative_prompt``), for comparison.
    """

    negatives: list[str] = setting([], "negative prompts")
    negative_weights: list[float] | None = setting(
        None,
        "one weight >= 0 per negative (default 1.0)",
        min=0.0,
        max=5.0,
        step=0.05,
        default=1.0,
        hint=WEIGHT_HINT,
    )
    negative_windows: list[tuple[float, float]] | None = setting(
        None,
        "one (start, end) window per negative, fractions of the run",
        min=0.0,
        max=1.0,
        step=0.05,
        hint="give fractions of the sampling run, e.g. (0.3, 1.0)",
    )
    positives: list[str] = setting([], "extra positive prompts (composition)")
    positive_weights: list[float] | None = setting(
        None, "one weight >= 0 per extra positive", min=0.0, max=5.0, step=0.05, default=1.0, hint=WEIGHT_HINT
    )
    mode: str = setting("perp_neg", "perp_neg or plain", choices=MODES, call_argument="guidance_mode")
    eps: float = setting(
        DEFAULT_EPS,
        "epsilon added to ||D_pos||^2",
        call_argument="perp_neg_eps",
        min=0.0,
        low_open=True,
        hint="a small positive number such as 1e-8",
    )

    def __post_init__(self) -> None:
        self.negatives, self.positives = _text_list(self.negatives), _text_list(self.positives)
        count = len(self.negatives) if isinstance(self.negatives, (list, tuple)) else 0
        self.negative_weights = _weights(self.negative_weights, count)
        self.positive_weights = _weights(
            self.positive_weights, len(self.positives) if isinstance(self.positives, (list, tuple)) else 0
        )
        windows = self.negative_windows
        if windows is None:
            self.negative_windows = [FULL_WINDOW] * count
        elif isinstance(windows, tuple) and len(windows) == 2 and all(isinstance(v, (int, float)) for v in windows):
            self.negative_windows = [windows] * count  # one window for all
        validate(self)
        _check_count(self.negative_weights, len(self.negatives), "negative_weights", "negatives", "weight per prompt")
        _check_count(self.positive_weights, len(self.positives), "positive_weights", "positives", "weight per prompt")
        _check_count(
            self.negative_windows,
            len(self.negatives),
            "negative_windows",
            "negatives",
            "(start, end) window per negative",
        )
        self.negative_windows = [
            validate_window(w, f"negative_windows[{i}]") for i, w in enumerate(self.negative_windows)
        ]
        if self.mode == "plain" and self.positives:
            raise ValueError("extra positives need mode='perp_neg': plain negative prompting has no composition term")

    @property
    def is_noop(self) -> bool:
        """True when no branch beyond diffusers' own CFG can ever run."""
        return not self.positives and all(w == 0 for w in self.negative_weights)
