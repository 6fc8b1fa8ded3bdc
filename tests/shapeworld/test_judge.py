"""The ShapeWorld judge: exact read-back, robustness, connected components, metrics, input errors."""

import os

import numpy as np
import pytest
import torch

from negguide.shapeworld.judge import (
    attribute_probability,
    caption_satisfied,
    detect_objects,
    distinct_pairs,
    label_components,
    mean_pairwise_distance,
    prompt_accuracy,
    prompt_correct,
)
from negguide.shapeworld.world import COLOURS, Scene, ShapeObject, render, sample_scene


def _obj(colour, shape, cx=0.5, cy=0.5, size=0.2):
    return ShapeObject(colour, shape, cx, cy, size, COLOURS[colour])


def _img(*objs, size=64):
    return render(Scene(tuple(objs)), size=size)


def _read_back_ok(img, scene):
    found = detect_objects(img)
    if len(found) != len(scene.objects):
        return False
    two = len(scene.objects) == 2
    return all(
        f.colour == s.colour and f.shape == s.shape and (not two or f.half == s.half)
        for f, s in zip(found, scene.objects)
    )


def _random_scenes(seed, n):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(n)]


def test_exact_read_back_on_rendered_scenes():
    scenes = _random_scenes(11, 300)
    ok = [_read_back_ok(render(sc), sc) for sc in scenes]
    assert np.mean(ok) >= 0.99


def test_read_back_with_gaussian_noise():
    rng = np.random.default_rng(0)
    scenes = _random_scenes(12, 120)
    ok = []
    for sc in scenes:
        noisy = np.clip(render(sc) / 255.0 + rng.normal(0, 0.05, (64, 64, 3)), 0, 1)
        ok.append(_read_back_ok(noisy, sc))
    assert np.mean(ok) >= 0.97


def _gauss_blur(img, sigma=1.0):
    r = np.arange(-3, 4)
    k = np.exp(-(r**2) / (2 * sigma**2))
    k /= k.sum()
    out = img.astype(float)
    for axis in (0, 1):
        pad = [(3, 3) if a == axis else (0, 0) for a in range(3)]
        p = np.pad(out, pad, mode="edge")
        out = sum(w * np.take(p, np.arange(i, i + img.shape[axis]), axis=axis) for i, w in enumerate(k))
    return np.round(out).astype(np.uint8)


def test_read_back_with_blur():
    scenes = _random_scenes(13, 120)
    assert np.mean([_read_back_ok(_gauss_blur(render(sc)), sc) for sc in scenes]) >= 0.97


def test_input_forms_agree():
    img = _img(_obj("yellow", "triangle", 0.3, 0.4, 0.15), _obj("blue", "circle", 0.75, 0.6, 0.12))
    from PIL import Image

    as_torch = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    forms = [img, img / 255.0, Image.fromarray(img), as_torch]
    results = [[(o.colour, o.shape, o.half) for o in detect_objects(f)] for f in forms]
    assert results[0] == [("yellow", "triangle", "left"), ("blue", "circle", "right")]
    assert all(r == results[0] for r in results)


def test_small_specks_and_white_or_grey_ignored():
    img = _img(_obj("red", "square", 0.5, 0.5, 0.15)).copy()
    img[2:4, 2:4] = COLOURS["blue"]  # a 4-pixel speck
    img[50:60, 2:12] = 128  # a grey patch
    found = detect_objects(img)
    assert [(o.colour, o.shape) for o in found] == [("red", "square")]
    assert detect_objects(np.full((64, 64, 3), 255, np.uint8)) == []


def test_the_smallest_object_is_a_judge_option():
    img = _img(_obj("red", "square", 0.5, 0.5, 0.15)).copy()
    img[2:5, 2:5] = COLOURS["blue"]  # a 9-pixel blue piece: a speck by default, an object at 8 pixels
    assert prompt_correct(np.stack([img]), "a red square").tolist() == [True]
    assert prompt_correct(np.stack([img]), "a red square", min_area_frac=8 / 4096).tolist() == [False]
    found = detect_objects(img, min_area_frac=8 / 4096)
    assert sorted(o.colour for o in found) == ["blue", "red"]
    with pytest.raises(ValueError, match="min_area_frac=1.5"):
        detect_objects(img, min_area_frac=1.5)


def test_label_components_counts_and_8_connectivity():
    m = np.zeros((10, 10), bool)
    m[1:3, 1:3] = True  # block
    m[5, 5] = m[6, 6] = True  # diagonal pair: one component under 8-connectivity
    m[8, 0:10] = True  # a row
    labels, n = label_components(m)
    assert n == 3
    assert labels[5, 5] == labels[6, 6] != 0 and labels[1, 1] != labels[8, 3]
    assert (labels[~m] == 0).all()


def test_prompt_accuracy_on_known_batch():
    red_circle = _img(_obj("red", "circle"))
    blue_square = _img(_obj("blue", "square"))
    pair = _img(_obj("red", "circle", 0.25, 0.5, 0.13), _obj("blue", "square", 0.75, 0.5, 0.13))
    batch = np.stack([red_circle, blue_square, pair, pair])
    assert prompt_accuracy(batch, "a red circle") == 0.25  # only the first; the pair has two objects
    assert prompt_accuracy(batch[:2], ["a circle", "a blue shape"]) == 1.0
    assert prompt_correct(
        batch[2:],
        [
            "a red circle to the left of a blue square",
            "a red circle to the right of a blue square",
        ],
    ).tolist() == [True, False]
    assert prompt_accuracy(batch[2:], "a blue square and a red circle") == 1.0
    assert prompt_accuracy(batch[2:], "a blue square to the right of a red shape") == 1.0
    assert prompt_accuracy(batch[2:], "a green square and a red circle") == 0.0
    assert prompt_accuracy(batch, "") == 1.0


def test_two_objects_in_one_half_fail_a_pair_prompt():
    same_half = _img(_obj("red", "circle", 0.25, 0.25, 0.1), _obj("blue", "square", 0.25, 0.75, 0.1))
    objs = detect_objects(same_half)
    assert len(objs) == 2 and not caption_satisfied(objs, "a red circle and a blue square")


def test_attribute_probability_and_distinct_pairs():
    batch = torch.stack(
        [
            torch.from_numpy(_img(_obj(c, s))).permute(2, 0, 1).float() / 255
            for c, s in [("red", "circle"), ("red", "circle"), ("red", "square"), ("green", "triangle")]
        ]
    )
    assert attribute_probability(batch, "red") == 0.75
    assert attribute_probability(batch, "circle") == 0.5
    assert attribute_probability(batch, "yellow") == 0.0
    assert distinct_pairs(batch) == 3


def test_mean_pairwise_distance_known_values():
    white = np.full((8, 8, 3), 255, np.uint8)
    black = np.zeros((8, 8, 3), np.uint8)
    assert mean_pairwise_distance([white, white]) == 0.0
    assert mean_pairwise_distance([white, black]) == pytest.approx(1.0)
    assert mean_pairwise_distance([white, black, white]) == pytest.approx(2.0 / 3.0)


def test_bad_inputs_raise_clear_errors():
    img = _img(_obj("red", "circle"))
    with pytest.raises(ValueError, match="prompts"):
        prompt_accuracy(np.stack([img, img]), ["a circle"])
    with pytest.raises(ValueError, match="attr"):
        attribute_probability(np.stack([img]), "purple")
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        detect_objects(torch.zeros(64, 64, 3))
    with pytest.raises(TypeError, match="cannot read an image"):
        detect_objects("image.png")
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_distance([img])
    with pytest.raises(ValueError, match="purple"):
        prompt_accuracy(np.stack([img]), "a purple circle")


GENERATED = os.path.join(os.path.dirname(__file__), "..", "data", "judge_generated")


def _generated_images(folder=None):
    import json

    from PIL import Image

    folder = folder or GENERATED
    with open(os.path.join(folder, "expected.json")) as f:
        expected = json.load(f)
    return [(np.asarray(Image.open(os.path.join(folder, name)).convert("RGB")), e) for name, e in expected.items()]


def test_small_generated_triangles_are_read_as_triangles(monkeypatch):
    """Images of the bundled SD3 model that satisfy their caption (read by eye, in expected.json): each holds a
    small triangle whose blurred apex lifts its top/bottom mass ratio to 0.62-0.71. With the judge's first
    threshold (0.62) it read them as circles or squares and failed the prompt."""
    from negguide.shapeworld import judge

    images = _generated_images()
    assert len(images) >= 8
    for image, e in images:
        assert [[o.colour, o.shape] for o in detect_objects(image)] == e["objects"]
        assert prompt_correct(image[None], e["prompt"])[0]
    monkeypatch.setattr(judge, "TRIANGLE_MASS_RATIO", 0.62)
    monkeypatch.setattr(judge, "SILHOUETTE_REACH_FRAC", 0.0)  # the judge of then read shapes from coloured pixels only
    misread = sum([[o.colour, o.shape] for o in detect_objects(image)] != e["objects"] for image, e in images)
    assert misread == len(images)


DUPLICATES = os.path.join(os.path.dirname(__file__), "..", "data", "judge_duplicates")


def test_generated_duplicated_objects_are_counted_not_merged():
    """Images of the bundled SD3 model with a same-coloured object drawn twice in one half (read by eye, in
    expected.json): three or four objects for a two-object caption, so the caption fails. The judge merged all
    same-colour pieces of a half before 2026-11-24 and passed every one of them."""
    images = _generated_images(DUPLICATES)
    assert len(images) >= 7
    for image, e in images:
        assert [[o.colour, o.shape] for o in detect_objects(image)] == e["objects"]
        assert len(e["objects"]) > 2 and not prompt_correct(image[None], e["prompt"])[0]
    # merge every same-colour piece, as the old judge did
    assert all(prompt_correct(image[None], e["prompt"], fragment_gap_frac=0.99)[0] for image, e in images)


def test_two_same_coloured_objects_in_one_half_are_two_objects_but_fragments_are_one():
    pair = _img(_obj("red", "circle", 0.25, 0.22, 0.12), _obj("blue", "square", 0.75, 0.5, 0.15))
    twin = _img(_obj("red", "circle", 0.25, 0.78, 0.12))  # a scene holds at most two objects: multiply a third in
    stacked = np.round(pair.astype(float) * twin / 255.0).astype(np.uint8)
    objs = detect_objects(stacked)
    assert [(o.colour, o.half) for o in objs] == [("red", "left"), ("red", "left"), ("blue", "right")]
    assert not caption_satisfied(objs, "a red circle and a blue square")
    split = _img(_obj("green", "square", 0.5, 0.5, 0.25)).copy()
    split[31:33, :] = 255  # a 2-pixel white line through the square: two pieces of one object
    assert label_components(np.any(split < 200, axis=-1))[1] == 2  # the line cuts the square in two
    found = detect_objects(split)
    assert len(found) == 1 and found[0].colour == "green" and found[0].shape == "square"
    assert len(detect_objects(split, fragment_gap_frac=0.0)) == 2  # joining only touching pieces keeps them apart
    with pytest.raises(ValueError, match="fragment_gap_frac=-0.1"):
        detect_objects(split, fragment_gap_frac=-0.1)


SHADED = os.path.join(os.path.dirname(__file__), "..", "data", "judge_shaded")


def test_generated_shaded_objects_are_read_from_their_silhouette(monkeypatch):
    """Images of the bundled SD3 model that satisfy their caption (read by eye, in expected.json): dark green squares
    with a bright highlight, triangles with a brown base, a shaded red circle. Their dark parts have too little chroma
    for the coloured mask; from coloured pixels alone (the judge before its silhouette) every one is misread."""
    from negguide.shapeworld import judge

    images = _generated_images(SHADED)
    assert len(images) >= 8
    for image, e in images:
        assert [[o.colour, o.shape] for o in detect_objects(image)] == e["objects"]
        assert prompt_correct(image[None], e["prompt"])[0]
    monkeypatch.setattr(judge, "SILHOUETTE_REACH_FRAC", 0.0)
    assert all([[o.colour, o.shape] for o in detect_objects(image)] != e["objects"] for image, e in images)


def test_a_rendered_square_with_dark_greyish_corners_is_still_a_square(monkeypatch):
    from negguide.shapeworld import judge

    img = _img(_obj("green", "square", 0.5, 0.5, 0.25)).astype(float)
    y, x = np.mgrid[0:64, 0:64]
    u, v = np.minimum(x - 16, 47 - x), np.minimum(y - 16, 47 - y)  # pixels from the square's sides (16..47)
    shade = (u + v < 12) & (img.min(-1) < 200)  # its four corners
    img[shade] = 0.3 * img[shade] + 0.7 * 70.0  # toward dark grey: chroma 0.3 of green's, below the coloured mask
    img = np.round(img).astype(np.uint8)
    found = detect_objects(img)
    assert [(o.colour, o.shape) for o in found] == [("green", "square")]
    monkeypatch.setattr(judge, "SILHOUETTE_REACH_FRAC", 0.0)
    assert [o.shape for o in detect_objects(img)] == ["circle"]  # the coloured mask alone loses the corners
