"""Results of the judged comparison of negatives (``python -m experiments.reneg_comparison.compare``): paired gaps with
prompt-clustered standard errors, pooling of several runs, the printed tables, and the saved images that let a later
judge re-read a run without sampling it again.

A row is one negative's judgements: ``{"prompt accuracy", "two-object accuracy", "reward", "images", "samples":
{"correct", "reward", "prompt"}}`` and, as ``--out`` writes it, ``"prompts"`` (the captions ``samples["prompt"]``
indexes). Every row of one run sees the same noise, so rows pair up image by image.
"""

from __future__ import annotations

import json
import math

import numpy as np

from negguide.shapeworld.world import caption_kind


def paired_gap(a, b, groups) -> tuple[float, float]:
    """Mean of ``a - b`` over paired samples (the same prompt, seed and image slot under two negatives) and its
    standard error clustered by ``groups`` (the prompt of each sample: images of one prompt are not independent),
    i.e. the standard deviation of the per-group mean gaps over sqrt(number of groups)."""
    a, b, groups = np.asarray(a, dtype=float), np.asarray(b, dtype=float), np.asarray(groups)
    if a.shape != b.shape or a.shape != groups.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"paired_gap wants three equal-length non-empty 1-D sequences, got shapes "
            f"{a.shape}, {b.shape}, {groups.shape}"
        )
    gaps = a - b
    per_group = np.array([gaps[groups == g].mean() for g in np.unique(groups)])
    se = float(per_group.std(ddof=1) / np.sqrt(len(per_group))) if len(per_group) > 1 else float("nan")
    return float(gaps.mean()), se


def gap_table(results: dict, reference: str) -> list[tuple[str, str, float, float, float, float]]:
    """For every row of ``judge_negatives``'s results except ``reference``: (row, reference, accuracy gap, its s.e.,
    reward gap, its s.e.), paired per image and clustered by prompt."""
    ref = results[reference]["samples"]
    rows = []
    for name, r in results.items():
        if name == reference:
            continue
        s = r["samples"]
        acc = paired_gap(s["correct"], ref["correct"], s["prompt"])
        rew = paired_gap(s["reward"], ref["reward"], s["prompt"])
        rows.append((name, reference, *acc, *rew))
    return rows


def gap_by_level(
    results: dict, name: str, reference: str, groups: int = 3, same_images: bool = False
) -> list[tuple[float, float, int, float, float]]:
    """Whether row ``name`` gains over ``reference`` more on the captions ``reference`` does badly on: the captions
    cut into ``groups`` equal groups by the reference's mean reward, lowest first, and in each (lowest level,
    highest level, captions, accuracy gap, its s.e. clustered by caption).

    A caption's level is read from *other* images than its gap: its images (in order) are split into two alternating
    halves and each half is ranked by the reference's reward on the other half. Ranking by the very images whose gap
    is measured would count a caption's bad luck under the reference (regression to the mean) as the row's gain;
    ``same_images=True`` does just that, to show how much."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups = {groups!r} must be an integer >= 1")
    for row in (name, reference):
        if row not in results:
            raise ValueError(f"no row {row!r} in the results (rows: {list(results)})")
    s, ref = results[name]["samples"], results[reference]["samples"]
    correct, ref_correct = np.asarray(s["correct"], dtype=float), np.asarray(ref["correct"], dtype=float)
    ref_reward, prompts = np.asarray(ref["reward"], dtype=float), np.asarray(ref["prompt"])
    units = []  # (level, caption, the half's image indices)
    for caption in np.unique(prompts):
        images = np.flatnonzero(prompts == caption)
        if len(images) < 2:
            raise ValueError(f"caption {caption} has {len(images)} image; levels need at least two a caption")
        halves = images[0::2], images[1::2]
        units += [(ref_reward[halves[k if same_images else 1 - k]].mean(), caption, halves[k]) for k in (0, 1)]
    if len(units) < 2 * groups:
        raise ValueError(f"{len(units) // 2} captions cannot make {groups} groups; pass fewer groups")
    units.sort(key=lambda unit: unit[0])
    rows = []
    for group in np.array_split(np.arange(len(units)), groups):
        chosen = [units[i] for i in group]
        images = np.concatenate([half for *_, half in chosen])
        gap, se = paired_gap(correct[images], ref_correct[images], prompts[images])
        rows.append((float(chosen[0][0]), float(chosen[-1][0]), len(np.unique(prompts[images])), gap, se))
    return rows


def verdict_changes(results: dict, name: str, reference: str) -> dict:
    """Which images' verdicts change from ``reference`` to ``name`` (paired image by image): how many turn to pass
    and to fail, and the mean reward change on those and on the images whose verdict stays. An accuracy gap made of
    many changes both ways is churn (other trajectories), not a systematic fix; a reward gain on unchanged verdicts
    is confidence the judge does not see."""
    s, ref = results[name]["samples"], results[reference]["samples"]
    now, before = np.asarray(s["correct"], dtype=bool), np.asarray(ref["correct"], dtype=bool)
    change = np.asarray(s["reward"], dtype=float) - np.asarray(ref["reward"], dtype=float)
    masks = {"to pass": now & ~before, "to fail": before & ~now, "unchanged": now == before}
    mean = lambda mask: float(change[mask].mean()) if mask.any() else float("nan")
    return {
        "to pass": int(masks["to pass"].sum()),
        "to fail": int(masks["to fail"].sum()),
        **{f"reward change {k}": mean(m) for k, m in masks.items()},
    }


#: reward bins of ``failure_reward_bins``: how sure the reward was that a judged failure satisfied its caption
REWARD_BINS = (0.1, 0.5, 0.9)


def failure_reward_bins(results: dict, bins=REWARD_BINS) -> dict:
    """For every row of ``judge_negatives``'s results: how many judged failures the reward scored in each bin
    (``< 0.1``, ``0.1-0.5``, ``0.5-0.9``, ``>= 0.9`` by default). Failures scored low are ones the reward sees (and
    training on it can remove); failures scored high are ones it does not see."""
    edges = (-math.inf, *bins, math.inf)
    out = {}
    for name, r in results.items():
        correct = np.asarray(r["samples"]["correct"], dtype=bool)
        reward = np.asarray(r["samples"]["reward"], dtype=float)
        failed = reward[~correct]
        out[name] = [int(((failed >= lo) & (failed < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])]
    return out


def summarise_row(correct, rewards, prompt_index, two) -> dict:
    """One row of ``judge_negatives``'s results from its per-image judgements, rewards and prompt indices
    (``two``: the judgements of the two-object prompts' images)."""
    return {
        "prompt accuracy": float(np.mean(correct)),
        "two-object accuracy": float(np.mean(two)) if two else None,
        "reward": float(np.mean(rewards)),
        "images": len(correct),
        "samples": {
            "correct": [bool(c) for c in correct],
            "reward": [float(x) for x in rewards],
            "prompt": list(prompt_index),
        },
    }


def pool_results(files: list) -> dict:
    """Rows of several ``judge_negatives`` results (each row carrying its ``"prompts"``, as ``--out`` writes them)
    pooled into one: the rows every file has, in the first file's order, images concatenated and each image's
    prompt index mapped to one index per caption text, so the s.e. of ``gap_table`` clusters a caption judged in two
    files (with other seeds) as one prompt."""
    if len(files) < 2:
        raise ValueError(f"pooling needs at least two results, got {len(files)}")
    names = [n for n in files[0] if all(n in f for f in files[1:])]
    if not names:
        raise ValueError(
            f"the results share no row name (first file: {list(files[0])}); pool runs of the same negatives"
        )
    for name in names:  # a re-judge with other judge options records them; such rows are not comparable with others
        judges = [f[name].get("judge", {}) for f in files]
        if any(j != judges[0] for j in judges[1:]):
            raise ValueError(
                f"row {name!r} was judged with different judge options in the files to pool ({judges}; "
                "{} is the default judge): re-judge them alike (--rejudge with the same --judge-* flags)"
            )
    captions: dict = {}
    pooled = {}
    for name in names:
        correct, reward, prompt, two = [], [], [], []
        for f in files:
            row = f[name]
            if "prompts" not in row:
                raise ValueError(f"row {name!r} has no 'prompts'; pool files written by --out of this version")
            s = row["samples"]
            correct += s["correct"]
            reward += s["reward"]
            texts = [row["prompts"][i] for i in s["prompt"]]
            prompt += [captions.setdefault(t, len(captions)) for t in texts]
            two += [c for c, t in zip(s["correct"], texts) if caption_kind(t) != "one-object"]
        pooled[name] = summarise_row(correct, reward, prompt, two)
        if files[0][name].get("judge"):
            pooled[name]["judge"] = files[0][name]["judge"]
    return pooled


def read_json(path: str) -> dict:
    """A results file written by ``--out``."""
    with open(path) as f:
        return json.load(f)


def print_comparison(results: dict, title: str) -> None:
    """The comparison's tables: each row's accuracy and reward, the paired gaps between all rows, and each row's
    judged failures binned by the reward they got."""
    print(title)
    print("| negative | prompt accuracy | two-object accuracy | reward |\n|---|---|---|---|")
    for name, r in results.items():
        two = "n/a" if r["two-object accuracy"] is None else f"{r['two-object accuracy']:.3f}"  # no two-object prompt
        print(f"| {name} | {r['prompt accuracy']:.3f} | {two} | {r['reward']:.3f} |")
    names = list(results)
    print(
        "\npaired gaps (same noise per image; s.e. clustered by prompt); verdicts changed: images turned to pass / "
        "to fail (their reward change; that of the images whose verdict stays)\n"
        "| negative | against | accuracy gap | reward gap | verdicts changed |\n|---|---|---|---|---|"
    )
    for position, reference in enumerate(names):  # every row against every row above it
        for name, ref, acc, acc_se, rew, rew_se in gap_table(results, reference):
            if names.index(name) > position:
                v = verdict_changes(results, name, reference)
                print(
                    f"| {name} | {ref} | {acc:+.3f} ± {acc_se:.3f} | {rew:+.3f} ± {rew_se:.3f} | {v['to pass']} / "
                    f"{v['to fail']} ({v['reward change to pass']:+.2f} / {v['reward change to fail']:+.2f}; "
                    f"{v['reward change unchanged']:+.4f}) |"
                )
    labels = (
        [f"< {REWARD_BINS[0]}"] + [f"{a}-{b}" for a, b in zip(REWARD_BINS, REWARD_BINS[1:])] + [f">= {REWARD_BINS[-1]}"]
    )
    print(
        "\njudged failures by the reward they got (low: the reward sees them; high: it does not)\n"
        f"| negative | failures | {' | '.join(labels)} |\n|---|---|{'---|' * len(labels)}"
    )
    for name, counts in failure_reward_bins(results).items():
        print(f"| {name} | {sum(counts)} | {' | '.join(str(c) for c in counts)} |")


def print_gap_by_level(results: dict, name: str, reference: str, groups: int) -> None:
    """``gap_by_level``'s table, levels read from held-apart images and, for contrast, from the same images (both
    rank the same half-caption means, so the groups' levels and captions agree; only which half is measured differs)."""
    print(
        f"\n{name} − {reference} accuracy on captions grouped by {reference}'s reward (held apart: each half of a "
        "caption's images ranked by the other half; same images: by itself)\n"
        "| level | captions | held apart | same images |\n|---|---|---|---|"
    )
    for (low, high, n, gap, se), (*_, same, same_se) in zip(
        gap_by_level(results, name, reference, groups), gap_by_level(results, name, reference, groups, same_images=True)
    ):
        print(f"| {low:.3f}-{high:.3f} | {n} | {gap:+.4f} ± {se:.4f} | {same:+.4f} ± {same_se:.4f} |")


def save_row_images(images: dict, path: str) -> str:
    """Write every row's judged images (``images[name]``: uint8 ``[N, H, W, 3]`` in the order of the row's
    ``samples``) to one ``.npz`` at ``path``; returns ``path``."""
    names = list(images)
    arrays = {f"row{k}": np.asarray(images[name], dtype=np.uint8) for k, name in enumerate(names)}
    np.savez_compressed(path, names=np.array(names), **arrays)
    return path


def load_row_images(path: str) -> dict:
    """The ``{row name: uint8 [N, H, W, 3]}`` that ``save_row_images`` wrote to ``path``."""
    with np.load(path) as data:
        return {str(name): data[f"row{k}"] for k, name in enumerate(data["names"])}


def rejudge_results(results: dict, images: dict, **judge_options) -> dict:
    """``results`` (rows carrying ``"prompts"``) judged again by the current judge from their saved ``images``
    (``load_row_images``); rewards are kept. Rows without saved images are an error, not silently dropped.
    ``judge_options`` (e.g. ``min_area_frac``) go to the judge's ``detect_objects`` and are recorded in each row as
    ``"judge"`` (absent: the default judge), so ``pool_results`` refuses to mix rows judged differently."""
    from negguide.shapeworld.judge import prompt_correct

    out = {}
    for name, row in results.items():
        if name not in images:
            raise ValueError(
                f"no saved images for row {name!r} (saved rows: {list(images)}); pass the --save-images "
                "file of the same run"
            )
        if "prompts" not in row:
            raise ValueError(f"row {name!r} has no 'prompts'; re-judge files written by --out of this version")
        s, pixels = row["samples"], images[name]
        if len(pixels) != len(s["correct"]):
            raise ValueError(
                f"row {name!r} has {len(s['correct'])} judgements but {len(pixels)} saved images; "
                "pass the --save-images file of the same run"
            )
        texts = [row["prompts"][i] for i in s["prompt"]]
        correct = prompt_correct(list(pixels), texts, **judge_options).tolist()
        two = [c for c, t in zip(correct, texts) if caption_kind(t) != "one-object"]
        out[name] = {**summarise_row(correct, s["reward"], s["prompt"], two), "prompts": row["prompts"]}
        if judge_options:
            out[name]["judge"] = dict(judge_options)
    return out
