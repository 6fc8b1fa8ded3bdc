"""The demo's checks of client values, without a server (fast): messages without server paths, numbers, choices,
uploads refused on the path's text alone, the allow-list's labels, images refused from their header, and the
pipeline state restored after a request."""

from __future__ import annotations

import builtins
import io
import json
import os
import struct
import zlib

import pytest
import torch
from PIL import Image

from negguide.cli import demo_security as sec
from negguide.cli import demo_state


def test_messages_name_no_server_path():
    names = {"/srv/runs/lora": "allowed/lora", "/tmp/gradio/ab/x.safetensors": "the uploaded LoRA"}
    text = "cannot load the LoRA '/tmp/gradio/ab/x.safetensors': bad\n  header; also /srv/runs/lora and ~/.ssh/id_rsa"
    message = sec.client_message(text, names)
    assert message == "cannot load the LoRA 'the uploaded LoRA': bad header; also allowed/lora and <server path>"
    kept = "step 3/3 of runs/nft/lora (owner/name)"
    assert sec.client_message(kept) == kept  # relative paths, fractions and hub ids are no server paths
    assert "/usr" not in sec.client_message(RuntimeError("in /usr/lib/python3/x.py line 3"))


@pytest.mark.parametrize(
    "value, integer, expected",
    [
        (float("nan"), False, "is not a finite number"),
        (float("inf"), True, "is not a finite number"),
        (10**400, True, "is far outside its range"),
        (True, False, "must be a number, got true/false"),
        ("5", True, "must be a number, got text"),
        (None, False, "must be a number, got null"),
        ([1], False, "must be a number, got a list"),
        (1.5, True, "must be a whole number"),
    ],
)
def test_numbers_are_finite_json_numbers(value, integer, expected):
    with pytest.raises(sec.Rejected, match=expected):
        sec.number(value, "steps", integer)


def test_numbers_and_choices_that_pass():
    assert sec.number(4.0, "steps", True) == 4 and isinstance(sec.number(4.0, "steps", True), int)
    assert sec.number(2, "scale") == 2.0
    assert sec.choices("none", "methods", ("none", "plain")) == ("none",)
    with pytest.raises(sec.Rejected) as error:
        sec.choices(["/etc/passwd"], "methods", ("none", "plain"))
    assert "/etc/passwd" not in str(error.value) and "choose from none, plain" in str(error.value)


@pytest.fixture
def no_disk(monkeypatch):
    """Fail the test if anything opens or looks at a file."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"the disk was touched: {args[:1]}")

    for module, name in ((builtins, "open"), (os, "stat"), (os, "lstat")):
        monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize(
    "value",
    [
        "/etc/passwd",
        "../../x",
        "owner/name",
        "/tmp/gradio/../../etc/passwd",
        {"path": "/root/.ssh/id_rsa", "meta": {"_type": "gradio.FileData"}},
        {"url": "https://huggingface.co/owner/name/resolve/main/x.safetensors"},
        {"path": "http://127.0.0.1:9/x.png"},
        {"path": 5},
        5,
    ],
)
def test_a_file_value_outside_the_upload_folder_is_refused_unread(no_disk, value):
    with pytest.raises(sec.Rejected) as error:
        sec.check_upload(value, "reference image", root="/tmp/gradio")
    text = str(error.value)
    assert "uploaded" in text and "passwd" not in text and "owner/name" not in text and "/tmp" not in text


def _png(width: int, height: int, claim: tuple | None = None) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (220, 30, 30)).save(out, "PNG")
    data = bytearray(out.getvalue())
    if claim:  # patch the header (IHDR) to claim another size, and its CRC
        data[16:24] = struct.pack(">II", *claim)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    """A stand-in for gradio's upload folder: write(name, bytes) -> the payload gradio would hand over."""
    root = os.path.realpath(tmp_path)
    monkeypatch.setattr(sec, "upload_root", lambda: root)

    def write(name: str, data: bytes) -> dict:
        path = os.path.join(root, name)
        with open(path, "wb") as f:
            f.write(data)
        return {"path": path, "meta": {"_type": "gradio.FileData"}}

    return write


def test_images_are_refused_from_their_header_before_decoding(uploads, monkeypatch):
    from PIL import ImageFile

    decoded, load = [], ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or load(self))
    image = sec.read_image(uploads("ok.png", _png(16, 12)), "L", "reference mask")
    assert image.mode == "L" and image.size == (16, 12)
    for size in ((13000, 13000), (5000, 5000), (1, 20_000_000)):
        with pytest.raises(sec.Rejected, match="the limit is 16.8 megapixels"):
            sec.read_image(uploads("bomb.png", _png(8, 8, claim=size)), "RGB", "reference image")
        assert size not in decoded
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF")
    for name, data in (("x.tif", buffer.getvalue()), ("x.png", b"not an image")):
        with pytest.raises(sec.Rejected, match="cannot read the reference image: not a readable PNG"):
            sec.read_image(uploads(name, data), "RGB", "reference image")


def test_weights_uploads_must_be_safetensors(uploads):
    assert sec.uploaded_weights(uploads("a.safetensors", b"x"), "LoRA upload").endswith("a.safetensors")
    with pytest.raises(sec.Rejected, match="must be a .safetensors file"):
        sec.uploaded_weights(uploads("a.bin", b"x"), "LoRA upload")


def _safetensors(path: str, keys: list[str]) -> None:
    header = json.dumps(
        {k: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, k in enumerate(keys)}
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 4 * len(keys))


def test_the_allow_list_offers_labels_never_paths(tmp_path):
    root = tmp_path / "runs"
    _safetensors(str(root / "reneg" / "negative_embedding.safetensors"), ["prompt_embeds", "pooled_prompt_embeds"])
    _safetensors(str(root / "nft" / "lora" / "pytorch_lora_weights.safetensors"), ["x.lora_A.weight"])
    _safetensors(str(root / "single_lora.safetensors"), ["y.lora_B.weight"])
    _safetensors(str(root / "model.safetensors"), ["conv.weight"])  # neither: not offered
    (root / "broken.safetensors").write_bytes(b"\xff" * 20)
    outside = tmp_path / "outside.safetensors"
    _safetensors(str(outside), ["prompt_embeds"])
    os.symlink(outside, root / "link.safetensors")  # a link out of the folder: not offered
    allow = sec.AllowList()
    allow.scan(str(root))
    assert allow.labels("reneg") == ["runs/reneg/negative_embedding.safetensors"]
    assert sorted(allow.labels("lora")) == ["runs/nft/lora", "runs/single_lora.safetensors"]
    assert allow.resolve("lora", "runs/nft/lora") == str(root / "nft" / "lora")
    assert allow.resolve("reneg", None) is None
    for bad in (str(root / "reneg" / "negative_embedding.safetensors"), "../../x", "owner/name", 5, ["a"]):
        with pytest.raises(sec.Rejected, match="not one of those offered") as error:
            allow.resolve("reneg", bad)
        assert str(tmp_path) not in str(error.value)
    with pytest.raises(ValueError, match="is not a folder"):
        allow.scan(str(tmp_path / "missing"))


class _Pipe:
    """A stand-in pipeline: components with modules."""

    def __init__(self):
        self.components = {"transformer": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))}


def test_the_lock_restores_what_a_request_left(monkeypatch):
    pipe = _Pipe()
    layer = pipe.components["transformer"][0]

    def foreign(module, args):  # another library's hook (e.g. transformers' output capture) stays
        return None

    def ours(module, args):
        return None

    ours.__module__ = "negguide.negtome.hooks"  # a negguide method's hook, left behind by a failed request
    with pytest.raises(RuntimeError):
        with demo_state.exclusive(pipe):
            layer.register_forward_pre_hook(foreign)
            layer.register_forward_pre_hook(ours)
            layer._negguide_negtome = object()
            raise RuntimeError("out of memory")
    assert list(layer._forward_pre_hooks.values()) == [foreign]
    assert not hasattr(layer, "_negguide_negtome")
    assert (
        demo_state.pipeline_lock(pipe) is demo_state.pipeline_lock(pipe) and not demo_state.pipeline_lock(pipe).locked()
    )
