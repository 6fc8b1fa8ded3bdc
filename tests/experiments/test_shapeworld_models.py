"""The bundled-model machinery: tokenizer, tiny SD3 pipeline, deterministic batches, checkpoint round trip."""

import numpy as np
import pytest
import torch

from experiments.shapeworld_models import checkpoint as ck
from experiments.shapeworld_models.components import ModelSizes, build_pipeline, build_tokenizer, word_bpe
from experiments.shapeworld_models.train_model import (
    DEFAULT_MIX,
    batch_for_step,
    ema_update,
    main,
    mix_for_step,
    set_data_mix,
)
from negguide.shapeworld.world import CAPTION_WORDS

pytestmark = pytest.mark.slow  # runs the bundled ShapeWorld model end to end

SMALL = ModelSizes(text_hidden=16, text_projection=8, dit_layers=1, dit_heads=2, dit_head_dim=8, image_size=32)


def test_every_caption_word_is_one_token_and_unknown_words_spell_out():
    tok = build_tokenizer()
    for word in CAPTION_WORDS:
        assert tok.tokenize(word) == [word + "</w>"], word
    assert tok.tokenize("purple") == ["p", "u", "r", "p", "l", "e</w>"]
    ids = tok("a red circle", padding="max_length", max_length=16)["input_ids"]
    assert len(ids) == 16 and ids[0] == tok.bos_token_id and ids[4] == tok.eos_token_id


def test_word_bpe_rejects_bad_words():
    with pytest.raises(ValueError, match="lowercase"):
        word_bpe(["Red"])


def test_tiny_pipeline_generates_and_runs_with_or_without_zero_tokens():
    pipe = build_pipeline(SMALL, seed=0)
    pipe.set_progress_bar_config(disable=True)
    for msl in (0, 8):
        out = pipe(
            "a red circle",
            num_inference_steps=2,
            height=32,
            width=32,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
            max_sequence_length=msl,
        ).images
        assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_batches_are_a_function_of_seed_stage_and_step():
    a = batch_for_step(0, "dit", 5, 4, 32)
    b = batch_for_step(0, "dit", 5, 4, 32)
    c = batch_for_step(0, "dit", 6, 4, 32)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (4, 3, 32, 32) and float(a[0].min()) >= -1.0 and float(a[0].max()) <= 1.0


def test_data_mix_phases_keep_every_step_a_function_of_the_state():
    state = {"stage": "dit", "step": 100}
    set_data_mix(state, None, None)
    assert "data_mix" not in state and mix_for_step(state, 100) == DEFAULT_MIX
    set_data_mix(state, 1.0, [0, 1, 0, 0])
    assert mix_for_step(state, 99) == DEFAULT_MIX and mix_for_step(state, 100)["pair"] == [0, 1, 0, 0]
    state["step"] = 150
    set_data_mix(state, None, None)  # a resume without flags keeps the phase in force
    assert len(state["data_mix"]) == 1
    before = batch_for_step(0, "dit", 99, 16, 32, mix_for_step(state, 99))
    after = batch_for_step(0, "dit", 120, 16, 32, mix_for_step(state, 120))
    assert torch.equal(before[0], batch_for_step(0, "dit", 99, 16, 32)[0])
    # two objects always, captioned "X to the left of Y"
    assert all(len(scene.objects) == 2 for scene in after[2])
    assert all(c == "" or " to the left of " in c for c in after[1])


def test_data_mix_flags_are_range_checked():
    with pytest.raises(SystemExit):
        main(["--two-object-prob", "1.5", "--export-only"])
    with pytest.raises(SystemExit):
        main(["--pair-caption-weights", "1,2,3", "--export-only"])
    with pytest.raises(SystemExit):
        main(["--family", "sd", "--two-object-prob", "0.6", "--export-only"])


def test_checkpoint_round_trip_restores_weights_optimizer_and_ema(tmp_path):
    from argparse import Namespace

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(3):
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    ema = {k: v.clone() for k, v in ck.prefixed_state({"net": net}).items()}
    ema_update(ema, {"net": net}, 0.5)
    args = Namespace(seed=0, batch=4, family="sd3", base="x", prediction="epsilon", max_minutes=1.0)
    ck.save(str(tmp_path), {"step": 3, "stage": "dit"}, {"net": net}, ema, opt, args)

    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-2)
    resumed = ck.load(str(tmp_path), Namespace(**{**vars(args), "max_minutes": 5.0}))  # a budget may change
    ck.load_prefixed({"net": net2}, resumed.group("model"))
    resumed.load_optimizer(opt2)
    assert ck.read_state(str(tmp_path)) == {"step": 3, "stage": "dit", "config_log": []}
    assert torch.equal(net.weight, net2.weight)
    x = torch.randn(4, 3)
    for n, o in ((net, opt), (net2, opt2)):  # the same next step from both
        n(x).pow(2).sum().backward()
        o.step()
    torch.testing.assert_close(net.weight, net2.weight, rtol=1e-5, atol=1e-6)
    loaded_ema = resumed.group("ema")
    assert set(loaded_ema) == set(ema) and all(torch.equal(loaded_ema[k], ema[k]) for k in ema)
    with pytest.raises(ValueError, match=r"\(seed: 0 -> 1\).*--resume-with-changed-config"):
        ck.load(str(tmp_path), Namespace(**{**vars(args), "seed": 1}))


def test_missing_checkpoint_is_reported(tmp_path):
    from experiments.shapeworld_models.train_model import load_pipeline_from_checkpoint

    assert ck.read_state(str(tmp_path)) is None
    with pytest.raises(ValueError, match="no checkpoint in .*train first"):
        load_pipeline_from_checkpoint(str(tmp_path))
    (tmp_path / "state.json").write_text("{}")  # a checkpoint of the older layout: refused, never overwritten
    with pytest.raises(ValueError, match="older layout"):
        ck.read_state(str(tmp_path))
