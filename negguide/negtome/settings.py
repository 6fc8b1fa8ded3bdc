"""NegToMe settings: one validated dataclass for the Python API, the CLI flags and the demo's sliders."""

from __future__ import annotations

from dataclasses import dataclass, replace

from negguide.core.settings import Settings, setting, validate

BATCH_REFERENCES = ("first", "others")
REFERENCE_NOISE = ("current", "clean")
DEFAULT_CHUNK = 1024  # tokens per chunk of the matching (negguide.negtome.merge's default too)

# the paper's settings: SDXL t in [800, 1000] (alpha 0.9, tau 0.7), Flux sigma in [0.9, 1] (alpha 0.9, tau 0.65).
# SD1.x and SD3 are not in the reference code; SD1.x follows SDXL (same UNet), SD3 follows Flux (same kind).
FAMILY_DEFAULTS = {
    "sd": dict(window=(0.8, 1.0), threshold=0.7, blocks=("up",), min_feature_size=0),
    "sdxl": dict(window=(0.8, 1.0), threshold=0.7, blocks=("up",), min_feature_size=32),
    "sd3": dict(window=(0.9, 1.0), threshold=0.65, blocks=("joint",), min_feature_size=0),
    "flux": dict(window=(0.9, 1.0), threshold=0.65, blocks=("joint", "single"), min_feature_size=0),
}


@dataclass
class NegToMeSettings(Settings):
    """Negative token merging (Singh et al., 2024): push image tokens away from their best match in a reference.

    ``None`` fields take the model family's default (:data:`FAMILY_DEFAULTS`, from the paper's code).
    The window is in noise level (1 = pure noise, 0 = clean): timestep / 1000 for SD/SDXL/SD3, sigma for Flux.
    Few-step runs may never reach a narrow window (SDXL's "leading" spacing starts at t = 751 with 4 steps, below
    the default 0.8): ``handle.active_calls`` counts the denoiser calls that merged.
    """

    alpha: float = setting(
        0.9,
        "push strength (the paper: 0.9; its demo 1.5-1.9)",
        min=0.0,
        max=5.0,
        step=0.05,
        hint="use 0.9 (the paper) up to about 2",
    )
    threshold: float | None = setting(
        None,
        "cosine similarity above which a token is pushed (family default 0.65-0.7)",
        min=-1.0,
        max=1.0,
        step=0.01,
        hint="a cosine similarity, e.g. 0.65",
    )
    window: tuple[float, float] | None = setting(
        None,
        "(low, high) noise levels where merging is on (family default (0.8, 1) or (0.9, 1))",
        min=0.0,
        max=1.0,
        step=0.05,
        hint="noise levels run from 0 (clean) to 1 (pure noise)",
    )
    blocks: tuple[str, ...] | None = setting(
        None, "attention blocks to hook: up/mid/down (UNet), joint/single (transformers) or module-name prefixes"
    )
    min_feature_size: int | None = setting(
        None, "only feature maps with height and width >= this (SDXL default 32)", min=0, max=256, step=1
    )
    batch_reference: str = setting(
        "others",
        "batch mode: 'others' (each image vs the rest of its group) or 'first' (the paper's code)",
        choices=BATCH_REFERENCES,
    )
    reference_noise: str = setting(
        "current", "reference images at the current noise level or clean", choices=REFERENCE_NOISE
    )
    legacy_matching: bool = setting(False, "reproduce the reference code's max over dim=-2 (for comparison only)")
    dropout: float = setting(
        0.0,
        "probability that a matched token is left alone (seeded)",
        min=0.0,
        max=1.0,
        step=0.05,
        hint="a probability; 0 disables it",
    )
    seed: int = setting(0, "seed of the dropout and of the reference images' noise")
    chunk_tokens: int = setting(
        DEFAULT_CHUNK,
        "token chunk of the matching (bounds memory to chunk^2 per image)",
        min=16,
        max=65536,
        step=16,
    )

    def __post_init__(self) -> None:
        if isinstance(self.blocks, str):
            self.blocks = (self.blocks,)
        validate(self)
        if self.window is not None and self.window[0] > self.window[1]:
            low, high = self.window
            raise ValueError(f"window = {self.window!r} is reversed: give (low, high), e.g. ({high}, {low})")
        if self.blocks is not None and (not self.blocks or not all(self.blocks)):
            raise TypeError(f"blocks must be a non-empty list of block names such as ['up'], got {self.blocks!r}")
        if self.legacy_matching and self.batch_reference == "others":
            raise ValueError("legacy_matching reproduces the paper's code, which only has batch_reference='first'")

    def resolved(self, family: str) -> NegToMeSettings:
        """A copy with every ``None`` field filled from the family's defaults."""
        if family not in FAMILY_DEFAULTS:
            raise ValueError(f"family = {family!r} is unknown; choose one of {sorted(FAMILY_DEFAULTS)}")
        defaults = FAMILY_DEFAULTS[family]
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
