"""NegToMe on the bundled ShapeWorld model: the paper's claims as judged numbers (smoke subset of the bench).

Diversity: "a shape" in batches of 8 gets more distinct (colour, shape) pairs and a larger pairwise distance,
with prompt accuracy within 5 points. Reference mode: "a circle" pushed away from the image of a red circle
makes fewer red circles. Seeds are held out from the ones the settings were chosen on (30000+).
"""

from __future__ import annotations

import pytest

from negguide.shapeworld.bench import BenchSettings, load_bench_pipeline, run_bench, save_grids

pytestmark = pytest.mark.slow  # runs the bundled ShapeWorld model end to end


@pytest.fixture(scope="module")
def results():
    settings = BenchSettings(seeds=tuple(range(40_000, 40_006)), images_per_seed=8)
    return run_bench(
        load_bench_pipeline(),
        ["diversity", "reference"],
        ["none", "negtome others", "negtome reference"],
        settings,
        progress=False,
    )


def mean(results, scenario, method, metric):
    return results["scenarios"][scenario]["methods"][method][metric]["mean"]


def test_batches_are_more_diverse_with_accuracy_kept(results):
    for metric in ("distinct pairs", "pairwise distance"):
        assert mean(results, "diversity", "negtome others", metric) > mean(results, "diversity", "none", metric), metric
    drop = mean(results, "diversity", "none", "prompt accuracy") - mean(
        results, "diversity", "negtome others", "prompt accuracy"
    )
    assert drop <= 0.05


def test_reference_image_is_avoided(results):
    assert (
        mean(results, "reference", "negtome reference", "P(red)") <= mean(results, "reference", "none", "P(red)") - 0.3
    )
    assert mean(results, "reference", "negtome reference", "P(circle)") >= 0.7


def test_only_applicable_methods_run_and_grids_are_drawn(results, tmp_path):
    assert set(results["scenarios"]["diversity"]["methods"]) == {"none", "negtome others"}
    assert set(results["scenarios"]["reference"]["methods"]) == {"none", "negtome reference"}
    paths = save_grids(results, str(tmp_path))
    assert len(paths) == 2
