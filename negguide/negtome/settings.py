"""NegToMe settings: one validated dataclass for the Python API, the CLI flags and the demo's sliders."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from negguide.negtome.merge import DEFAULT_CHUNK

BATCH_REFERENCES = ("first", "others")
REFERENCE_NOISE = ("current", "clean")

# the paper's settings: SDXL t in [800, 1000] (alpha 0.9, tau 0.7), Flux sigma in [0.9, 1] (alpha 0.9, tau 0.65).
# SD1.x and SD3 are not in the reference code; SD1.x follows SDXL (same UNet), SD3 follows Flux (same kind).
FAMILY_DEFAULTS = {
    "sd": dict(window=(0.8, 1.0), threshold=0.7, blocks=("up",), min_feature_size=0),
    "sdxl": dict(window=(0.8, 1.0), threshold=0.7, blocks=("up",), min_feature_size=32),
    "sd3": dict(window=(0.9, 1.0), threshold=0.65, blocks=("joint",), min_feature_size=0),
    "flux": dict(window=(0.9, 1.0), threshold=0.65, blocks=("joint", "single"), min_feature_size=0),
}


def _number(value, name: str, low: float, high: float, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} = {value} is outside [{low}, {high}]: {hint}")
    return float(value)


def _noise_window(window) -> tuple:
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(
            f"window must be a (low, high) pair of noise levels in [0, 1] (1 = pure noise), got {window!r}"
        )
    low, high = (_number(v, "window", 0.0, 1.0, "noise levels run from 0 (clean) to 1 (pure noise)") for v in window)
    if low > high:
        raise ValueError(f"window = {tuple(window)!r} is reversed: give (low, high), e.g. ({high}, {low})")
    return low, high


@dataclass
class NegToMeSettings:
    """Negative token merging (Singh et al., 2024): push image tokens away from their best match in a reference.

    ``None`` fields take the model family's default (:data:`FAMILY_DEFAULTS`, from the paper's code).
    The window is in noise level (1 = pure noise, 0 = clean): timestep / 1000 for SD/SDXL/SD3, sigma for Flux.
    Few-step runs may never reach a narrow window (SDXL's "leading" spacing starts at t = 751 with 4 steps, below
    the default 0.8): ``handle.active_calls`` counts the denoiser calls that merged.
    """

    alpha: float = field(
        default=0.9,
        metadata={"help": "push strength (the paper: 0.9; its demo 1.5-1.9)", "min": 0.0, "max": 5.0, "step": 0.05},
    )
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "cosine similarity above which a token is pushed (family default 0.65-0.7)",
            "min": -1.0,
            "max": 1.0,
            "step": 0.01,
        },
    )
    window: tuple | None = field(
        default=None,
        metadata={
            "help": "(low, high) noise levels where merging is on (family default (0.8, 1) or (0.9, 1))",
            "min": 0.0,
            "max": 1.0,
            "step": 0.05,
        },
    )
    blocks: tuple | None = field(
        default=None,
        metadata={
            "help": "attention blocks to hook: up/mid/down (UNet), joint/single (transformers) or module-name prefixes"
        },
    )
    min_feature_size: int | None = field(
        default=None,
        metadata={
            "help": "only feature maps with height and width >= this (SDXL default 32)",
            "min": 0,
            "max": 256,
            "step": 1,
        },
    )
    batch_reference: str = field(
        default="others",
        metadata={
            "help": "batch mode: 'others' (each image vs the rest of its group) or 'first' (the paper's code)",
            "choices": BATCH_REFERENCES,
        },
    )
    reference_noise: str = field(
        default="current",
        metadata={"help": "reference images at the current noise level or clean", "choices": REFERENCE_NOISE},
    )
    legacy_matching: bool = field(
        default=False, metadata={"help": "reproduce the reference code's max over dim=-2 (for comparison only)"}
    )
    dropout: float = field(
        default=0.0,
        metadata={
            "help": "probability that a matched token is left alone (seeded)",
            "min": 0.0,
            "max": 1.0,
            "step": 0.05,
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the dropout and of the reference images' noise"})
    chunk_tokens: int = field(
        default=DEFAULT_CHUNK,
        metadata={
            "help": "token chunk of the matching (bounds memory to chunk^2 per image)",
            "min": 16,
            "max": 65536,
            "step": 16,
        },
    )

    def __post_init__(self) -> None:
        self.alpha = _number(self.alpha, "alpha", 0.0, 5.0, "use 0.9 (the paper) up to about 2")
        if self.threshold is not None:
            self.threshold = _number(self.threshold, "threshold", -1.0, 1.0, "a cosine similarity, e.g. 0.65")
        if self.window is not None:
            self.window = _noise_window(self.window)
        if self.blocks is not None:
            blocks = (self.blocks,) if isinstance(self.blocks, str) else self.blocks
            if not isinstance(blocks, (list, tuple)) or not blocks or not all(isinstance(b, str) and b for b in blocks):
                raise TypeError(f"blocks must be a non-empty list of block names such as ['up'], got {self.blocks!r}")
            self.blocks = tuple(blocks)
        if self.min_feature_size is not None:
            if (
                isinstance(self.min_feature_size, bool)
                or not isinstance(self.min_feature_size, int)
                or self.min_feature_size < 0
            ):
                raise ValueError(f"min_feature_size = {self.min_feature_size!r} must be an integer >= 0")
        if self.batch_reference not in BATCH_REFERENCES:
            raise ValueError(f"batch_reference = {self.batch_reference!r} is not one of {BATCH_REFERENCES}")
        if self.reference_noise not in REFERENCE_NOISE:
            raise ValueError(f"reference_noise = {self.reference_noise!r} is not one of {REFERENCE_NOISE}")
        if not isinstance(self.legacy_matching, bool):
            raise TypeError(f"legacy_matching must be True or False, got {self.legacy_matching!r}")
        if self.legacy_matching and self.batch_reference == "others":
            raise ValueError("legacy_matching reproduces the paper's code, which only has batch_reference='first'")
        self.dropout = _number(self.dropout, "dropout", 0.0, 1.0, "a probability; 0 disables it")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.chunk_tokens, bool) or not isinstance(self.chunk_tokens, int) or self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens = {self.chunk_tokens!r} must be a positive integer such as 1024")

    def resolved(self, family: str) -> NegToMeSettings:
        """A copy with every ``None`` field filled from the family's defaults."""
        if family not in FAMILY_DEFAULTS:
            raise ValueError(f"family = {family!r} is unknown; choose one of {sorted(FAMILY_DEFAULTS)}")
        defaults = FAMILY_DEFAULTS[family]
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    @classmethod
    def field_specs(cls) -> dict:
        """Field name -> metadata (help, min, max, step, choices): for CLI flags and demo sliders."""
        return {f.name: dict(f.metadata) for f in fields(cls)}
