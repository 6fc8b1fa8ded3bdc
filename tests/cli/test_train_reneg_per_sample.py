"""``negguide train-reneg --per-sample-from GLOBAL``: one tuned embedding per prompt on the bundled ShapeWorld
model, saved as it is done, loaded back by prompt, resumed prompt by prompt; per-sample flags alone are refused."""

from __future__ import annotations

import json
import os

import pytest
import torch

from negguide.cli import main
from negguide.reneg import NegativeEmbedding, load_per_sample
from negguide.shapeworld.assets import BUNDLED_EMBEDDINGS

BUNDLED = BUNDLED_EMBEDDINGS["sd3"]

PROMPTS = ["a red circle", "a blue square"]
QUICK = [
    "--per-sample-from",
    BUNDLED,
    "--prompts",
    *PROMPTS,
    "--steps",
    "2",
    "--batch-size",
    "2",
    "--num-inference-steps",
    "3",
    "--late-steps",
    "2",
    "--lr",
    "0.1",
    "--patience",
    "2",
]


def test_per_sample_folder_is_written_loaded_and_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-reneg", "--out", str(out), *QUICK]) == 0
    assert "wrote 2 per-sample embeddings" in capsys.readouterr().out
    folder = out / "per_sample"
    tuned = load_per_sample(str(folder))
    assert sorted(tuned) == sorted(PROMPTS)
    global_embedding = NegativeEmbedding.load(BUNDLED)
    for prompt, embedding in tuned.items():
        assert embedding.metadata["per_sample_prompt"] == prompt
        assert embedding.tensors["prompt_embeds"].shape == global_embedding.tensors["prompt_embeds"].shape
    # an interrupted run: the second prompt's file is missing; a rerun redoes only that one, the same way
    index = json.loads((folder / "prompts.json").read_text())
    second = folder / index["a blue square"]
    again = second.read_bytes()
    first_written = os.stat(folder / index[PROMPTS[0]]).st_mtime_ns
    second.unlink()
    assert main(["train-reneg", "--out", str(out), *QUICK]) == 0
    assert os.stat(folder / index[PROMPTS[0]]).st_mtime_ns == first_written
    redone = load_per_sample(str(folder))["a blue square"]
    torch.testing.assert_close(redone.tensors["prompt_embeds"], tuned["a blue square"].tensors["prompt_embeds"])
    assert len(again) == second.stat().st_size


def _quick_with(prompts: list, global_path: str) -> list:
    flags = list(QUICK)
    flags[flags.index("--per-sample-from") + 1] = global_path
    start = flags.index("--prompts") + 1
    end = start
    while end < len(flags) and not flags[end].startswith("--"):
        end += 1
    return flags[:start] + prompts + flags[end:]


def test_reruns_with_other_prompts_or_another_global_keep_every_prompt_on_its_own_embedding(tmp_path):
    out = tmp_path / "run"
    folder = out / "per_sample"
    assert main(["train-reneg", "--out", str(out), *_quick_with([PROMPTS[1]], BUNDLED)]) == 0
    alone = load_per_sample(str(folder))[PROMPTS[1]]
    # the same folder, the prompts in another order with a new one first: nothing is mapped by position
    assert main(["train-reneg", "--out", str(out), *_quick_with(["a green triangle", PROMPTS[1]], BUNDLED)]) == 0
    tuned = load_per_sample(str(folder))
    assert {p: e.metadata["per_sample_prompt"] for p, e in tuned.items()} == {p: p for p in tuned}
    torch.testing.assert_close(tuned[PROMPTS[1]].tensors["prompt_embeds"], alone.tensors["prompt_embeds"])
    # another global embedding: its tunings are redone, never reused
    other = NegativeEmbedding.load(BUNDLED)
    other.tensors = {k: v + 0.01 for k, v in other.tensors.items()}
    other_path = str(tmp_path / "other_global.safetensors")
    other.save(other_path)
    assert main(["train-reneg", "--out", str(out), *_quick_with([PROMPTS[1]], other_path)]) == 0
    redone = load_per_sample(str(folder))[PROMPTS[1]]
    assert redone.metadata["per_sample_global"] != alone.metadata["per_sample_global"]
    assert not torch.equal(redone.tensors["prompt_embeds"], alone.tensors["prompt_embeds"])


def test_an_index_that_gives_a_file_to_another_prompt_is_refused(tmp_path):
    out = tmp_path / "run"
    assert main(["train-reneg", "--out", str(out), *QUICK]) == 0
    folder = out / "per_sample"
    index = json.loads((folder / "prompts.json").read_text())
    index[PROMPTS[0]], index[PROMPTS[1]] = index[PROMPTS[1]], index[PROMPTS[0]]
    (folder / "prompts.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="was tuned for"):
        load_per_sample(str(folder))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--patience", "2"], "--patience is for the per-sample variant: add --per-sample-from GLOBAL"),
        (["--confirm-samples", "4"], "--confirm-samples is for the per-sample variant"),
        (["--per-sample-from", "/nonexistent/global.safetensors"], "does not exist"),
        (["--per-sample-from", BUNDLED, "--patience", "0"], "--patience = 0 is outside"),
    ],
)
def test_per_sample_bad_flags_are_one_line(flags, message, tmp_path, capsys):
    try:
        code = main(["train-reneg", "--out", str(tmp_path / "x"), "--prompts", "a red circle", *flags])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x" / "per_sample").exists()


def test_load_per_sample_names_a_folder_without_an_index(tmp_path):
    with pytest.raises(ValueError, match="has no prompts.json: not a per-sample folder"):
        load_per_sample(str(tmp_path))
