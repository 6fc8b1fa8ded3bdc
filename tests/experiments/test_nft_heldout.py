"""DiffusionNFT on ShapeWorld (experiments.nft_heldout.study): held-out prompts, the judged evaluation, LoRA load/unload,
the comparison runner end to end on a tiny budget, and the summary table."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from experiments.nft_heldout import study as sw
from negguide.shapeworld import heldout as hw

pytestmark = pytest.mark.slow  # runs the bundled ShapeWorld model end to end

warnings.filterwarnings("ignore")
TINY_EVAL = dict(seeds=(7,), images_per_prompt=2, steps=2)


def test_heldout_prompts_are_two_object_and_never_trained_on():
    held = hw.heldout_two_object_prompts(24)
    assert len(held) == len(set(held)) == 24 and all(hw.is_two_object(p) for p in held)
    assert not hw.is_two_object("a red circle") and hw.is_two_object("a red circle to the left of a square")
    from negguide.cli.train_nft import build_parser
    from negguide.shapeworld.prompts import shapeworld_prompts

    default = build_parser().parse_args(["--out", "x"]).shapeworld_prompts  # what train-nft trains on by default
    assert set(hw.training_prompts(default)) == set(shapeworld_prompts(default, "train"))
    assert not set(held) & set(shapeworld_prompts(540, "train"))  # every train caption


def test_training_captions_of_one_kind():
    from negguide.cli.flags import read_training_prompts
    from negguide.cli.train_nft import build_parser
    from negguide.shapeworld.prompts import shapeworld_prompts
    from negguide.shapeworld.world import caption_kind

    relation = shapeworld_prompts(50, "train", kind="relation")
    assert len(set(relation)) == 50 and {caption_kind(p) for p in relation} == {"relation"}
    assert {caption_kind(p) for p in shapeworld_prompts(50, "train", kind="two-object")} == {"and", "relation"}
    assert set(relation) <= set(shapeworld_prompts(540, "train"))  # a subset of the train split, never held out
    args = build_parser().parse_args(["--out", "x", "--shapeworld-captions", "relation", "--shapeworld-prompts", "50"])
    assert read_training_prompts(args) == relation
    with pytest.raises(ValueError, match="kind = 'three' is not one of"):
        shapeworld_prompts(5, "train", kind="three")
    with pytest.raises(ValueError, match="only 230 distinct train relation captions found"):
        shapeworld_prompts(231, "train", kind="relation")


def test_accuracy_by_kind_splits_hits_by_caption():
    prompts = ["a red circle and a square", "a circle to the left of a square", "a square below a circle"]
    # two seeds x 3 prompts x 2 images, prompt-major within a seed (evaluate's order)
    hits = [1, 1, 0, 0, 1, 0] + [1, 0, 1, 1, 0, 0]
    kinds = hw.accuracy_by_kind(prompts, hits, images_per_prompt=2)
    assert kinds == {"and": (0.75, 4), "relation": (0.375, 8)}
    with pytest.raises(ValueError, match="7 hits do not divide into 3 prompts x 2 images"):
        hw.accuracy_by_kind(prompts, hits[:7], images_per_prompt=2)


def test_compare_curves_ratio_and_not_reached():
    curves = {
        "nft": [(0, 0.5), (10, 0.7), (20, 0.9), (30, 0.85)],
        "positive-only": [(0, 0.5), (10, 0.55), (20, 0.6), (30, 0.9)],
    }
    s = sw.compare_curves(0.5, curves, 30)
    assert s["nft_best"] == 0.9 and s["nft_step_best"] == 20 and s["baseline_step_best"] == 30
    assert s["ratio_best"] == pytest.approx(1.5)
    assert s["target_half"] == pytest.approx(0.7) and s["nft_step_half"] == 10 and s["ratio_half"] == pytest.approx(3.0)
    curves["positive-only"] = [(0, 0.5), (10, 0.4), (20, 0.3)]  # a baseline that only gets worse
    s = sw.compare_curves(0.5, curves)
    assert s["ratio_best"] is None and s["steps"] == 20 and s["ratio_half_bound"] == pytest.approx(2.0)
    table = sw.markdown_table(0.5, curves, s, 192)
    assert "not reached within 20 steps: ratio > 2.00x" in table and "| 20 | 0.900" in table
    assert "| 30 | 0.850 +- 0.026 | - |" in table
    assert hw.standard_error(0.5, 100) == pytest.approx(0.05)


@pytest.fixture(scope="module")
def bench():
    from negguide.shapeworld.bench import load_bench_pipeline

    return load_bench_pipeline()


def test_evaluate_is_deterministic_and_lora_unloads(bench, tmp_path):
    prompts = hw.heldout_two_object_prompts(2)
    details = hw.evaluate(bench, prompts, return_details=True, **TINY_EVAL)
    assert details["images"] == 4 and 0.0 <= details["accuracy"] <= 1.0
    assert hw.evaluate(bench, prompts, **TINY_EVAL) == details["accuracy"]
    # a LoRA that changes the model (the trainer's export of a perturbed current adapter) loads, then unloads
    from negguide.nft.policies import CURRENT, NFTPolicies
    from negguide.shapeworld.bench import load_bench_pipeline

    other = load_bench_pipeline().family_pipeline()
    policies = NFTPolicies(other.transformer, 4, 8.0, seed=0)
    with torch.no_grad():
        for p in policies.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    folder = str(tmp_path / "lora")
    policies.export(folder, "sd3", policies.state_dict(CURRENT))
    inner = bench.family_pipeline()
    before = inner(
        prompt=prompts[:1],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        max_sequence_length=0,
    ).images
    calls = []
    original = hw.evaluate
    hw.evaluate = lambda pipe, *a, **k: calls.append(len(pipe.transformer.peft_config)) or original(pipe, *a, **k)
    try:
        hw.evaluate_lora(bench, folder, prompts, **TINY_EVAL)
    finally:
        hw.evaluate = original
    assert calls == [1]  # the LoRA was active during the evaluation
    after = inner(
        prompt=prompts[:1],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        max_sequence_length=0,
    ).images
    torch.testing.assert_close(after, before)  # and is gone after


def test_comparison_runner_writes_curves_plot_and_table(tmp_path):
    out = tmp_path / "cmp"
    result = sw.run_comparison(
        str(out),
        steps=2,
        eval_every=1,
        n_prompts=2,
        seeds=(3,),
        images_per_prompt=2,
        eval_steps=2,
        train_prompts=8,
        group_size=2,
        prompts_per_step=1,
        num_inference_steps=2,
        lora_rank=4,
        lora_alpha=8.0,
        log=lambda *_: None,
    )
    saved = json.loads((out / "curves.json").read_text())
    for objective in sw.OBJECTIVES:
        assert [s for s, _ in saved["curves"][objective]] == [0, 1, 2]
        assert saved["curves"][objective][0][1] == saved["base"]  # the zero-initialised LoRA is the base model
        assert (out / objective / "heldout.json").is_file() and (out / objective / "lora").is_dir()
        assert (out / objective / "heldout_curve.png").stat().st_size > 1000
    assert saved["images_per_point"] == 4 and result["summary"]["steps"] == 2
    assert (out / "curves.png").stat().st_size > 1000
    table = (out / "table.md").read_text()
    assert "base" in table and "positive-only" in table
    # the report alone, from the two run folders, gives the same table
    again = tmp_path / "again"
    sw.report(str(out / "nft"), str(out / "positive-only"), str(again), log=lambda *_: None)
    assert (again / "table.md").read_text() == table
    with pytest.raises(ValueError, match="heldout-every"):
        sw.report(str(tmp_path / "nowhere"), str(out / "positive-only"), str(again))


class _FakeTrainer:
    """What HeldoutMonitor reads of a trainer."""

    def __init__(self, steps):
        from types import SimpleNamespace

        self.step, self.history, self.pipe = 0, [], None
        self.config = SimpleNamespace(steps=steps)
        self.accelerator = SimpleNamespace(is_main_process=True)


def test_heldout_monitor_schedule_and_resume(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(hw, "evaluate", lambda pipe, prompts, **kw: calls.append(kw) or 0.25 + 0.01 * len(calls))
    trainer = _FakeTrainer(steps=7)
    monitor = hw.HeldoutMonitor(str(tmp_path), 3, ["a circle and a square"], log=lambda *_: None)
    for step in range(8):
        trainer.step = step
        monitor(trainer)
    assert [s for s, _ in monitor.curve] == [0, 3, 6, 7] and len(calls) == 4
    monitor(trainer)  # the same step twice (e.g. called again after a resume): not evaluated again
    assert len(calls) == 4
    # a run resumed from its step-4 checkpoint keeps the points up to 4 and redoes 6 and 7
    resumed = hw.HeldoutMonitor(str(tmp_path), 3, ["a circle and a square"], log=lambda *_: None)
    assert [s for s, _ in resumed.curve] == [0, 3, 6, 7]
    trainer.step = 4
    resumed(trainer)
    assert [s for s, _ in resumed.curve] == [0, 3]
    # other prompts: the saved curve is not theirs, start over
    assert hw.HeldoutMonitor(str(tmp_path), 3, ["a red circle and a square"]).curve == []
    with pytest.raises(ValueError, match="every"):
        hw.HeldoutMonitor(str(tmp_path), 0, ["a circle and a square"])


def test_eval_only_cli_reports_by_caption_kind_at_the_requested_guidance(capsys):
    small = ["--eval-only", "--prompts", "2", "--seeds", "1000", "--images-per-prompt", "1", "--eval-steps", "2"]
    sw.main(small)
    cfg_free = capsys.readouterr().out
    assert "heldout two-object accuracy " in cfg_free and "by caption:" in cfg_free and "CFG" not in cfg_free
    sw.main([*small, "--guidance", "5"])
    assert "two-object accuracy at CFG 5 " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sw.main([*small, "--guidance", "0.5"])
