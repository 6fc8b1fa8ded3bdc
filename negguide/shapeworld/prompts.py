"""ShapeWorld training and held-out prompts: captions split by a hash of their text, so that a held-out prompt
never appears in training. The trainers' default prompts on a ShapeWorld model and every held-out evaluation come
from here."""

from __future__ import annotations

import zlib

import numpy as np

from .world import CaptionProbs, caption_kind, sample_caption, sample_scene

SPLITS = ("train", "heldout")


CAPTION_KINDS = ("all", "two-object", "relation")


def shapeworld_prompts(n: int, split: str = "train", seed: int = 0, kind: str = "all") -> list[str]:
    """``n`` distinct non-empty captions of the ``split`` (1 in 5 caption texts is held out, by hash); ``kind``:
    all, two-object (and + relation) or relation captions only."""
    if split not in SPLITS:
        raise ValueError(f"split = {split!r} is not one of {SPLITS}")
    if kind not in CAPTION_KINDS:
        raise ValueError(f"kind = {kind!r} is not one of {CAPTION_KINDS}")
    wanted = {"all": ("one-object", "and", "relation"), "two-object": ("and", "relation"), "relation": ("relation",)}[
        kind
    ]
    rng = np.random.default_rng(seed)
    probs = CaptionProbs(empty=0.0)
    out: list[str] = []
    for _ in range(200 * n):
        caption = sample_caption(sample_scene(rng, two_object_prob=0.5), rng, probs)
        held = zlib.crc32(caption.encode()) % 5 == 0
        if caption and caption not in out and held == (split == "heldout") and caption_kind(caption) in wanted:
            out.append(caption)
            if len(out) == n:
                return out
    what = "" if kind == "all" else f"{kind} "
    raise ValueError(f"only {len(out)} distinct {split} {what}captions found; ask for fewer")
