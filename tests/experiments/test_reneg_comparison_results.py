"""The judged comparison's statistics (comparison_results): paired gaps clustered by caption, pooling, re-judging
saved images, and gaps by the reference's level."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.reneg_comparison.results import failure_reward_bins, gap_table, paired_gap


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


def test_failure_reward_bins_count_only_judged_failures_by_their_reward():
    samples = {
        "correct": [False, False, True, False, False, True],
        "reward": [0.05, 0.3, 0.01, 0.95, 0.9, 0.99],
        "prompt": [0, 0, 0, 1, 1, 1],
    }
    assert failure_reward_bins({"row": {"samples": samples}}) == {"row": [1, 1, 0, 2]}  # 0.9 falls in ">= 0.9"
    assert failure_reward_bins({"row": {"samples": samples}}, bins=(0.5,)) == {"row": [2, 2]}


def _row(correct, reward, prompt_index, prompts):
    return {
        "prompt accuracy": float(np.mean(correct)),
        "two-object accuracy": None,
        "reward": float(np.mean(reward)),
        "images": len(correct),
        "prompts": prompts,
        "samples": {"correct": correct, "reward": reward, "prompt": prompt_index},
    }


def test_pool_results_concatenates_rows_and_clusters_a_caption_shared_by_two_files():
    from experiments.reneg_comparison.results import gap_table, pool_results

    a = {
        "empty": _row([True, False], [0.9, 0.1], [0, 1], ["a red circle", "a shape and a shape"]),
        "learned": _row([True, True], [0.95, 0.8], [0, 1], ["a red circle", "a shape and a shape"]),
        "only here": _row([True, True], [1.0, 1.0], [0, 1], ["a red circle", "a shape and a shape"]),
    }
    b = {
        "empty": _row([False, True], [0.2, 0.7], [0, 1], ["a blue square", "a red circle"]),
        "learned": _row([True, True], [0.6, 0.9], [0, 1], ["a blue square", "a red circle"]),
    }
    pooled = pool_results([a, b])
    assert list(pooled) == ["empty", "learned"]  # rows both files have, in the first file's order
    s = pooled["learned"]["samples"]
    assert s["correct"] == [True, True, True, True] and s["prompt"] == [0, 1, 2, 0]  # "a red circle" is one cluster
    assert pooled["empty"]["prompt accuracy"] == 0.5 and pooled["learned"]["images"] == 4
    assert pooled["empty"]["two-object accuracy"] == 0.0  # "a shape and a shape": the one two-object image, failed
    ((_, _, acc, acc_se, _, _),) = gap_table(pooled, "empty")
    assert acc == 0.5 and acc_se > 0  # three caption clusters with gaps 0, 1 (a shape and a shape), 1 (blue square)
    with pytest.raises(ValueError, match="share no row name"):
        pool_results([{"x": a["empty"]}, {"y": b["empty"]}])
    with pytest.raises(ValueError, match="no 'prompts'"):
        pool_results([{"empty": {k: v for k, v in a["empty"].items() if k != "prompts"}}, b])


def test_rejudge_results_reads_saved_images_again_and_keeps_the_rewards(tmp_path):
    from experiments.reneg_comparison.results import load_row_images, rejudge_results, save_row_images
    from negguide.shapeworld.world import describe, render, sample_scene

    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng, two_object_prob=0.0) for _ in range(3)]
    prompts = [describe(s.objects[0]) for s in scenes]
    pixels = np.stack([render(s) for s in scenes])  # uint8 [3, 64, 64, 3], each showing its caption
    stale = _row([False, True, False], [0.1, 0.2, 0.3], [0, 1, 2], prompts)  # an earlier judge's verdicts
    path = save_row_images({"a row": pixels}, str(tmp_path / "images.npz"))
    loaded = load_row_images(path)
    assert list(loaded) == ["a row"] and np.array_equal(loaded["a row"], pixels)
    row = rejudge_results({"a row": stale}, loaded)["a row"]
    assert row["samples"]["correct"] == [True, True, True] and row["prompt accuracy"] == 1.0
    assert row["samples"]["reward"] == [0.1, 0.2, 0.3] and row["prompts"] == prompts
    with pytest.raises(ValueError, match="no saved images for row 'other'"):
        rejudge_results({"other": stale}, loaded)
    with pytest.raises(ValueError, match="3 judgements but 2 saved images"):
        rejudge_results({"a row": stale}, {"a row": pixels[:2]})


def test_rejudge_with_a_smaller_smallest_object_counts_a_speck_as_an_extra_object(tmp_path, capsys):
    import json

    from experiments.reneg_comparison.compare import main
    from experiments.reneg_comparison.results import pool_results, save_row_images
    from negguide.shapeworld.world import COLOURS, Scene, ShapeObject, render

    clean = render(Scene((ShapeObject("red", "square", 0.5, 0.5, 0.15, COLOURS["red"]),)))
    specked = clean.copy()
    specked[2:5, 2:5] = COLOURS["blue"]  # 9 pixels: below the default smallest object (20), above 8
    results, images, again = (str(tmp_path / name) for name in ("run.json", "run.npz", "again.json"))
    with open(results, "w") as f:
        json.dump({"a row": _row([True, True], [0.9, 0.8], [0, 0], ["a red square"])}, f)
    save_row_images({"a row": np.stack([clean, specked])}, images)
    main(["--rejudge", results, images, "--judge-min-area-frac", str(8 / 4096), "--out", again])
    strict = json.loads(open(again).read())["a row"]
    assert strict["samples"]["correct"] == [True, False] and strict["judge"] == {"min_area_frac": 8 / 4096}
    with pytest.raises(ValueError, match="different judge options"):  # never pooled with a default-judge file
        pool_results([{"a row": strict}, json.loads(open(results).read())])
    assert pool_results([{"a row": strict}, {"a row": strict}])["a row"]["judge"] == {"min_area_frac": 8 / 4096}
    for extra in ([], ["--judge-fragment-gap-frac", "0"]):  # the default smallest object: the speck is ignored
        main(["--rejudge", results, images, *extra, "--out", again])
        row = json.loads(open(again).read())["a row"]
        assert row["samples"]["correct"] == [True, True] and row.get("judge", {}) == (
            {"fragment_gap_frac": 0.0} if extra else {}
        )
    for flag in ("--judge-min-area-frac", "--judge-fragment-gap-frac"):
        with pytest.raises(SystemExit):
            main(["--pool", results, flag, "0.001"])
        assert "change the judge of --rejudge only" in capsys.readouterr().err


def _caption_rows(rng, rates, images, fix_below=0.0):
    """Reference and row judged on ``images`` images of each caption with the given success rates, independently;
    the row's failures on captions with a rate below ``fix_below`` are fixed (a real gain where the reference is bad)."""
    ref_ok, row_ok, prompt = [], [], []
    for caption, rate in enumerate(rates):
        ref_ok += [bool(ok) for ok in rng.random(images) < rate]
        row_ok += [True if rate < fix_below else bool(ok) for ok in rng.random(images) < rate]
        prompt += [caption] * images
    row = lambda ok: _row(ok, [float(x) for x in ok], prompt, [f"c{i}" for i in range(len(rates))])  # reward = verdict
    return {"reference": row(ref_ok), "row": row(row_ok)}


def test_gap_by_level_reads_levels_from_held_apart_images_so_bad_luck_is_not_a_gain():
    from experiments.reneg_comparison.results import gap_by_level

    rng = np.random.default_rng(0)
    rates = rng.uniform(0.6, 1.0, 120)
    same = _caption_rows(rng, rates, 16)  # the row is the reference again, with other noise: no real gain anywhere
    low, *_, high = gap_by_level(same, "row", "reference", 3, same_images=True)
    assert low[3] > 2 * low[4] and high[3] < -2 * high[4]  # ranked on the same images: regression to the mean
    apart = gap_by_level(same, "row", "reference", 3)
    assert all(abs(gap) < 3 * se for *_, gap, se in apart) and apart[0][0] < apart[-1][1]  # no gain: within noise
    assert sum(n for _, _, n, _, _ in apart) >= 120  # every caption in some group (a caption's halves may split)
    better = _caption_rows(np.random.default_rng(1), rates, 16, fix_below=0.75)  # a real gain on the worst captions
    low, *_, high = gap_by_level(better, "row", "reference", 3)
    assert low[3] > 2 * low[4] and abs(high[3]) < 2 * high[4]


def test_gap_by_level_rejects_bad_groups_and_rows():
    from experiments.reneg_comparison.results import gap_by_level

    results = _caption_rows(np.random.default_rng(0), [0.5, 0.9], 4)
    for groups in (0, True, 2.0):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            gap_by_level(results, "row", "reference", groups)
    with pytest.raises(ValueError, match="no row 'other'"):
        gap_by_level(results, "other", "reference")
    with pytest.raises(ValueError, match="2 captions cannot make 3 groups"):
        gap_by_level(results, "row", "reference", 3)


def test_comparison_command_prints_gaps_by_level_of_pooled_files(tmp_path, capsys):
    import json

    from experiments.reneg_comparison.compare import main

    paths = []
    for seed in (0, 1):
        paths.append(str(tmp_path / f"s{seed}.json"))
        with open(paths[-1], "w") as f:
            json.dump(_caption_rows(np.random.default_rng(seed), [0.5, 0.7, 0.9, 1.0], 8, fix_below=0.6), f)
    main(["--pool", *paths, "--gap-by-level", "row", "reference", "--levels", "2"])
    table = capsys.readouterr().out.split("row − reference accuracy on captions grouped by reference's reward")[1]
    lines = [line for line in table.splitlines() if line.startswith("| 0") or line.startswith("| 1")]
    assert len(lines) == 2 and lines[0].split("|")[3].strip().startswith("+")  # the fixed captions are the low ones
    with pytest.raises(SystemExit):
        main(["--pool", *paths, "--gap-by-level", "row", "nowhere"])
    assert "no row 'nowhere' in the pooled results" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--gap-by-level", "row", "reference"])
    assert "pass --pool" in capsys.readouterr().err


def test_verdict_changes_count_both_ways_and_the_reward_change_on_each():
    from experiments.reneg_comparison.results import verdict_changes

    prompts = ["a red circle"]
    results = {
        "ref": _row([True, False, False, True, True], [0.9, 0.2, 0.1, 0.8, 0.7], [0] * 5, prompts),
        "new": _row([True, True, False, False, True], [1.0, 0.9, 0.1, 0.3, 0.8], [0] * 5, prompts),
    }
    v = verdict_changes(results, "new", "ref")
    assert v["to pass"] == 1 and v["to fail"] == 1
    assert v["reward change to pass"] == pytest.approx(0.7) and v["reward change to fail"] == pytest.approx(-0.5)
    assert v["reward change unchanged"] == pytest.approx((0.1 + 0.0 + 0.1) / 3)
    assert np.isnan(verdict_changes(results, "ref", "ref")["reward change to pass"])  # nothing changed
