"""Fuzz the command line: hostile flag values (wrong types, NaN/inf, huge and negative numbers, empty strings, paths
to folders, missing or garbage files, unknown choices) for every subcommand end with exit status 2 and one line on
stderr, never a traceback, and before any model loads (``no_model_load`` fails the test if one starts).

Each subcommand has a table (every number flag's hostile values come from its own range, so a new flag is fuzzed
as soon as it exists) and a hypothesis test that draws a flag and an invalid value for it."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from negguide.cli import bench, demo, generate, train_nft, train_reneg
from negguide.cli.generation import load_pipeline

PARSERS = {
    "generate": generate.build_parser,
    "bench": bench.build_parser,
    "train-reneg": train_reneg.build_parser,
    "train-nft": train_nft.build_parser,
    "demo": demo.build_parser,
}
FUZZ = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)


# ------------------------------------------------------------------------------------------ hostile values
def number_flags(command: str) -> list:
    """(flag, its argparse type, nargs) of every range-checked number flag of ``command``."""
    out = []
    for action in PARSERS[command]()._actions:
        if hasattr(action.type, "kind") and action.option_strings:
            out.append((action.option_strings[0], action.type, action.nargs))
    return out


def choice_flags(command: str) -> list:
    return [
        (a.option_strings[0], a.nargs)
        for a in PARSERS[command]()._actions
        if a.choices is not None and a.option_strings and a.option_strings[0] != "--help"
    ]


def bad_numbers(parse) -> list[str]:
    """Texts that the number flag ``parse`` (a :func:`negguide.cli.flags.ranged` type) must refuse."""
    kind, low, high = parse.kind, parse.low, parse.high
    values = ["", " ", "abc", "1,5", "nan", "NaN", "-nan", "0x10", "--", "1e", "five", "\u221e"]
    if kind is int:
        values += ["1.5", "1e3", "1e400", "2.0000001", "inf"]
    if high is not None:
        values += [str(high + 1) if kind is int else repr(high + max(1.0, abs(high))), "9" * 40, "inf", "1e400"]
    if low is not None:
        values += [str(low - 1) if kind is int else repr(low - max(1.0, abs(low))), "-" + "9" * 40, "-inf"]
        if parse.low_open:
            values.append(repr(low))
    return values


def invalid_number(parse):
    """A hypothesis strategy of texts ``parse`` refuses: unparseable text or numbers outside its range."""
    kind, low, high = parse.kind, parse.low, parse.high

    def refused(text: str) -> bool:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            return True
        if value != value:
            return True
        below = low is not None and (value <= low if parse.low_open else value < low)
        return below or (high is not None and value > high)

    texts = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)
    strategies = [texts.filter(refused)]
    if kind is int:
        if high is not None:
            strategies.append(st.integers(min_value=high + 1).map(str))
        if low is not None:
            strategies.append(st.integers(max_value=low - 1).map(str))
    else:
        if high is not None:
            strategies.append(st.floats(min_value=high, exclude_min=True).map(repr))
        if low is not None:
            strategies.append(st.floats(max_value=low, exclude_max=not parse.low_open).map(repr))
        strategies.append(st.just("nan"))
    return st.one_of(strategies)


def as_argv(flag: str, nargs, value: str) -> list[list[str]]:
    """The ways a hostile ``value`` reaches ``flag``: --flag=VALUE, or one of a pair's two values."""
    if nargs == 2:
        return [[flag, value, "1"], [flag, "0", value]]
    return [[f"{flag}={value}"]]


def device_cases() -> list[str]:
    cases = ["bogus", "", " ", "CUDA", "cpu:x", "cuda:-1", "cuda:99", "meta", "gpu", "cuda:0:1", "1.5"]
    if not torch.cuda.is_available():
        cases += ["cuda", "cuda:0", "0"]
    if not torch.backends.mps.is_available():
        cases.append("mps")
    return cases


def model_cases(hostile: dict, hub_ok: bool = True) -> list[str]:
    cases = [
        hostile["empty_dir"],
        hostile["dir"],
        hostile["text"],
        hostile["garbage"],
        hostile["missing"],
        hostile["under_file"],
        "",
        "   ",
        "not a model",
        "../",
    ]
    return cases + ([] if hub_ok else ["owner/name"])


def embedding_files(hostile: dict) -> list[str]:
    names = (
        "missing dir empty_dir empty_file garbage text truncated no_format no_family bad_family wrong_tensors "
        "int_tensor nan_tensor no_tensors png"
    )
    return [hostile[n] for n in names.split()]


def reward_cases(hostile: dict) -> list[str]:
    return [
        "",
        "bogus",
        "shapeworld@-5",
        "shapeworld@-0.001",
        "shapeworld@nan",
        "shapeworld@inf",
        "shapeworld@-inf",
        "shapeworld@1e400",
        "shapeworld@",
        "shapeworld@abc",
        "shapeworld@0",
        "shapeworld=",
        "shapeworld=/nonexistent",
        f"shapeworld={hostile['empty_dir']}",
        f"shapeworld={hostile['dir']}",
        f"shapeworld={hostile['text']}",
        f"shapeworld={hostile['reward_dir']}",
        f"shapeworld-log={hostile['missing']}@0.5",
        "clip",
        "clip=",
        "clip=/nonexistent",
        f"clip={hostile['missing']}",
        "pickscore=/nonexistent@2",
        "=shapeworld",
        "@1",
        " shapeworld",
        "SHAPEWORLD",
    ]


def check_all(usage_error, command: str, cases: list) -> None:
    """Run every (argv, expected text or None) case; one assertion listing every case that broke the contract."""
    failures = [f for argv, contains in cases if (f := usage_error(command, argv, contains))]
    assert not failures, f"{len(failures)} of {len(cases)} hostile inputs broke the contract:\n" + "\n".join(failures)


def number_cases(command: str, base: list, skip=()) -> list:
    cases = []
    for flag, parse, nargs in number_flags(command):
        if flag in skip:
            continue
        for value in bad_numbers(parse):
            cases += [(base + argv, None) for argv in as_argv(flag, nargs, value)]
    return cases


def choice_cases(command: str, base: list) -> list:
    cases = []
    for flag, nargs in choice_flags(command):
        for value in ("bogus", "", "NONE", " "):
            cases.append((base + ([flag, value] if nargs != "+" else [flag, "none", value]), "invalid choice"))
    return cases


# ------------------------------------------------------------------------------------------ generate
@pytest.fixture
def generate_base(tmp_path) -> list:
    return ["a red shape", "-n", "a red circle", "--out", str(tmp_path / "out")]


def test_generate_hostile_flags_are_one_line_before_loading(
    no_model_load, usage_error, hostile, generate_base, tmp_path
):
    base = generate_base
    cases = number_cases("generate", base) + choice_cases("generate", base)
    cases += [([prompt, "-n", "red", "--out", base[-1]], None) for prompt in ("", "   ", "\n", "a" * 301)]
    cases += [
        (base + ["-n", ""], "negative 2 is empty"),
        (base + ["-n", " \t"], "negative 2 is empty"),
        (base + ["-n", "x" * 301], "longer than 300"),
        (base + sum((["-n", f"n{i}"] for i in range(8)), []), "the limit is 8"),
        (base + ["-n", "b", "-w", "1", "-w", "2", "-w", "3"], "negative_weights has 3 entries"),
        (base + ["--negative-window", "0.8", "0.2"], "reversed"),
        (base + ["--negative-window", "0.5"], "expected 2 arguments"),
        (base + ["--negtome-window", "0.9", "0.1", "--method", "negtome"], "reversed"),
        (base + ["--compare", "none", "none"], "repeat a method"),
        (base + ["--compare"], "expected at least one argument"),
        (base + ["--method", "none", "--compare", "plain"], "not allowed with"),
        (base + ["--method", "negtome", "--batch", "1"], "batch of 2 or more"),
        (base + ["--method", "negtome-reference"], "needs a reference image"),
        (["a shape", "--method", "perp-neg", "--out", base[-1]], "needs at least one negative"),
        (base + ["--steps"], "expected one argument"),
        (base + ["--no-such-flag"], "unrecognized arguments"),
        (base + ["--out", hostile["text"]], "is a file"),
        (base + ["--out", hostile["under_file"]], "not writable"),
        (base + ["--out", hostile["dir"]], "is not empty"),
    ]
    cases += [(base + ["--device", device], "--device") for device in device_cases()]
    cases += [(base + ["--dtype", dtype], "invalid choice") for dtype in ("float64", "", "int8")]
    cases += [(base + ["--model", model], "--model") for model in model_cases(hostile)]
    reneg = base + ["--method", "reneg"]
    cases += [(reneg + ["--reneg", path], repr(path)) for path in embedding_files(hostile)]
    lora = base + ["--method", "nft-lora"]
    cases += [(lora + ["--lora", hostile[n]], "LoRA") for n in ("dir", "empty_dir", "garbage", "text", "empty_file")]
    cases += [(lora + ["--lora", hostile["missing"]], "does not exist")]
    reference = base + ["--method", "negtome-reference"]
    images = ("missing", "dir", "garbage_png", "text", "empty_file", "bomb_png", "garbage")
    cases += [(reference + ["--reference", hostile[n]], "reference") for n in images]
    cases += [
        (reference + ["--reference", hostile["png"], "--reference-mask", hostile[n]], "reference") for n in images
    ]
    check_all(usage_error, "generate", cases)
    assert not (tmp_path / "out" / "grid.png").exists()


@given(data=st.data())
@FUZZ
def test_generate_drawn_invalid_numbers(no_model_load, usage_error, generate_base, data):
    flag, parse, nargs = data.draw(st.sampled_from(number_flags("generate")), label="flag")
    value = data.draw(invalid_number(parse), label="value")
    argv = data.draw(st.sampled_from(as_argv(flag, nargs, value)))
    problem = usage_error("generate", generate_base + argv)
    assert problem is None, problem


# ------------------------------------------------------------------------------------------ bench
def test_bench_hostile_flags_are_one_line_before_loading(no_model_load, usage_error, hostile, tmp_path):
    base = ["--out", str(tmp_path / "bench")]
    cases = number_cases("bench", base) + choice_cases("bench", base)
    cases += [(base + ["--methods", m], "--methods") for m in ("bogus", "", "PERP-NEG", "perp-neg,none")]
    cases += [(base + ["--model", model], "--model") for model in model_cases(hostile, hub_ok=False)]
    cases += [
        (base + ["--out", hostile["text"]], "not writable"),
        (base + ["--out", hostile["under_file"]], "not writable"),
        (base + ["--scenarios"], "expected at least one argument"),
        (base + ["--quick", "yes"], "unrecognized arguments"),
    ]
    check_all(usage_error, "bench", cases)


@given(data=st.data())
@FUZZ
def test_bench_drawn_invalid_numbers(no_model_load, usage_error, tmp_path, data):
    flag, parse, nargs = data.draw(st.sampled_from(number_flags("bench")), label="flag")
    value = data.draw(invalid_number(parse), label="value")
    problem = usage_error("bench", ["--out", str(tmp_path / "bench"), *as_argv(flag, nargs, value)[0]])
    assert problem is None, problem


# ------------------------------------------------------------------------------------------ the trainers
def training_cases(command: str, base: list, hostile: dict) -> list:
    """What train-reneg and train-nft share: numbers, choices, model, output, prompts and rewards."""
    cases = number_cases(command, base) + choice_cases(command, base)
    cases += [(base + ["--model", model], "--model") for model in model_cases(hostile)]
    cases += [(base + ["--reward", spec], None) for spec in reward_cases(hostile)]
    cases += [(base + ["--reward", "shapeworld@0.5", "--reward", "shapeworld@0.5"], "given twice")]
    for name in ("missing", "dir", "empty_dir", "empty_file", "garbage"):
        cases.append((base + ["--prompts-file", hostile[name]], "--prompts-file"))
    cases += [
        (base + ["--out", hostile["text"]], "not writable"),
        (base + ["--out", hostile["under_file"]], "not writable"),
        (base + ["--out", ""], None),
        (base + ["--prompts"], "expected at least one argument"),
        (base + ["--prompts", ""], None),
        (base + ["--prompts", "   "], None),
        (base + ["--prompts", "a red circle", "a xyz"], "unknown shape 'xyz'"),
        (base + ["--prompts", "a purple circle"], "unknown colour 'purple'"),
        (base + ["--steps"], "expected one argument"),
        (base + ["--no-such-flag"], "unrecognized arguments"),
    ]
    return cases


@pytest.fixture
def train_base(tmp_path) -> list:
    return ["--out", str(tmp_path / "run"), "--prompts", "a red circle", "--steps", "1"]


def test_train_reneg_hostile_flags_are_one_line_before_loading(no_model_load, usage_error, hostile, train_base):
    base = train_base
    cases = training_cases("train-reneg", base, hostile)
    for flag in ("--init-embedding", "--per-sample-from"):
        cases += [(base + [flag, path], None) for path in embedding_files(hostile)]
    cases += [
        (base + ["--late-steps", "30", "--num-inference-steps", "20"], "late_steps = 30"),
        (base + ["--init-embedding", hostile["no_family"], "--init-text", "x"], "drop --init-text"),
        (base + ["--patience", "2"], "--per-sample-from"),
    ]
    check_all(usage_error, "train-reneg", cases)


def test_train_nft_hostile_flags_are_one_line_before_loading(no_model_load, usage_error, hostile, train_base):
    base = train_base
    cases = training_cases("train-nft", base, hostile)
    cases += [
        (base + ["--heldout-every", "5", "--model", "owner/model"], "needs a ShapeWorld model"),
        (base + ["--timestep-min", "0.9", "--timestep-max", "0.1"], "timestep"),
        (base + ["--lora-targets", ""], "lora_targets"),
        (base + ["--lora-targets", ",,"], "lora_targets"),
    ]
    check_all(usage_error, "train-nft", cases)


@pytest.mark.parametrize("command", ["train-reneg", "train-nft"])
@given(data=st.data())
@FUZZ
def test_trainers_drawn_invalid_numbers(no_model_load, usage_error, train_base, command, data):
    flag, parse, nargs = data.draw(st.sampled_from(number_flags(command)), label="flag")
    value = data.draw(invalid_number(parse), label="value")
    problem = usage_error(command, train_base + as_argv(flag, nargs, value)[0])
    assert problem is None, problem


@given(specs=st.lists(st.text(max_size=20), min_size=1, max_size=3))
@FUZZ
def test_train_reneg_drawn_reward_specs_never_trace_back(no_model_load, usage_error, train_base, specs):
    """Any --reward text is a usable spec or one line; never a traceback (a valid spec reaches the model load,
    which no_model_load turns into a test failure: so only refused specs may be drawn)."""
    from negguide.rewards.registry import parse_reward_spec

    try:
        for spec in specs:
            parse_reward_spec(spec)
        if len(set(specs)) == len(specs):
            return  # all valid: the run would go on to load the model
    except (ValueError, TypeError):
        pass
    problem = usage_error("train-reneg", train_base + sum((["--reward", s] for s in specs), []))
    assert problem is None, problem


# ------------------------------------------------------------------------------------------ after the model loads
def test_input_that_needs_the_model_is_one_line_after_loading(usage_error, tmp_path):
    """What only the loaded model can judge (the image size step, an embedding's shapes) is still one line, exit 2,
    before any sampling or training step."""
    from negguide.reneg.embedding import NegativeEmbedding

    other = str(tmp_path / "other_model.safetensors")
    NegativeEmbedding("sd3", {"prompt_embeds": torch.zeros(1, 3, 8), "pooled_prompt_embeds": torch.zeros(1, 8)}).save(
        other
    )
    train = ["--out", str(tmp_path / "run"), "--prompts", "a red circle", "--steps", "1"]
    cases = [
        ("train-reneg", train + ["--height", "12"], "a multiple of 8"),
        ("train-nft", train + ["--width", "20"], "a multiple of 8"),
        ("generate", ["a red circle", "--method", "reneg", "--reneg", other, "--out", str(tmp_path / "g")], other),
    ]
    failures = [p for command, argv, text in cases if (p := usage_error(command, argv, text, loads=True))]
    assert not failures, "\n".join(failures)


def test_a_hub_id_that_cannot_load_offline_is_one_line(usage_error, tmp_path):
    """A hub id passes the model check; offline and not cached, its load fails: one line naming it, no traceback."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (nothing may download)")
    model = "negguide-fuzz/no-such-model"
    train = ["--out", str(tmp_path / "run"), "--prompts", "a red circle", "--steps", "1", "--model", model]
    cases = [
        ("generate", ["a red circle", "-n", "blue", "--model", model, "--out", str(tmp_path / "g")]),
        ("train-reneg", train),
        ("train-nft", train),
    ]
    failures = [p for command, argv in cases if (p := usage_error(command, argv, f"cannot load model {model!r}"))]
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------------ demo (flags only)
def test_demo_hostile_flags_are_one_line(monkeypatch, no_model_load, usage_error):
    """The demo's flags are parsed before gradio and the model load; the server itself is tested elsewhere."""
    monkeypatch.setattr(demo, "load_app", no_model_load)
    cases = number_cases("demo", []) + choice_cases("demo", [])
    cases += [(["--port"], "expected one argument"), (["--share", "yes"], "unrecognized"), (["--bogus"], None)]
    check_all(usage_error, "demo", cases)


@given(data=st.data())
@FUZZ
def test_demo_drawn_invalid_numbers(monkeypatch, no_model_load, usage_error, data):
    monkeypatch.setattr(demo, "load_app", no_model_load)
    flag, parse, nargs = data.draw(st.sampled_from(number_flags("demo")), label="flag")
    problem = usage_error("demo", as_argv(flag, nargs, data.draw(invalid_number(parse), label="value"))[0])
    assert problem is None, problem


def test_the_demo_loader_checks_device_and_model_before_loading(no_model_load, hostile):
    """The demo loads through negguide.cli.generation.load_pipeline (the function itself here: no_model_load only
    replaced the module's name for it): the same checks, a ValueError naming the flag, before anything loads."""
    for device in device_cases():
        with pytest.raises(ValueError, match="--device"):
            load_pipeline(None, device)
    for model in model_cases(hostile):
        with pytest.raises(ValueError, match="--model"):
            load_pipeline(model, "cpu")
    with pytest.raises(ValueError, match="dtype"):
        load_pipeline(None, "cpu", "float64")


def test_numbers_are_fuzzed_for_every_command():
    """The tables above cover every number flag: each command has some, and each has hostile values."""
    for command in PARSERS:
        flags = number_flags(command)
        assert flags, command
        for _flag, parse, _nargs in flags:
            assert len(bad_numbers(parse)) >= 10 and not math.isnan(parse.low or 0)
