"""ShapeWorld: a world of coloured shapes whose attributes a program reads back exactly.

``world`` (vocabulary, scenes, renderer, captions), ``judge`` (read-back and metrics), ``components``,
``train_model`` and ``train_unet`` (the bundled tiny SD3-layout model and its SD-format sibling), ``evaluate``
(their accuracy), ``bench`` (the efficacy benchmark). Only the pure-numpy parts are
imported here; the torch/diffusers modules load on use.
"""

from negguide.shapeworld.judge import (
    attribute_probability,
    caption_satisfied,
    detect_batch,
    detect_objects,
    distinct_pairs,
    mean_pairwise_distance,
    prompt_accuracy,
    prompt_correct,
)
from negguide.shapeworld.world import (
    COLOURS,
    FAVOURITE_COLOUR,
    SHAPES,
    CaptionProbs,
    ParsedCaption,
    Scene,
    ShapeObject,
    make_dataset,
    parse_caption,
    render,
    sample_caption,
    sample_scene,
)

__all__ = [
    "COLOURS",
    "FAVOURITE_COLOUR",
    "SHAPES",
    "CaptionProbs",
    "ParsedCaption",
    "Scene",
    "ShapeObject",
    "attribute_probability",
    "caption_satisfied",
    "detect_batch",
    "detect_objects",
    "distinct_pairs",
    "make_dataset",
    "mean_pairwise_distance",
    "parse_caption",
    "prompt_accuracy",
    "prompt_correct",
    "render",
    "sample_caption",
    "sample_scene",
]
