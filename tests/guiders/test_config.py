"""The guiders' fields are the settings dataclasses' (one source of truth) and they save, load and re-run through
diffusers' own config mechanism (save_pretrained / from_pretrained / from_config / new)."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
import torch

from negguide.core.settings import field_default
from negguide.guiders import GuidanceSettings, NAGGuider, PerpNegGuider
from negguide.nag import NAGSettings
from negguide.perpneg import PerpNegSettings

GUIDERS = [(PerpNegGuider, PerpNegSettings), (NAGGuider, NAGSettings)]


@pytest.mark.parametrize("guider, settings", GUIDERS, ids=["perp-neg", "nag"])
def test_the_arguments_are_the_dataclasses_fields(guider, settings):
    parameters = inspect.signature(guider).parameters
    fields = [f.name for cls in (GuidanceSettings, settings) for f in dataclasses.fields(cls)]
    assert list(parameters) == fields
    for cls in (GuidanceSettings, settings):
        for f in dataclasses.fields(cls):
            assert parameters[f.name].default == field_default(cls, f.name), f.name
            assert parameters[f.name].kind is inspect.Parameter.KEYWORD_ONLY


def test_the_config_holds_the_validated_settings():
    guider = PerpNegGuider(guidance_scale=6, negatives="red", negative_weights=2, negative_windows=(0.25, 1))
    assert guider.settings == PerpNegSettings(negatives="red", negative_weights=2, negative_windows=(0.25, 1))
    config = guider.config
    assert config.negatives == ["red"] and config.negative_weights == [2.0] and config.guidance_scale == 6.0
    assert [tuple(w) for w in config.negative_windows] == [(0.25, 1.0)]


@pytest.mark.parametrize(
    "guider",
    [
        PerpNegGuider(
            guidance_scale=6.0,
            negatives=["red", "circle"],
            negative_weights=[1.5, 0.5],
            negative_windows=[(0.0, 1.0), (0.5, 1.0)],
            positives=["a square"],
            positive_weights=[0.5],
        ),
        NAGGuider(guidance_scale=3.0, negatives=["red"], negative_weights=[2.5], tau=3.0, alpha=0.4, blocks=["up"]),
    ],
    ids=["perp-neg", "nag"],
)
def test_save_load_and_rerun_is_identical(modular, tmp_path, guider):
    guider.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "guider_config.json").read_text())
    assert saved["_class_name"] == type(guider).__name__ and saved["negatives"] == guider.settings.negatives
    loaded = type(guider).from_pretrained(tmp_path)
    assert loaded.settings == guider.settings and loaded.guidance == guider.guidance
    first = modular.run("sdxl", guider)
    again = modular.run("sdxl", loaded)
    assert torch.equal(first, again)
    assert [r.branches for r in loaded.step_records] == [r.branches for r in guider.step_records]


def test_new_and_from_config_validate_like_the_constructor():
    guider = PerpNegGuider(negatives=["red"], negative_weights=[1.5])
    copy = guider.new(guidance_scale=3.0)
    assert copy.guidance_scale == 3.0 and copy.settings == guider.settings
    config = dict(guider.config, negative_weights=[-1.0])
    with pytest.raises(ValueError, match=r"negative_weights\[0\] = -1.0 is outside"):
        PerpNegGuider.from_config(config)


def test_a_config_edited_on_disk_is_checked_on_load(tmp_path):
    PerpNegGuider(negatives=["red", "blue"]).save_pretrained(tmp_path)
    path = tmp_path / "guider_config.json"
    config = json.loads(path.read_text())
    config["negative_windows"] = [[0.0, 1.0]]
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="negative_windows has 1 entries but negatives has 2"):
        PerpNegGuider.from_pretrained(tmp_path)
