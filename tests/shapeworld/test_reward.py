"""The bundled ShapeWorld reward: loading, agreement with the judge, relations, gradients, batching, errors."""

import itertools
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from negguide.rewards import ShapeWorldReward
from negguide.shapeworld.judge import DetectedObject, caption_satisfied, prompt_correct
from negguide.shapeworld.reward import COLOUR_NAMES, DEFAULT_FOLDER, KINDS, LAYOUTS, caption_probability, spec_masks
from negguide.shapeworld.world import (
    COLOURS,
    SHAPES,
    CaptionProbs,
    Scene,
    ShapeObject,
    parse_caption,
    render,
    sample_caption,
    sample_scene,
)


@pytest.fixture(scope="module")
def reward():
    return ShapeWorldReward.from_pretrained()


def _obj(colour, shape, cx=0.5, cy=0.5, size=0.18):
    return ShapeObject(colour, shape, cx, cy, size, COLOURS[colour])


def _batch(*scenes, size=64):
    pixels = np.stack([render(Scene(tuple(objs)), size) for objs in scenes])  # [B, H, W, 3]
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W]


RED_CIRCLE = [_obj("red", "circle", 0.3)]
PAIR = [_obj("red", "circle", 0.25, 0.4, 0.13), _obj("blue", "square", 0.75, 0.6, 0.13)]


def test_bundled_weights_are_small_and_load(reward):
    size = sum(os.path.getsize(os.path.join(DEFAULT_FOLDER, f)) for f in os.listdir(DEFAULT_FOLDER))
    assert size < 2_000_000
    assert sum(p.numel() for p in reward.parameters()) < 1_000_000
    assert not any(p.requires_grad for p in reward.parameters())


@pytest.mark.parametrize(
    "prompt, high",
    [
        ("a red circle", True),
        ("a circle", True),
        ("a red shape", True),
        ("a shape", True),
        ("A Red Circle.", True),
        ("a blue circle", False),
        ("a red square", False),
        ("a triangle", False),
        ("a green shape", False),
        ("a red circle and a blue square", False),  # one object only
    ],
)
def test_single_object_prompts(reward, prompt, high):
    r = reward(_batch(RED_CIRCLE), [prompt])
    assert (r.item() > 0.9) if high else (r.item() < 0.1), (prompt, r.item())


@pytest.mark.parametrize(
    "prompt, high",
    [
        ("a red circle to the left of a blue square", True),
        ("a blue square to the right of a red circle", True),
        ("a blue square and a red circle", True),
        ("a red shape and a square", True),
        ("a red circle to the right of a blue square", False),
        ("a blue square to the left of a red circle", False),
        ("a green square and a red circle", False),
        ("a red circle and a red circle", False),
        ("a red circle", False),  # two objects shown
    ],
)
def test_two_object_prompts_and_relations(reward, prompt, high):
    r = reward(_batch(PAIR), [prompt])
    assert (r.item() > 0.9) if high else (r.item() < 0.1), (prompt, r.item())


def test_empty_prompt_is_constant(reward):
    assert torch.equal(reward(_batch(RED_CIRCLE, PAIR), ["", ""]), torch.ones(2))


def test_agrees_with_judge_on_random_true_and_false_captions(reward):
    rng = np.random.default_rng(7)
    scenes = [sample_scene(rng) for _ in range(48)]
    caps = [
        sample_caption(s if i % 2 == 0 else sample_scene(rng), rng, CaptionProbs(empty=0.0))
        for i, s in enumerate(scenes)
    ]
    x = _batch(*[s.objects for s in scenes])
    judge = prompt_correct(x, caps)
    assert 0.3 < judge.mean() < 0.8  # both kinds present
    with torch.no_grad():
        agree = ((reward(x, caps) > 0.5).numpy() == judge).mean()
    assert agree >= 0.95


def test_resized_input_scores_like_native(reward):
    caps = ["a red circle", "a red circle to the left of a blue square"]
    big = reward(_batch(RED_CIRCLE, PAIR, size=128), caps)
    assert (big > 0.9).all()
    assert torch.allclose(big, reward(_batch(RED_CIRCLE, PAIR), caps), atol=0.1)


@pytest.mark.parametrize("log_prob", [False, True])
def test_gradient_flows_to_images(log_prob):
    reward = ShapeWorldReward.from_pretrained(log_prob=log_prob)
    images = _batch(RED_CIRCLE, PAIR).requires_grad_()
    reward(images, ["a blue circle", "a red circle to the left of a blue square"]).sum().backward()
    g = images.grad
    assert g is not None and torch.isfinite(g).all()
    assert (g.flatten(1).abs().sum(1) > 0).all()  # every image gets a gradient


def test_batch_equals_single_calls(reward):
    images = _batch(RED_CIRCLE, PAIR, [_obj("green", "triangle", 0.7)], PAIR)
    prompts = ["a red circle", "a circle and a square", "a green triangle", "a blue square to the left of a shape"]
    batched = reward(images, prompts)
    singles = torch.cat([reward(images[i : i + 1], [p]) for i, p in enumerate(prompts)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "images, prompts, error, words",
    [
        (np.zeros((1, 3, 64, 64)), ["a shape"], TypeError, "torch.Tensor"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ["a shape"], TypeError, "float"),
        (torch.zeros(3, 64, 64), ["a shape"], ValueError, "[B, 3, H, W]"),
        (torch.zeros(1, 64, 64, 3), ["a shape"], ValueError, "permute"),
        (torch.full((1, 3, 64, 64), 255.0), ["a shape"], ValueError, "[0, 1]"),
        (torch.full((1, 3, 64, 64), float("nan")), ["a shape"], ValueError, "[0, 1]"),
        (torch.zeros(2, 3, 64, 64), ["a shape"], ValueError, "1 prompts for 2 images"),
        (torch.zeros(1, 3, 64, 64), "a shape", TypeError, "list of str"),
        (torch.zeros(1, 3, 64, 64), [3], TypeError, "str"),
        (torch.zeros(1, 3, 64, 64), ["a purple circle"], ValueError, "purple"),
    ],
)
def test_bad_inputs_raise_clear_errors(reward, images, prompts, error, words):
    with pytest.raises(error) as info:
        reward(images, prompts)
    assert words in str(info.value)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="shapeworld_reward.train"):
        ShapeWorldReward.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------- the formula


def _outcome_objects(layout, cl, sl, cr, sr):
    def obj(c, s, cx):
        return DetectedObject(c, s, cx, 0.5, 100, 0.8, 1.0)

    left, right = obj(cl, sl, 0.25), obj(cr, sr, 0.75)
    return {
        "none": [],
        "left": [left],
        "right": [right],
        "both": [left, right],
        "other": [left, obj(cl, sl, 0.3), right],
    }[layout]


PROMPTS = [
    "",
    "a red circle",
    "a circle",
    "a blue shape",
    "a shape",
    "a red circle and a blue square",
    "a circle and a circle",
    "a red shape and a circle",
    "a green square to the left of a triangle",
    "a shape to the right of a yellow shape",
    "a blue triangle and a shape",
]


def _simplex(n):
    return st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n).map(lambda v: torch.tensor(v) / sum(v))


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(PROMPTS), _simplex(5), _simplex(4), _simplex(3), _simplex(4), _simplex(3))
def test_caption_probability_is_the_judge_rule_in_expectation(prompt, lay, cl, sl, cr, sr):
    """Enumerate every outcome of independent heads and sum the probability of those the judge accepts."""
    probs = {
        "layout": lay[None],
        "colour_left": cl[None],
        "shape_left": sl[None],
        "colour_right": cr[None],
        "shape_right": sr[None],
    }
    kind, cm, sm = spec_masks(parse_caption(prompt))
    got = caption_probability(probs, torch.tensor([KINDS.index(kind)]), cm[None], sm[None]).item()
    want = 0.0
    for (li, lname), a, b, c, d in itertools.product(enumerate(LAYOUTS), range(4), range(3), range(4), range(3)):
        objs = _outcome_objects(lname, COLOUR_NAMES[a], SHAPES[b], COLOUR_NAMES[c], SHAPES[d])
        if caption_satisfied(objs, prompt):
            want += float(lay[li] * cl[a] * sl[b] * cr[c] * sr[d])
    assert got == pytest.approx(want, abs=1e-5)


def test_third_object_measurement_scores_three_object_images_against_two_object_captions():
    from experiments.shapeworld_reward.train import THIRD_OBJECT_SIZES, measure_third_object

    seen = []

    def always(value):
        def reward(images, prompts):
            seen.append((images.shape, prompts))
            return torch.full((len(prompts),), value)

        return reward

    passes = measure_third_object(always(1.0), np.random.default_rng(0), n=20)
    fails = measure_third_object(always(0.0), np.random.default_rng(0), n=20)
    for key in THIRD_OBJECT_SIZES:
        assert passes[f"third_{key}_reward_pass"] == 1.0 and fails[f"third_{key}_reward_pass"] == 0.0
        assert passes[f"third_{key}_judge_true"] < 0.5  # the judge sees the third object in most images
    shape, prompts = seen[0]
    from negguide.shapeworld.world import caption_kind

    assert shape == (20, 3, 64, 64) and all(caption_kind(p) != "one-object" for p in prompts)


def test_third_size_default_keeps_the_bundled_data_and_other_sizes_change_it():
    from experiments.shapeworld_reward.train import PAIR_SIZE_RANGE, main, sample_batch

    default, layout = sample_batch(np.random.default_rng(3), 64)[:2]
    assert torch.equal(default, sample_batch(np.random.default_rng(3), 64, third_size=PAIR_SIZE_RANGE)[0])
    small = sample_batch(np.random.default_rng(3), 64, third_size=(0.04, 0.07))[0]
    changed = [i for i in range(64) if not torch.equal(default[i], small[i])]
    # from the first "other" image (layout 4) on: its third object, then the shifted random stream
    assert changed and layout[changed[0]] == 4 and all(layout[i] != 4 for i in range(changed[0]))
    for bad in ("0.1", "0.3,0.4", "0.1,0.05", "a,b"):
        with pytest.raises(SystemExit):
            main(["--third-size", bad, "--steps", "1"])


def test_twin_object_shares_colour_and_half_and_the_judge_rejects_twinned_pairs():
    from experiments.shapeworld_reward.train import _twin_object, measure_twin
    from negguide.shapeworld.world import sample_scene

    rng = np.random.default_rng(1)
    same_shape = 0
    for _ in range(100):
        scene = sample_scene(rng, two_object_prob=1.0)
        twin = _twin_object(rng, scene)
        model = next(o for o in scene.objects if o.half == twin.half)
        assert twin.colour == model.colour
        same_shape += twin.shape == model.shape
    assert 60 <= same_shape < 100  # mostly, not always, the same shape
    always_pass = measure_twin(lambda images, prompts: torch.ones(len(prompts)), np.random.default_rng(0), n=40)
    assert always_pass["twin_reward_pass"] == 1.0 and always_pass["twin_judge_true"] < 0.2


def test_other_training_images_are_rejected_by_the_judge_for_every_caption():
    from experiments.shapeworld_reward.train import _other_image
    from negguide.shapeworld.judge import detect_objects

    rng = np.random.default_rng(2)
    readings = [detect_objects(_other_image(rng)) for _ in range(60)]
    # three objects, or two in one half: no caption (one or two objects, one a half) can hold
    rejected = [len(objs) >= 3 or (len(objs) == 2 and objs[0].half == objs[1].half) for objs in readings]
    assert np.mean(rejected) >= 0.9
