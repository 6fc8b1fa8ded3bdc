"""What the fuzz tests share: hostile files on disk, a guard that fails a test when a model starts to load, and the
check of the command line's contract for bad input (exit status 2, one line on stderr, no traceback)."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from safetensors.torch import save_file

from negguide.cli import main as cli_main

FORMAT = "negguide.negative-embedding/1"


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb): PIL refuses it on open."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def hostile(tmp_path_factory) -> dict:
    """Paths that no flag should accept: missing, folders, empty and garbage files, damaged or foreign safetensors
    files, embeddings without their metadata or tensors, images PIL cannot or will not open."""
    root = tmp_path_factory.mktemp("hostile")
    paths = {
        "missing": root / "missing" / "nothing.safetensors",
        "empty_dir": root / "empty_dir",
        "dir": root / "a_folder",
        "empty_file": root / "empty.txt",
        "garbage": root / "garbage.safetensors",
        "text": root / "notes.txt",
        "under_file": root / "notes.txt" / "below",
        "truncated": root / "truncated.safetensors",
        "no_format": root / "no_format.safetensors",
        "no_family": root / "no_family.safetensors",
        "bad_family": root / "bad_family.safetensors",
        "wrong_tensors": root / "wrong_tensors.safetensors",
        "int_tensor": root / "int_tensor.safetensors",
        "nan_tensor": root / "nan_tensor.safetensors",
        "no_tensors": root / "no_tensors.safetensors",
        "png": root / "image.png",
        "bomb_png": root / "bomb.png",
        "garbage_png": root / "garbage.png",
        "reward_dir": root / "damaged_reward",
    }
    paths["empty_dir"].mkdir()
    paths["dir"].mkdir()
    (paths["dir"] / "readme.txt").write_text("no model here")
    paths["empty_file"].write_bytes(b"")
    paths["garbage"].write_bytes(bytes(range(256)) * 8)
    paths["text"].write_text("hello\n")
    meta = {"format": FORMAT, "family": "sd"}
    save_file({"prompt_embeds": torch.zeros(1, 4, 8)}, str(paths["no_family"]), metadata={"format": FORMAT})
    save_file({"prompt_embeds": torch.zeros(1, 4, 8)}, str(paths["no_format"]), metadata={"family": "sd"})
    save_file({"prompt_embeds": torch.zeros(1, 4, 8)}, str(paths["bad_family"]), metadata={**meta, "family": "sd9"})
    save_file({"other": torch.zeros(1, 4, 8)}, str(paths["wrong_tensors"]), metadata=meta)
    save_file({"prompt_embeds": torch.zeros(1, 4, 8, dtype=torch.int64)}, str(paths["int_tensor"]), metadata=meta)
    save_file({"prompt_embeds": torch.full((1, 4, 8), float("nan"))}, str(paths["nan_tensor"]), metadata=meta)
    save_file({}, str(paths["no_tensors"]), metadata=meta)
    paths["truncated"].write_bytes(paths["no_family"].read_bytes()[:-17])
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(paths["png"])
    _png_header_only(paths["bomb_png"], 40000, 40000)
    paths["garbage_png"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    paths["reward_dir"].mkdir()
    (paths["reward_dir"] / "config.json").write_text("{not json")
    (paths["reward_dir"] / "model.safetensors").write_bytes(b"\x00" * 32)
    return {name: str(path) for name, path in paths.items()}


class ModelLoaded(BaseException):
    """A pipeline started to load (a BaseException: no ``except Exception`` of the code under test stops it)."""


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any pipeline starts to load: flag errors must be refused before that."""

    def refuse(*args, **kwargs):
        raise ModelLoaded(f"a model started to load before the bad input was refused (loader args {args!r})")

    from diffusers import DiffusionPipeline

    import negguide.cli.bench as bench_cli
    import negguide.cli.generate as generate_cli
    import negguide.cli.generation as generation
    import negguide.shapeworld.bench as shapeworld_bench
    from negguide.perpneg.pipeline import PerpNegPipeline

    monkeypatch.setattr(generate_cli, "load_pipeline", refuse)
    monkeypatch.setattr(generation, "load_pipeline", refuse)
    monkeypatch.setattr(bench_cli, "load_bench_pipeline", refuse)
    monkeypatch.setattr(shapeworld_bench, "load_bench_pipeline", refuse)
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", refuse)
    monkeypatch.setattr(PerpNegPipeline, "from_pretrained", refuse)
    return refuse


def run_cli(argv: list) -> tuple:
    """``negguide ARGV`` in this process: (exit status, stderr) with the stderr captured by the caller's capsys."""
    try:
        return cli_main(list(argv))
    except SystemExit as stop:  # argparse's --help (never an error: ArgumentParser.error raises UsageError)
        return stop.code


@pytest.fixture
def usage_error(capsys):
    """``usage_error(command, argv, contains=None, loads=False)``: None when ``negguide command argv`` exits 2 with
    exactly one line on stderr (``negguide COMMAND: ...``, saying ``contains``) and no traceback, else a description
    of what happened instead. ``loads``: a model loads first, and its progress bars may precede that line."""

    def check(command: str, argv: list, contains: str | None = None, loads: bool = False) -> str | None:
        capsys.readouterr()
        try:
            code = run_cli([command, *argv])
        except ModelLoaded as error:
            capsys.readouterr()
            return f"{argv!r}: {error}"
        except Exception as error:  # a bug: report which input raised what
            capsys.readouterr()
            return f"{argv!r}: raised {type(error).__name__}: {error}"
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        if loads:  # a model loaded first: its progress bars may precede the error line, which must be the last
            lines = [line for line in lines if line.startswith("negguide ")] if lines else lines
            if lines and not captured.err.rstrip().endswith(lines[-1]):
                return f"{argv!r}: the error is not the last line of stderr: {captured.err[-500:]!r}"
        if code != 2:
            return f"{argv!r}: exit status {code}, stderr {captured.err[-300:]!r}"
        if len(lines) != 1 or not lines[0].startswith(f"negguide {command}: ") or "Traceback" in captured.err:
            return f"{argv!r}: stderr is not one line: {captured.err[-500:]!r}"
        if contains is not None and contains not in lines[0]:
            return f"{argv!r}: {lines[0]!r} does not say {contains!r}"
        return None

    return check
