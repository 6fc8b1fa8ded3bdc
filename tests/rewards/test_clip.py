"""CLIP-score / PickScore rewards on a tiny random CLIP built from configs, and the weighted reward sum."""

import json
import math

import numpy as np
import pytest
import torch

from negguide.rewards import CLIPScoreReward, PickScoreReward, WeightedReward, check_reward_output
from negguide.rewards.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, preprocess_images
from negguide.testing.tokenizers import build_clip_tokenizer

WORDS = "a photo of red green blue circle square cat dog".split()
MAX_LEN = 16
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def tiny_clip(seed: int = 0):
    """A seeded random CLIPModel (hidden 32, 2 layers, 32x32 images in 8x8 patches) and its tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = build_clip_tokenizer(WORDS, model_max_length=MAX_LEN)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        num_channels=3,
    )
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    return model, tokenizer


@pytest.fixture(scope="module")
def parts():
    return tiny_clip()


@pytest.fixture(scope="module")
def reward(parts):
    return CLIPScoreReward(*parts, MEAN, STD)


def _images(n: int, size=(32, 32), seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


PROMPTS = ["a red circle", "a photo of a dog", "a blue square"]


def test_matches_transformers_clip_forward(parts):
    """logit_scale * cos equals the diagonal of CLIPModel's own logits_per_image (computed independently)."""
    model, tokenizer = parts
    reward = CLIPScoreReward(model, tokenizer, MEAN, STD, scale="logit_scale")
    images = _images(3)
    out = reward(images, PROMPTS)
    assert out.shape == (3,) and out.dtype == torch.float32
    tokens = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    pixels = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels
        ).logits_per_image  # [B, B]
    torch.testing.assert_close(out.detach(), logits.diagonal(), atol=1e-4, rtol=1e-4)


def test_default_scale_is_cosine_and_scale_clamp_options(parts, reward):
    images = _images(3, seed=1)
    cos = reward(images, PROMPTS).detach()
    assert (cos.abs() <= 1 + 1e-5).all()
    torch.testing.assert_close(cos, reward.similarity(images, PROMPTS).detach())
    clip_score = CLIPScoreReward(*parts, MEAN, STD, scale=100, clamp=True)
    torch.testing.assert_close(clip_score(images, PROMPTS).detach(), 100 * cos.clamp_min(0))
    pick = PickScoreReward(*parts, MEAN, STD)
    assert pick.scale == "logit_scale"
    torch.testing.assert_close(pick(images, PROMPTS).detach(), parts[0].logit_scale.detach().exp() * cos)


def test_differentiable_wrt_images_with_frozen_model(reward):
    images = _images(3, seed=2).requires_grad_()
    reward(images, PROMPTS).sum().backward()
    g = images.grad
    assert g is not None and torch.isfinite(g).all()
    assert (g.flatten(1).abs().sum(1) > 0).all()  # every image gets a gradient
    assert not any(p.requires_grad for p in reward.parameters())
    assert all(p.grad is None for p in reward.parameters())
    reward.train()
    assert not reward.training and not reward.model.training


def test_identical_inputs_give_identical_scores(parts, reward):
    image = _images(1, seed=3)
    first = reward(image.repeat(3, 1, 1, 1), "a cat")  # one str is broadcast
    assert torch.equal(first, first[:1].expand(3))
    again = reward(image, ["a cat"])  # cached text embedding
    torch.testing.assert_close(again, first[:1])  # equal up to float order (batch size changes the kernels)
    uncached = CLIPScoreReward(*parts, MEAN, STD, text_cache_size=0)
    assert torch.equal(uncached(image, ["a cat"]), again)
    assert len(uncached._text_cache) == 0 and "a cat" in reward._text_cache
    reward.to(torch.float32)  # moving the module drops cached text embeddings (they could be on another device)
    assert len(reward._text_cache) == 0
    assert torch.equal(reward(image, ["a cat"]), again)


def test_batch_equals_single_calls(reward):
    images = _images(3, seed=4)
    batched = reward(images, PROMPTS)
    singles = torch.cat([reward(images[i : i + 1], [p]) for i, p in enumerate(PROMPTS)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


def test_gradient_ascent_moves_the_image_toward_its_prompt(reward):
    """From the same start, ascent toward prompt t raises its score, and the image pushed toward t prefers t over o
    more than the image pushed toward o does."""
    t, o = "a red circle", "a photo of a dog"
    logits = torch.logit(_images(1, seed=5).clamp(0.05, 0.95)).repeat(2, 1, 1, 1).requires_grad_()  # same start
    opt = torch.optim.Adam([logits], lr=0.05)

    def margin(x):  # score(t) - score(o) per image
        return reward(x, [t, t]) - reward(x, [o, o])

    with torch.no_grad():
        start_t = reward(torch.sigmoid(logits), [t, t])
    for _ in range(8):
        opt.zero_grad()
        (-reward(torch.sigmoid(logits), [t, o]).sum()).backward()  # image 0 toward t, image 1 toward o
        opt.step()
    with torch.no_grad():
        x = torch.sigmoid(logits)
        end_t, m = reward(x, [t, t]), margin(x)
    assert end_t[0] - start_t[0] > 0.05, (start_t, end_t)
    assert m[0] - m[1] > 0.01, m  # 0.12 here; positive for every model seed tried


def test_non_square_images_are_resized_and_center_cropped(reward):
    """[B,3,48,64] -> shortest edge 32 (32x42) -> center crop 32x32 (columns 5..36) -> (x - mean) / std."""
    images = _images(2, size=(48, 64), seed=6)
    resized = torch.nn.functional.interpolate(images, size=(32, 42), mode="bicubic", antialias=True)
    crop = resized[..., :, 5:37]
    pixels = preprocess_images(images, 32, MEAN, STD)
    assert pixels.shape == (2, 3, 32, 32)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(pixels, (crop - mean) / std)
    tall = preprocess_images(images.transpose(2, 3), 32, MEAN, STD)  # [2, 3, 64, 48]: crop the rows instead
    torch.testing.assert_close(tall, pixels.transpose(2, 3))
    assert reward(images, PROMPTS[:2]).shape == (2,)


def test_preprocessing_matches_clip_image_processor():
    """The torch preprocessing agrees with transformers' (PIL) CLIPImageProcessor up to uint8 rounding."""
    import warnings

    from transformers import CLIPImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = CLIPImageProcessor(
            size={"shortest_edge": 32},
            crop_size={"height": 32, "width": 32},
            image_mean=list(MEAN),
            image_std=list(STD),
        )
    rng = np.random.default_rng(0)
    # smooth images (PIL and torch bicubic differ most on pixel noise)
    base = rng.integers(0, 256, size=(6, 8, 3)).astype(np.float32)
    img = (
        torch.nn.functional.interpolate(torch.from_numpy(base).permute(2, 0, 1)[None], size=(45, 60), mode="bilinear")[
            0
        ]
        .permute(1, 2, 0)
        .round()
        .clamp(0, 255)
        .numpy()
    )
    img = img.astype(np.uint8)
    want = torch.as_tensor(np.asarray(proc(images=[img], return_tensors="np")["pixel_values"]))
    got = preprocess_images(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, 32, MEAN, STD)
    assert got.shape == want.shape == (1, 3, 32, 32)
    assert (got - want).abs().max() < 0.1  # ~ 2/255 in pixel units after /std


def test_save_pretrained_round_trip(parts, reward, tmp_path):
    model, tokenizer = parts
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    images = _images(3, size=(40, 40), seed=7)

    # no preprocessor_config.json: OpenAI CLIP mean/std, shortest edge = image size
    plain = CLIPScoreReward.from_pretrained(tmp_path)
    assert plain.mean == pytest.approx(OPENAI_CLIP_MEAN) and plain.std == pytest.approx(OPENAI_CLIP_STD)
    torch.testing.assert_close(plain(images, PROMPTS), CLIPScoreReward(model, tokenizer)(images, PROMPTS))

    # with a processor config: its mean, std and shortest edge are used
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "image_mean": list(MEAN),
                "image_std": list(STD),
                "size": {"shortest_edge": 36},
                "crop_size": {"height": 32, "width": 32},
            }
        )
    )
    loaded = CLIPScoreReward.from_pretrained(str(tmp_path), torch_dtype=torch.float32, device="cpu", scale=2.0)
    assert (loaded.mean, loaded.std, loaded.resize_size, loaded.scale) == (MEAN, STD, 36, 2.0)
    want = 2.0 * CLIPScoreReward(model, tokenizer, MEAN, STD, resize_size=36)(images, PROMPTS)
    torch.testing.assert_close(loaded(images, PROMPTS), want)

    pick = PickScoreReward.from_pretrained(tmp_path, processor=tmp_path)
    torch.testing.assert_close(
        pick(images, PROMPTS), PickScoreReward(model, tokenizer, MEAN, STD, resize_size=36)(images, PROMPTS)
    )


def test_from_pretrained_missing_folder_raises(tmp_path):
    with pytest.raises(OSError, match="local folder"):
        CLIPScoreReward.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "images, prompts, error, words",
    [
        (np.zeros((1, 3, 32, 32)), ["a cat"], TypeError, "torch.Tensor"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ["a cat"], TypeError, "float"),
        (torch.zeros(3, 32, 32), ["a cat"], ValueError, "[B, 3, H, W]"),
        (torch.zeros(1, 32, 32, 3), ["a cat"], ValueError, "permute"),
        (torch.full((1, 3, 32, 32), 255.0), ["a cat"], ValueError, "[0, 1]"),
        (torch.full((1, 3, 32, 32), float("nan")), ["a cat"], ValueError, "[0, 1]"),
        (torch.zeros(2, 3, 32, 32), ["a cat"], ValueError, "1 prompts for 2 images"),
        (torch.zeros(1, 3, 32, 32), None, TypeError, "list of str"),
        (torch.zeros(2, 3, 32, 32), ["a cat", 3], TypeError, "prompts[1]"),
    ],
)
def test_bad_inputs_raise_clear_errors(reward, images, prompts, error, words):
    with pytest.raises(error) as info:
        reward(images, prompts)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(scale="logits"), ValueError, "'logit_scale'"),
        (dict(scale=float("nan")), TypeError, "finite"),
        (dict(mean=(0.5, 0.5)), ValueError, "3 finite numbers"),
        (dict(std=(0.5, 0.0, 0.5)), ValueError, "positive"),
        (dict(resize_size=16), ValueError, "image_size=32"),
        (dict(max_length=100), ValueError, "max_position_embeddings"),
    ],
)
def test_bad_settings_raise_clear_errors(parts, kwargs, error, words):
    with pytest.raises(error) as info:
        CLIPScoreReward(*parts, **kwargs)
    assert words in str(info.value)
    with pytest.raises(TypeError, match="CLIPModel"):
        CLIPScoreReward(torch.nn.Linear(2, 2), parts[1])


# ----------------------------------------------------------------------------------------------- weighted sums


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def prompt_length(images, prompts):
    return torch.tensor([float(len(p)) for p in prompts])


def test_weighted_reward_sums_with_expected_numbers():
    images = torch.stack([torch.full((3, 4, 4), 0.25), torch.full((3, 4, 4), 0.5)])
    prompts = ["abc", "abcdef"]
    for combined in (
        WeightedReward({"bright": (brightness, 2.0), "len": (prompt_length, -0.5)}),
        WeightedReward([(brightness, 2.0), (prompt_length, -0.5)]),
    ):
        out = combined(images, prompts)
        torch.testing.assert_close(out, torch.tensor([2 * 0.25 - 0.5 * 3, 2 * 0.5 - 0.5 * 6]))
        names = list(combined.last)
        assert len(names) == 2
        torch.testing.assert_close(combined.last[names[0]], torch.tensor([0.25, 0.5]))
        torch.testing.assert_close(combined.last[names[1]], torch.tensor([3.0, 6.0]))
    assert list(WeightedReward([(brightness, 1), (brightness, 1)]).weights) == ["brightness", "brightness#2"]


def test_weighted_reward_zero_weight_is_log_only_and_default_weight_is_one():
    images = torch.rand(2, 3, 4, 4, requires_grad=True)
    combined = WeightedReward({"bright": brightness, "len": (prompt_length, 0)})
    out = combined(images, ["a", "bb"])
    torch.testing.assert_close(out, brightness(images, None))
    torch.testing.assert_close(combined.last["len"], torch.tensor([1.0, 2.0]))
    out.sum().backward()
    torch.testing.assert_close(images.grad, torch.full_like(images, 1 / 48))


def test_weighted_clip_rewards_are_differentiable_and_registered(parts, reward):
    pick = PickScoreReward(*parts, MEAN, STD)
    combined = WeightedReward({"clip": (reward, 2.0), "pick": (pick, 0.01)})
    assert list(combined.components) == [reward, pick]  # registered: .to()/.parameters() reach them
    images = _images(3, seed=8).requires_grad_()
    out = combined(images, PROMPTS)
    torch.testing.assert_close(out, 2.0 * reward(images, PROMPTS) + 0.01 * pick(images, PROMPTS))
    out.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "component, error, words",
    [
        (lambda im, pr: torch.zeros(len(pr), 1), ValueError, "'bad' returned shape (2, 1)"),
        (lambda im, pr: torch.zeros(3), ValueError, "'bad' returned shape (3,)"),
        (lambda im, pr: torch.tensor([0.0, math.nan]), ValueError, "'bad' returned non-finite"),
        (lambda im, pr: torch.tensor([0.0, math.inf]), ValueError, "'bad' returned non-finite"),
        (lambda im, pr: torch.tensor([1, 2]), TypeError, "'bad' returned a tensor of dtype torch.int64"),
        (lambda im, pr: [1.0, 2.0], TypeError, "'bad' returned list"),
    ],
)
def test_weighted_reward_rejects_bad_component_outputs(component, error, words):
    combined = WeightedReward({"good": brightness, "bad": (component, 1.0)})
    with pytest.raises(error) as info:
        combined(torch.rand(2, 3, 4, 4), ["a", "b"])
    assert words in str(info.value)


@pytest.mark.parametrize(
    "rewards, error, words",
    [
        ({}, ValueError, "at least one"),
        ([], ValueError, "at least one"),
        ({"x": (brightness, math.nan)}, ValueError, "weight of reward 'x'"),
        ({"x": (brightness, "1")}, TypeError, "weight of reward 'x'"),
        ({"x": (brightness, True)}, TypeError, "weight of reward 'x'"),
        ({"x": 3.0}, TypeError, "callable"),
        ([brightness], TypeError, "(reward, weight)"),
        ([("a", brightness, 1), ("a", brightness, 1)], ValueError, "used twice"),
        (brightness, TypeError, "dict"),
    ],
)
def test_weighted_reward_rejects_bad_construction(rewards, error, words):
    with pytest.raises(error) as info:
        WeightedReward(rewards)
    assert words in str(info.value)


def test_check_reward_output_returns_the_value():
    value = torch.tensor([0.5, 1.0])
    assert check_reward_output(value, 2, "r") is value
    with pytest.raises(ValueError, match=r"reshape it with value.reshape\(2\)"):
        check_reward_output(value[None], 2, "r")
