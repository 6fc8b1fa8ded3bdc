"""The judged comparison of negatives on ShapeWorld (``python -m experiments.reneg_comparison.compare``): per-image samples
that pair up across rows, the command's rows and flags, pooling and re-judging its own files. The statistics alone:
test_reneg_comparison_results.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from experiments.reneg_comparison.compare import judge_negatives
from experiments.reneg_comparison.results import gap_table

pytestmark = pytest.mark.slow  # runs the bundled ShapeWorld model end to end

SD_MODEL = os.path.join(os.path.dirname(__file__), "..", "..", "assets", "shapeworld", "sd")


def test_judge_negatives_rows_share_noise_so_identical_negatives_pair_exactly():
    from negguide.rewards import ShapeWorldReward
    from negguide.shapeworld.bench import load_bench_pipeline

    pipe = load_bench_pipeline()
    reward = ShapeWorldReward.from_pretrained()
    prompts = ["a red circle", "a blue square to the left of a green triangle"]
    negatives = {
        "empty": {"negative_prompt": ""},
        "empty again": {"negative_prompt": ""},
        "other": {"negative_prompt": "a red circle"},
    }
    with torch.no_grad():
        results = judge_negatives(pipe, reward, prompts, negatives, seeds=(5,), images_per_prompt=2, steps=3)
    for r in results.values():
        assert r["images"] == 4 and r["samples"]["prompt"] == [0, 0, 1, 1]
        assert r["prompt accuracy"] == pytest.approx(np.mean(r["samples"]["correct"]))
        assert r["two-object accuracy"] == pytest.approx(np.mean(r["samples"]["correct"][2:]))
    rows = {name: (acc, rew) for name, _, acc, _, rew, _ in gap_table(results, "empty")}
    assert rows["empty again"] == (0.0, 0.0)  # same noise, same negative: the same images
    assert rows["other"][1] != 0.0  # a different negative changes the images and so the reward


def test_comparison_command_end_to_end_with_per_sample(tmp_path, capsys):
    import json

    from experiments.reneg_comparison.compare import main

    out = tmp_path / "compare.json"
    main(
        [
            "--prompts",
            "1",
            "--seeds",
            "1",
            "--per-sample",
            "--per-sample-steps",
            "1",
            "--per-sample-batch",
            "2",
            "--per-sample-confirm",
            "2",
            "--per-sample-reward",
            "log-probability",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "of 1 prompts" in printed and "| ReNeg per-sample | ReNeg global |" in printed
    assert "| negative | failures | < 0.1 | 0.1-0.5 | 0.5-0.9 | >= 0.9 |" in printed
    results = json.loads(out.read_text())
    assert list(results) == ["empty negative", 'hand-written "a shape and a shape"', "ReNeg global", "ReNeg per-sample"]
    assert all(r["images"] == 4 and 0.0 <= r["prompt accuracy"] <= 1.0 for r in results.values())


def test_baselines_flag_judges_only_the_rows_asked_and_leaves_them_unchanged(tmp_path, capsys):
    import json

    from experiments.reneg_comparison.compare import main

    full, fewer = tmp_path / "full.json", tmp_path / "fewer.json"
    common = ["--prompts", "1", "--seeds", "1", "--sampling-steps", "3"]
    main(common + ["--out", str(full)])
    main(common + ["--baselines", "hand-written", "--out", str(fewer)])
    capsys.readouterr()
    full, fewer = json.loads(full.read_text()), json.loads(fewer.read_text())
    assert list(fewer) == ['hand-written "a shape and a shape"', "ReNeg global"]
    for name in fewer:  # every row sees the same noise, so dropping one row changes no other
        assert fewer[name]["samples"] == full[name]["samples"]
    with pytest.raises(SystemExit):
        main(common + ["--baselines", "plain"])
    assert "invalid choice: 'plain'" in capsys.readouterr().err


def test_per_sample_reward_takes_the_short_names_or_train_reneg_reward_specs(tmp_path, capsys):
    from experiments.reneg_comparison.compare import main, per_sample_tuning_reward
    from negguide.rewards.combine import WeightedReward
    from negguide.shapeworld.reward import DEFAULT_FOLDER, ShapeWorldReward

    assert per_sample_tuning_reward(None).log_prob is False  # default: the judged probability
    assert per_sample_tuning_reward(["log-probability"]).log_prob is True
    assert isinstance(per_sample_tuning_reward(["shapeworld-log"]), ShapeWorldReward)
    both = per_sample_tuning_reward(["shapeworld-log@0.5", f"log-probability={DEFAULT_FOLDER}@0.5"])
    assert isinstance(both, WeightedReward)
    images, prompts = torch.rand(2, 3, 64, 64), ["a red circle", "a blue square"]
    single = per_sample_tuning_reward(["log-probability"])(images, prompts)
    torch.testing.assert_close(both(images, prompts), single)  # the same classifier twice, half each
    for bad, message in (
        (["nonsense"], "unknown reward 'nonsense'"),
        ([f"shapeworld-log={tmp_path}"], "no ShapeWorld reward weights"),
        (["log-probability@0.5", "shapeworld-log@0.5"], "given twice"),
    ):
        with pytest.raises(SystemExit):
            main(["--per-sample", "--prompts", "1", "--seeds", "1", *[f"--per-sample-reward={b}" for b in bad]])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--prompts", "1", "--per-sample-reward", "log-probability"])
    assert "pass --per-sample with it" in capsys.readouterr().err


def test_sequence_options_only_for_families_with_t5_tokens():
    from types import SimpleNamespace

    from negguide.shapeworld.bench import sequence_kwargs

    assert sequence_kwargs(SimpleNamespace(family="sd3")) == {"max_sequence_length": 0}
    assert sequence_kwargs(SimpleNamespace(family="flux")) == {"max_sequence_length": 0}
    assert sequence_kwargs(SimpleNamespace(family="sd")) == {}

    class PlainSD3:  # a diffusers pipeline without negguide's family: read from its call's parameters
        def __call__(self, prompt, max_sequence_length=256):
            pass

    class PlainSD:
        def __call__(self, prompt, clip_skip=None):
            pass

    assert sequence_kwargs(PlainSD3()) == {"max_sequence_length": 0}
    assert sequence_kwargs(PlainSD()) == {}


def test_comparison_command_without_a_bundled_embedding_for_the_family_asks_for_one(monkeypatch, capsys):
    from experiments.reneg_comparison import compare as shapeworld

    monkeypatch.setattr(shapeworld, "BUNDLED_EMBEDDINGS", {"sd": shapeworld.BUNDLED_EMBEDDINGS["sd"]})
    with pytest.raises(SystemExit):
        shapeworld.main(["--prompts", "1", "--seeds", "1"])  # the bundled SD3 model, its embedding "missing"
    assert "no bundled embedding for a sd3 model; pass --embedding" in capsys.readouterr().err


def test_comparison_command_on_the_sd_unet_model_uses_its_own_bundled_embedding(tmp_path, capsys):
    import json

    from experiments.reneg_comparison.compare import main
    from negguide.shapeworld.prompts import shapeworld_prompts

    out, grid = tmp_path / "compare_sd.json", tmp_path / "grid.png"
    main(
        [
            "--model",
            SD_MODEL,
            "--prompts",
            "2",
            "--seeds",
            "1",
            "--split",
            "train",
            "--grid",
            str(grid),
            "--out",
            str(out),
        ]
    )
    assert "2 training prompts x 1 seeds" in capsys.readouterr().out and grid.exists()
    assert set(shapeworld_prompts(2, "train", seed=1)).isdisjoint(shapeworld_prompts(100, "heldout", seed=1))
    results = json.loads(out.read_text())
    assert list(results)[-1] == "ReNeg global" and all(r["images"] == 8 for r in results.values())
    # the learned embedding changes the images: its rewards differ from the empty negative's
    assert results["ReNeg global"]["samples"]["reward"] != results["empty negative"]["samples"]["reward"]


def test_comparison_command_gives_each_of_several_embeddings_a_row(tmp_path, capsys):
    import json
    import shutil

    from experiments.reneg_comparison.compare import main
    from negguide.shapeworld.assets import BUNDLED_EMBEDDINGS

    bundled = BUNDLED_EMBEDDINGS["sd"]
    copy = str(tmp_path / "copy.safetensors")
    shutil.copy(bundled, copy)
    out = tmp_path / "rows.json"
    main(
        [
            "--model",
            SD_MODEL,
            "--prompts",
            "1",
            "--seeds",
            "1",
            "--split",
            "train",
            "--embedding",
            bundled,
            copy,
            "--out",
            str(out),
        ]
    )
    results = json.loads(out.read_text())
    rows = [f"ReNeg global ({bundled})", f"ReNeg global ({copy})"]
    assert list(results)[2:] == rows
    # the same tensors under two names: the same noise gives the same images, hence the same rewards
    assert results[rows[0]]["samples"]["reward"] == results[rows[1]]["samples"]["reward"]
    assert f"| ReNeg global ({copy}) | ReNeg global ({bundled}) | +0.000" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--model", SD_MODEL, "--embedding", bundled, bundled])
    assert "--embedding names a file twice" in capsys.readouterr().err


def test_comparison_grid_has_a_row_per_prompt_and_a_block_per_negative(tmp_path):
    from PIL import Image

    from experiments.reneg_comparison.compare import comparison_grid

    images = {name: [torch.rand(4, 3, 16, 16) for _ in range(3)] for name in ("empty", "learned")}
    path = comparison_grid(
        ["a red circle", "a shape", "a blue square above a green triangle"],
        images,
        str(tmp_path / "sub" / "grid.png"),
        per_negative=2,
        scale=2,
    )
    grid = Image.open(path)
    # label column 250 + 2 negatives x (2 images x (32 + 2) + 12); header 18 + 3 rows x (32 + 12 + 4)
    assert grid.size == (250 + 2 * (2 * 34 + 12), 18 + 3 * 48)
    pixels = np.asarray(grid.convert("RGB"))
    tile = (images["learned"][1][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    x, y = 250 + (2 * 34 + 12), 18 + 48  # "learned", second prompt, first image (nearest-neighbour x2)
    assert np.array_equal(pixels[y : y + 32 : 2, x : x + 32 : 2], tile)


def test_comparison_command_samples_with_the_given_steps_and_guidance(tmp_path, capsys):
    import json

    from experiments.reneg_comparison.compare import main

    rewards = {}
    for steps in (3, 4):
        out = tmp_path / f"steps{steps}.json"
        main(
            [
                "--model",
                SD_MODEL,
                "--prompts",
                "1",
                "--seeds",
                "1",
                "--split",
                "train",
                "--sampling-steps",
                str(steps),
                "--guidance-scale",
                "2",
                "--out",
                str(out),
            ]
        )
        assert f"guidance 2, {steps} sampling steps" in capsys.readouterr().out
        rewards[steps] = json.loads(out.read_text())["empty negative"]["samples"]["reward"]
    assert rewards[3] != rewards[4]  # the flag reaches the pipeline: other steps, other images
    with pytest.raises(SystemExit):
        main(["--model", SD_MODEL, "--sampling-steps", "10", "--per-sample", "--per-sample-late-steps", "12"])
    assert "--per-sample-late-steps 12 exceeds --sampling-steps 10" in capsys.readouterr().err


def test_comparison_command_pools_its_own_json_files(tmp_path, capsys):
    import json

    from experiments.reneg_comparison.compare import main

    paths = []
    for first in (100, 200):
        paths.append(str(tmp_path / f"s{first}.json"))
        main(
            [
                "--model",
                SD_MODEL,
                "--prompts",
                "1",
                "--seeds",
                "1",
                "--split",
                "train",
                "--first-seed",
                str(first),
                "--sampling-steps",
                "3",
                "--out",
                paths[-1],
            ]
        )
        assert f"1 seeds (from {first})" in capsys.readouterr().out
    rows = [json.loads(open(p).read()) for p in paths]
    assert rows[0]["empty negative"]["prompts"] == rows[1]["empty negative"]["prompts"]
    assert (
        rows[0]["empty negative"]["samples"]["reward"] != rows[1]["empty negative"]["samples"]["reward"]
    )  # other noise
    main(["--pool", *paths])
    printed = capsys.readouterr().out
    assert printed.startswith("pooled: ") and "| ReNeg global | empty negative |" in printed


def test_comparison_command_saves_its_images_and_rejudges_them_to_the_same_verdicts(tmp_path, capsys):
    import json

    from PIL import Image

    from experiments.reneg_comparison.compare import main

    out, images, again = (str(tmp_path / name) for name in ("run.json", "run.npz", "again.json"))
    sampled_grid, saved_grid = str(tmp_path / "sampled.png"), str(tmp_path / "saved.png")
    main(
        [
            "--model",
            SD_MODEL,
            "--prompts",
            "2",
            "--seeds",
            "1",
            "--split",
            "train",
            "--sampling-steps",
            "3",
            "--out",
            out,
            "--save-images",
            images,
            "--grid",
            sampled_grid,
            "--grid-prompts",
            "2",
        ]
    )
    main(["--rejudge", out, images, "--out", again, "--grid", saved_grid, "--grid-prompts", "2"])
    assert "judged again from" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(sampled_grid)), np.asarray(Image.open(saved_grid)))  # same picture
    first, second = json.loads(open(out).read()), json.loads(open(again).read())
    assert list(first) == list(second) and all(first[k]["samples"] == second[k]["samples"] for k in first)
    assert np.load(images)["row0"].shape == (8, 64, 64, 3)  # 2 prompts x 1 seed x 4 images
    with pytest.raises(SystemExit):
        main(["--save-images", str(tmp_path / "images.png")])
    assert "must end in .npz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--rejudge", out, images, "--pool", out, again])
    assert "pass one of them" in capsys.readouterr().err
