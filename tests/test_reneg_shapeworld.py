"""The judged comparison of negatives on ShapeWorld: per-image samples that pair up across rows, and the paired
gaps with a prompt-clustered standard error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from negguide.reneg.shapeworld import gap_table, judge_negatives, paired_gap


def test_paired_gap_mean_and_prompt_clustered_standard_error():
    a = [1, 1, 0, 1, 0, 0]
    b = [0, 1, 0, 0, 0, 1]
    groups = [0, 0, 1, 1, 2, 2]
    gap, se = paired_gap(a, b, groups)
    # per-prompt mean gaps: 0.5, 0.5, -0.5
    per_group = np.array([0.5, 0.5, -0.5])
    assert gap == pytest.approx(1 / 6)
    assert se == pytest.approx(per_group.std(ddof=1) / math.sqrt(3))


def test_paired_gap_of_identical_rows_is_zero_with_zero_error():
    gap, se = paired_gap([0.3, 0.7, 0.1], [0.3, 0.7, 0.1], [0, 1, 2])
    assert gap == 0.0 and se == 0.0


def test_paired_gap_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="equal-length"):
        paired_gap([1, 0], [1], [0, 1])
    with pytest.raises(ValueError, match="non-empty"):
        paired_gap([], [], [])


def test_gap_table_pairs_every_row_with_the_reference():
    results = {
        "empty": {"samples": {"correct": [0, 0, 1, 0], "reward": [0.1, 0.2, 0.9, 0.3], "prompt": [0, 0, 1, 1]}},
        "learned": {"samples": {"correct": [1, 0, 1, 1], "reward": [0.5, 0.2, 0.9, 0.7], "prompt": [0, 0, 1, 1]}},
    }
    (row,) = gap_table(results, "empty")
    name, reference, acc, acc_se, rew, rew_se = row
    assert (name, reference) == ("learned", "empty")
    assert acc == pytest.approx(0.5)
    assert rew == pytest.approx(0.2)
    assert acc_se == pytest.approx(0.0) and rew_se == pytest.approx(0.0)  # both prompts gain the same


def test_judge_negatives_rows_share_noise_so_identical_negatives_pair_exactly():
    from negguide.rewards import ShapeWorldReward
    from negguide.shapes.bench import load_bench_pipeline

    pipe = load_bench_pipeline()
    reward = ShapeWorldReward.from_pretrained()
    prompts = ["a red circle", "a blue square to the left of a green triangle"]
    negatives = {"empty": {"negative_prompt": ""}, "empty again": {"negative_prompt": ""},
                 "other": {"negative_prompt": "a red circle"}}
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

    from negguide.reneg.shapeworld import main

    out = tmp_path / "compare.json"
    main(["--prompts", "1", "--seeds", "1", "--per-sample", "--per-sample-steps", "1", "--per-sample-batch", "2",
          "--per-sample-confirm", "2", "--per-sample-reward", "log-probability", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "of 1 prompts" in printed and "| ReNeg per-sample | ReNeg global |" in printed
    results = json.loads(out.read_text())
    assert list(results) == ["empty negative", 'hand-written "a shape and a shape"', "ReNeg global", "ReNeg per-sample"]
    assert all(r["images"] == 4 and 0.0 <= r["prompt accuracy"] <= 1.0 for r in results.values())
