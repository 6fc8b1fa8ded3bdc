"""`negguide generate` on the bundled ShapeWorld model: every method's success path and one-line errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import READING, make_assets
from PIL import Image

from negguide.cli import generation as gen
from negguide.cli import inputs as gen_inputs
from negguide.cli import main as cli
from negguide.cli.generate import build_parser

SMALL = ["--steps", "4", "--size", "32", "--batch", "2"]


@pytest.fixture(scope="module")
def pipe():
    return gen.load_pipeline(device="cpu")


@pytest.fixture(scope="module")
def assets(pipe, tmp_path_factory):
    return make_assets(str(tmp_path_factory.mktemp("generate_assets")), pipe)


@pytest.fixture
def run(pipe, monkeypatch, capsys, tmp_path):
    """negguide.cli.main with the module's pipeline (loaded once): returns (exit code, stdout, stderr, out folder)."""
    load = gen.load_pipeline
    monkeypatch.setattr(gen, "load_pipeline", lambda model=None, *args: pipe if model is None else load(model, *args))

    def call(*args: str):
        out = str(tmp_path / "out")
        code = cli(["generate", *args, "--out", out, "--overwrite"])
        captured = capsys.readouterr()
        return code, captured.out, captured.err, out

    return call


def check_images(out: str, method: str, count: int, size: int = 32) -> list[np.ndarray]:
    arrays = []
    for i in range(count):
        image = np.asarray(Image.open(os.path.join(out, f"{method}_{i}.png")).convert("RGB"))
        assert image.shape == (size, size, 3)
        assert image.std() > 5, f"{method}_{i}.png is blank"
        arrays.append(image)
    assert not os.path.exists(os.path.join(out, f"{method}_{count}.png"))
    grid = Image.open(os.path.join(out, "grid.png"))
    assert grid.width > count * size and np.asarray(grid).std() > 5
    return arrays


def readings(stdout: str, method: str) -> list[str]:
    line = next(text for text in stdout.splitlines() if text.startswith(f"{method} ("))
    found = line.split("): ", 1)[1].split(", ")
    assert all(READING.match(r) for r in found), line
    return found


@pytest.mark.parametrize(
    "method, extra",
    [
        ("none", []),
        ("plain", ["-n", "red"]),
        (
            "perp-neg",
            [
                "-n",
                "red",
                "-n",
                "a square",
                "-w",
                "1.5",
                "-w",
                "0.5",
                "--negative-window",
                "0",
                "1",
                "--negative-window",
                "0.3",
                "1",
            ],
        ),
        ("nag", ["-n", "red", "--guidance-scale", "1", "--nag-scale", "3", "--nag-tau", "2", "--nag-alpha", "0.5"]),
        ("negtome", ["--negtome-alpha", "1.2"]),
        ("negtome-reference", ["REFERENCE"]),
        ("reneg", ["RENEG"]),
        ("nft-lora", ["LORA"]),
    ],
)
def test_each_method_writes_images_grid_and_readings(run, assets, method, extra):
    replace = {
        "REFERENCE": ["--reference", assets["reference"], "--reference-mask", assets["mask"]],
        "RENEG": ["--reneg", assets["reneg"]],
        "LORA": ["--lora", assets["lora"], "--lora-scale", "0.8"],
    }
    extra = [a for e in extra for a in replace.get(e, [e])]
    code, out, err, folder = run("a circle", "--method", method, *SMALL, *extra)
    assert code == 0, err
    check_images(folder, method, 2)
    assert len(readings(out, method)) == 2
    assert f"grid {os.path.join(folder, 'grid.png')}" in out


def test_compare_uses_the_same_seed_and_unloads_the_lora(run, assets):
    code, out, err, folder = run(
        "a red shape",
        "--compare",
        "none",
        "nft-lora",
        "perp-neg",
        "-n",
        "a red circle",
        "--lora",
        assets["lora"],
        *SMALL,
    )
    assert code == 0, err
    none = check_images(folder, "none", 2)
    lora = check_images(folder, "nft-lora", 2)
    check_images(folder, "perp-neg", 2)
    assert [readings(out, m) for m in ("none", "nft-lora", "perp-neg")]
    assert not np.array_equal(none[0], lora[0]), "the LoRA did not change the images"
    code, out, err, folder = run("a red shape", "--method", "none", *SMALL)  # same seed, LoRA gone: same images
    assert code == 0, err
    assert np.array_equal(check_images(folder, "none", 2)[0], none[0])
    code, out, err, folder = run("a red shape", "--method", "none", *SMALL, "--seed", "1")
    assert not np.array_equal(check_images(folder, "none", 2)[0], none[0])


def test_nag_rows_pass_their_settings_and_the_lora_row_routes_negatives_to_nag(run, assets, monkeypatch):
    """The nag row calls the pipeline with negative_mode='nag' and the --nag-* values; nft-lora with negatives runs
    with the pipeline flagged CFG-free (auto mode: NAG), and the flag is gone afterwards."""
    from negguide.nag.routing import CFG_FREE_ATTR
    from negguide.perpneg.pipeline import PerpNegPipeline

    seen = []
    call = PerpNegPipeline.__call__

    def spy(self, *args, **kwargs):
        if kwargs.get("num_inference_steps") != 1:  # not the warm-up step of a comparison
            seen.append((kwargs.get("negative_mode", "auto"), kwargs.get("nag"), self.cfg_free()))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(PerpNegPipeline, "__call__", spy)
    extra = ["-n", "red", "--nag-scale", "3", "--with-negatives", "--lora", assets["lora"]]
    code, out, err, folder = run("a circle", "--compare", "nag", "nft-lora", *SMALL, *extra)
    assert code == 0, err
    (mode, nag, free), (lora_mode, lora_nag, lora_free) = seen
    assert mode == "nag" and nag.negative_weights == [3.0] and not free
    assert lora_mode == "auto" and lora_nag.negative_weights == [3.0] and lora_free
    assert not any(CFG_FREE_ATTR in vars(p) for p in [gen.load_pipeline()])


def test_reneg_defaults_to_the_bundled_embedding(run, assets, monkeypatch):
    from negguide.shapeworld import assets as shapeworld

    monkeypatch.setitem(shapeworld.BUNDLED_EMBEDDINGS, "sd3", assets["reneg"])
    code, out, err, folder = run("a circle", "--method", "reneg", *SMALL)
    assert code == 0, err
    check_images(folder, "reneg", 2)
    monkeypatch.setitem(shapeworld.BUNDLED_EMBEDDINGS, "sd3", os.path.join(folder, "missing.safetensors"))
    code, out, err, _ = run("a circle", "--method", "reneg", *SMALL)
    assert code == 2 and "negguide train-reneg" in err


def test_reneg_on_the_bundled_sd_model_defaults_to_its_own_embedding(run, pipe):
    from negguide.shapeworld.assets import BUNDLED_EMBEDDINGS
    from negguide.shapeworld.assets import SD_MODEL as sd_folder

    assert gen.shapeworld_model(sd_folder) == "sd" and gen.shapeworld_model(None) == "sd3"
    assert gen.shapeworld_model(os.path.join(sd_folder, "unet")) is None
    code, out, err, folder = run("a circle", "--model", sd_folder, "--method", "reneg", *SMALL)
    assert code == 0, err
    check_images(folder, "reneg", 2)
    sd_pipe = gen.load_pipeline(sd_folder, "cpu")
    assert gen_inputs.bundled_reneg(sd_pipe) == BUNDLED_EMBEDDINGS["sd"]
    assert gen_inputs.bundled_reneg(pipe) == BUNDLED_EMBEDDINGS["sd3"]
    sd_pipe.negguide_shapeworld = None  # any other model: no default embedding
    with pytest.raises(ValueError, match="reneg needs a negative embedding for this model"):
        gen_inputs.bundled_reneg(sd_pipe)


def test_nft_lora_defaults_to_the_bundled_lora_on_the_bundled_model(run, pipe, monkeypatch):
    assert os.path.isfile(os.path.join(gen_inputs.BUNDLED_NFT_LORA, "pytorch_lora_weights.safetensors"))
    code, out, err, folder = run("a red circle and a blue square", "--compare", "none", "nft-lora", *SMALL)
    assert code == 0, err
    plain, tuned = check_images(folder, "none", 2), check_images(folder, "nft-lora", 2)
    assert any(np.abs(a.astype(int) - b.astype(int)).mean() > 1 for a, b in zip(plain, tuned))  # the LoRA acts
    monkeypatch.setattr(gen_inputs, "BUNDLED_NFT_LORA", os.path.join(folder, "missing_lora"))
    code, out, err, _ = run("a circle", "--method", "nft-lora", *SMALL)
    assert code == 2 and "negguide train-nft" in err
    monkeypatch.setattr(pipe, "negguide_bundled", False)  # another model: no default LoRA
    with pytest.raises(ValueError, match="nft-lora needs a LoRA for this model"):
        gen.lora_path(pipe, None)


@pytest.mark.parametrize(
    "args, message",
    [
        (["", "--method", "none"], "the prompt is empty"),
        (["a" * 301], "the limit is 300"),
        (["a circle", "--steps", "0"], "--steps = 0 is outside [1, 150]"),
        (["a circle", "--steps", "many"], "--steps must be an integer"),
        (["a circle", "--batch", "17"], "--batch = 17 is outside"),
        (["a circle", "--size", "4096"], "--size = 4096 is outside"),
        (["a circle", "-n", "red", "--size", "128"], "multiples of 8 up to 64"),
        (["a circle", "-n", "red", "--size", "36"], "multiples of 8 up to 64"),
        (["a circle", "--method", "perp-neg"], "perp-neg needs at least one negative"),
        (["a circle", "-n", "red", "-w", "-1"], "--negative-weight = -1.0 is outside"),
        (["a circle", "-n", "red", "-n", "blue", "-w", "1", "-w", "2", "-w", "3"], "negative_weights has 3 entries"),
        (["a circle", "-n", "red", "--negative-window", "0.8", "0.2"], "is reversed"),
        (["a circle", "--method", "negtome", "--batch", "1"], "use a batch of 2 or more"),
        (["a circle", "--method", "negtome", "--negtome-alpha", "9"], "--negtome-alpha = 9.0 is outside"),
        (["a circle", "--method", "negtome-reference"], "negtome-reference needs a reference image"),
        (
            ["a circle", "--method", "negtome-reference", "--reference", "missing.png"],
            "--reference 'missing.png' does not exist",
        ),
        (
            ["a circle", "--method", "negtome-reference", "--reference", "REFERENCE", "--reference-mask", "EMPTY"],
            "reference mask is empty",
        ),
        (["a circle", "--method", "negtome-reference", "--reference", "RENEG"], "cannot read the reference image"),
        (["a circle", "--method", "nft-lora", "--lora", "missing_lora"], "--lora 'missing_lora' does not exist"),
        (["a circle", "--method", "nft-lora", "--lora", "RENEG"], "cannot load the LoRA"),
        (["a circle", "--method", "reneg", "--reneg", "REFERENCE"], "is not a safetensors file"),
        (["a circle", "--method", "magic"], "invalid choice: 'magic'"),
        (["a circle", "--compare", "none", "none"], "repeat a method"),
        (["a circle", "--method", "none", "--compare", "plain"], "not allowed with argument"),
        (["a circle", "--method", "none", "--model", "not a model"], "neither a diffusers folder nor a hub id"),
        (["a circle", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run, assets, args, message):
    args = [
        {"REFERENCE": assets["reference"], "EMPTY": assets["empty"], "RENEG": assets["reneg"]}.get(a, a) for a in args
    ]
    code, out, err, folder = run(*args, *([] if "--steps" in args or "--size" in args else ["--steps", "2"]))
    assert code == 2
    error = [line for line in err.splitlines() if line.startswith("negguide generate: ")]
    assert len(error) == 1 and err.endswith(error[0] + "\n"), err  # one line, the last (loading bars may precede it)
    assert "Traceback" not in err and message in error[0], err
    assert not os.path.exists(os.path.join(folder, "grid.png"))


def test_help_lists_methods_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["generate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and all(m in text for m in gen.METHODS)
    assert "[1, 150]" in text  # ranges come from the settings dataclasses
    assert cli(["--help"]) == 0 and "negguide demo" in capsys.readouterr().out


def test_flag_defaults_come_from_the_settings_dataclasses():
    from negguide.negtome.settings import NegToMeSettings
    from negguide.perpneg.settings import PerpNegSettings

    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    assert actions["batch"].default == gen.SamplingSettings().batch
    assert (
        f"[{NegToMeSettings.field_specs()['alpha']['min']}, {NegToMeSettings.field_specs()['alpha']['max']}]"
        in actions["negtome_alpha"].help
    )
    assert PerpNegSettings.field_specs()["negative_weights"]["help"] in actions["negative_weights"].help


def test_a_local_diffusers_folder_is_used_without_the_judge(run, tmp_path):
    from negguide.testing import tiny_pipeline

    folder = str(tmp_path / "tiny_sd")
    tiny_pipeline("sd").save_pretrained(folder)
    code, out, err, images = run(
        "a red circle",
        "--model",
        folder,
        "--compare",
        "none",
        "perp-neg",
        "-n",
        "blue",
        "--steps",
        "2",
        "--size",
        "32",
        "--batch",
        "2",
    )
    assert code == 0, err
    check_images(images, "perp-neg", 2)
    assert "perp-neg (" in out and ": " not in out.splitlines()[1]  # no judge readings for other models


def test_a_used_output_folder_is_refused_before_compute_and_overwrite_clears_the_old_run(run, tmp_path, monkeypatch):
    code, _, _, folder = run("a red shape", "--method", "none", "--batch", "3", *SMALL[:4])
    assert code == 0 and os.path.isfile(os.path.join(folder, "none_2.png"))
    (tmp_path / "out" / "notes.txt").write_text("mine")
    monkeypatch.setattr(gen, "run", lambda *a, **k: pytest.fail("computed before checking --out"))
    assert cli(["generate", "a red shape", "--method", "none", "--out", folder]) == 2  # no --overwrite
    monkeypatch.undo()
    code, _, _, _ = run("a red shape", "--method", "none", "--batch", "2", *SMALL[:4])  # --overwrite, fewer images
    assert code == 0
    assert sorted(os.listdir(folder)) == ["grid.png", "negguide_generate.json", "none_0.png", "none_1.png", "notes.txt"]


def test_an_output_path_that_is_a_file_or_unwritable_is_refused_in_one_line(tmp_path, capsys):
    afile = tmp_path / "a_file"
    afile.write_text("x")
    assert cli(["generate", "a red shape", "-n", "red", "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert (
        cli(["generate", "a red shape", "-n", "red", "--out", str(afile / "run")]) == 2
    )  # a folder below a file: cannot exist
    assert "not writable" in capsys.readouterr().err
