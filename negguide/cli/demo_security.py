"""What the demo takes from a client, checked before it reaches the model or the disk.

A client never names a server path or a hub id: ReNeg embeddings and LoRAs are uploads (size-capped by the server)
or choices from an allow-list (the bundled assets and what the operator's ``--allow-dir`` folders hold, offered by
label); images are uploads whose pixel count is read from the header and refused before decoding. Every value of
a request is checked for its type here (wrong types, NaN, huge numbers and unknown choices are refused with one
line that says what was wrong), and messages sent back name no server path (:func:`client_message`).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile

from negguide.cli.inputs import LORA_WEIGHTS_NAME, one_line
from negguide.shapeworld.assets import BUNDLED_EMBEDDINGS, BUNDLED_NFT_LORA

MAX_IMAGE_PIXELS = 4096 * 4096  # uploaded images: at most this many pixels, read from the header before decoding
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # the decoders an upload may reach (never EPS, PSD, ...)
SCAN_DEPTH = 4  # --allow-dir: folder levels searched for .safetensors files
SCAN_FILES = 2000  # --allow-dir: at most this many .safetensors files read (their headers only) per folder
HEADER_BYTES = 16 << 20  # a safetensors header larger than this is not an embedding's or a LoRA's
FILE_HINT = "upload a file through the page or gradio_client.handle_file"
# an absolute path (or ~/...) inside a message: what client_message never sends back
_ABS_PATH = re.compile(r"(?<![\w.\-~/])~?/[^\s'\"`,;()\[\]{}<>|]+")


class Rejected(ValueError):
    """A request value refused before any compute; its message is safe to show to the client."""


# ---------------------------------------------------------------------------------------------- messages
def client_message(error: BaseException | str, names: dict | None = None, limit: int = 400) -> str:
    """``error`` on one line for a client: the server paths in ``names`` (path -> what the client calls it)
    replaced by their names, then any other absolute path by ``<server path>``."""
    text = " ".join(str(error).split()) or type(error).__name__
    for path, name in sorted((names or {}).items(), key=lambda item: -len(item[0])):
        text = text.replace(path, name)
    return one_line(_ABS_PATH.sub("<server path>", text), limit)


def _kind(value) -> str:
    """The JSON name of a value's type, for messages (the value itself is never echoed)."""
    for types, name in ((bool, "true/false"), ((int, float), "a number"), (str, "text"), ((list, tuple), "a list")):
        if isinstance(value, types):
            return name
    return "null" if value is None else "an object" if isinstance(value, dict) else type(value).__name__


def model_name(pipe) -> str:
    """The model as the page names it: a hub id, or only a local folder's name (never a server path)."""
    name = str(getattr(pipe, "name_or_path", "") or "a local model")
    return os.path.basename(os.path.normpath(name)) if os.path.isabs(name) or os.path.isdir(name) else name


# ---------------------------------------------------------------------------------------------- plain values
def text(value, name: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Rejected(f"the {name} must be text, got {_kind(value)}")
    if len(value) > limit:
        raise Rejected(f"the {name} has {len(value)} characters; the limit is {limit}")
    return value


def number(value, name: str, integer: bool = False) -> int | float:
    """A finite JSON number (a whole one with ``integer``); its range is the settings' to check."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(f"{name} must be a number, got {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise Rejected(f"{name} = {value} is not a finite number")
    if abs(value) > 1e15:
        raise Rejected(f"{name} is far outside its range")
    if integer:
        if value != int(value):
            raise Rejected(f"{name} = {value} must be a whole number")
        return int(value)
    return float(value)


def flag(value, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise Rejected(f"{name} must be true or false, got {_kind(value)}")
    return value


def choices(value, name: str, known) -> tuple:
    """A list of names from ``known`` (a single name is a list of one); an unknown one is named only when it is a
    short plain word (never a path)."""
    if value is None:
        return ()
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise Rejected(f"the {name} must be a list of names from {list(known)}")
    unknown = [v for v in value if v not in known]
    if unknown:
        word = f" {unknown[0]!r}" if re.fullmatch(r"[\w-]{1,30}", unknown[0]) else ""
        raise Rejected(f"unknown {name[:-1] if name.endswith('s') else name}{word}: choose from {', '.join(known)}")
    return tuple(value)


# ---------------------------------------------------------------------------------------------- uploads
def upload_root() -> str:
    """gradio's upload folder (where every uploaded file and the app's outputs live)."""
    try:
        from gradio.utils import get_upload_folder

        root = get_upload_folder()
    except ImportError:
        root = os.environ.get("GRADIO_TEMP_DIR") or os.path.join(tempfile.gettempdir(), "gradio")
    return os.path.realpath(os.path.abspath(root))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def payload_path(value) -> str | None:
    """The path a gradio file payload (a FileData dict) names, without touching the disk; None for no file."""
    return value.get("path") if isinstance(value, dict) else value


def check_upload(value, name: str, root: str | None = None) -> None:
    """Refuse a file payload that is not an upload of this server: not a FileData, a URL (the server would fetch
    it), or a path outside gradio's upload folder. Only the text of the path is read, never the disk."""
    if value is None:
        return
    path = payload_path(value)
    if isinstance(value, dict) and path is None and value.get("url"):
        raise Rejected(f"the {name} must be an uploaded file, not a URL: {FILE_HINT}")
    if not isinstance(path, str) or not path or "\x00" in path or "://" in path or not os.path.isabs(path):
        raise Rejected(f"the {name} must be a file uploaded to this demo: {FILE_HINT}")
    if not _inside(os.path.normpath(path), root or upload_root()):
        raise Rejected(f"the {name} was not uploaded to this demo: {FILE_HINT}")


def upload_path(value, name: str) -> str | None:
    """The server path of an uploaded file (checked by :func:`check_upload`), or None for no file."""
    if value is None:
        return None
    root = upload_root()
    check_upload(value, name, root)
    real = os.path.realpath(os.path.normpath(payload_path(value)))
    if not _inside(real, root) or not os.path.isfile(real):  # a link out, or an upload deleted since (after an hour)
        raise Rejected(f"the {name} is no longer on the server: upload it again")
    return real


def read_image(value, mode: str, name: str):
    """An uploaded image as a PIL image in ``mode``; its size is read from the header and refused above
    MAX_IMAGE_PIXELS before any pixel is decoded; only the IMAGE_FORMATS decoders are used."""
    from PIL import Image

    path = upload_path(value, name)
    if path is None:
        return None
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height <= MAX_IMAGE_PIXELS:
                image.load()
                return image.convert(mode)
    except Image.DecompressionBombError:
        width, height = None, None
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # not an image, a damaged one, another format
        raise Rejected(
            f"cannot read the {name}: not a readable {', '.join(IMAGE_FORMATS)} image ({type(error).__name__})"
        ) from None
    size = f" is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels);" if width else " has too many pixels;"
    raise Rejected(f"the {name}{size} the limit is {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels (e.g. 4096x4096)")


def uploaded_weights(value, name: str) -> str | None:
    """The server path of an uploaded .safetensors file (embedding or LoRA), or None."""
    path = upload_path(value, name)
    if path is not None and not path.endswith(".safetensors"):
        raise Rejected(f"the {name} must be a .safetensors file (negguide never unpickles weights)")
    return path


def install_pixel_guard(limit: int = MAX_IMAGE_PIXELS) -> None:
    """PIL refuses (DecompressionBombError) any image above twice ``limit`` pixels, in every decoder of the process."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > limit:
        Image.MAX_IMAGE_PIXELS = limit


# ---------------------------------------------------------------------------------------------- allow-list
def safetensors_kind(path: str) -> str | None:
    """ "reneg" (a negative embedding), "lora" or None, from the header's tensor names only."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > HEADER_BYTES:
                return None
            keys = set(json.loads(f.read(size))) - {"__metadata__"}
    except (OSError, ValueError, struct.error):
        return None
    if "prompt_embeds" in keys:
        return "reneg"
    return "lora" if any("lora" in key.lower() for key in keys) else None


class AllowList:
    """The embeddings and LoRAs a client may choose, by label: the bundled ones of the loaded model and those found
    in the operator's folders (read once, at start). A label is never an absolute path; a client's choice is looked
    up here and nowhere else."""

    KINDS = {"reneg": "ReNeg embedding", "lora": "LoRA"}

    def __init__(self, reneg: dict | None = None, lora: dict | None = None):
        self.offers = {"reneg": dict(reneg or {}), "lora": dict(lora or {})}

    @classmethod
    def build(cls, pipe, folders=()) -> AllowList:
        allow = cls()
        model = getattr(pipe, "negguide_shapeworld", None)
        embedding = BUNDLED_EMBEDDINGS.get(model)
        if embedding and os.path.isfile(embedding):
            allow._add("reneg", f"bundled ShapeWorld embedding ({model})", embedding)
        if getattr(pipe, "negguide_bundled", False) and os.path.isfile(
            os.path.join(BUNDLED_NFT_LORA, LORA_WEIGHTS_NAME)
        ):
            allow._add("lora", "bundled DiffusionNFT LoRA", BUNDLED_NFT_LORA)
        for folder in folders:
            allow.scan(folder)
        return allow

    def _add(self, kind: str, label: str, path: str) -> None:
        offers, base, n = self.offers[kind], label, 1
        while label in offers:
            n += 1
            label = f"{base} ({n})"
        offers[label] = os.path.normpath(path)

    def scan(self, folder: str) -> None:
        """Offer the negative embeddings and LoRAs (a .safetensors file, or a folder holding the trainer's
        pytorch_lora_weights.safetensors) under ``folder``, labelled by their path inside it."""
        root = os.path.realpath(folder)
        if not os.path.isdir(root):
            raise ValueError(f"--allow-dir {folder!r} is not a folder")
        top, count = os.path.basename(root) or "root", 0
        for dirpath, dirnames, filenames in os.walk(root):  # symlinked folders are not entered
            depth = 0 if dirpath == root else os.path.relpath(dirpath, root).count(os.sep) + 1
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < SCAN_DEPTH else []
            for name in sorted(f for f in filenames if f.endswith(".safetensors") and not f.startswith(".")):
                path = os.path.join(dirpath, name)
                if not _inside(os.path.realpath(path), root):
                    continue  # a link out of the folder
                count += 1
                if count > SCAN_FILES:
                    return
                kind = safetensors_kind(path)
                if kind == "lora" and name == LORA_WEIGHTS_NAME and dirpath != root:
                    path = dirpath  # a trainer's LoRA folder
                if kind is not None:
                    self._add(kind, os.path.join(top, os.path.relpath(path, root)), path)

    def labels(self, kind: str) -> list[str]:
        return list(self.offers[kind])

    def names(self) -> dict:
        """Server path -> label, for :func:`client_message`."""
        return {path: label for offers in self.offers.values() for label, path in offers.items()}

    def resolve(self, kind: str, label) -> str | None:
        """The server path of an offered label (None for no choice); anything else is refused unread."""
        if label is None or label == "":
            return None
        what, offers = self.KINDS[kind], self.offers[kind]
        if not isinstance(label, str) or label not in offers:
            shown = ", ".join(repr(k) for k in list(offers)[:8]) + (", ..." if len(offers) > 8 else "")
            listed = f"one of {shown}" if offers else "none are offered (the operator adds folders with --allow-dir)"
            raise Rejected(f"the {what} choice is not one of those offered: choose {listed}, or upload a .safetensors")
        if not os.path.exists(offers[label]):
            raise Rejected(f"the {what} {label!r} is no longer on the server; ask the operator to restart the demo")
        return offers[label]


# ---------------------------------------------------------------------------------------------- the form
def request_from_form(form: dict, allow: AllowList, rows: int = 3) -> tuple:
    """The demo's /generate values (by the handler's parameter names) -> (a GenerateRequest, server path -> name for
    :func:`client_message`). Every value is checked here, files and choices only where a chosen method reads them."""
    from negguide.cli import generation as gen
    from negguide.perpneg.settings import PerpNegSettings

    def num(key: str, name: str, integer: bool = False):
        return number(form.get(key), name, integer)

    prompt = text(form.get("prompt"), "prompt", gen.MAX_PROMPT_CHARS)
    methods = choices(form.get("methods"), "methods", tuple(gen.METHODS))
    negatives = []
    for i in range(1, rows + 1):
        negative = text(form.get(f"negative_{i}"), f"negative {i}", gen.MAX_PROMPT_CHARS).strip()
        weight, start, end = (
            num(f"weight_{i}", f"weight {i}"),
            num(f"start_{i}", f"from {i}"),
            num(f"end_{i}", f"to {i}"),
        )
        if negative:
            negatives.append((negative, weight, (start, end)))
    size = num("size", "size", True)
    negtome = dict(alpha=num("negtome_alpha", "NegToMe alpha"), threshold=num("negtome_threshold", "NegToMe threshold"))
    negtome["window"] = (num("negtome_low", "NegToMe window low"), num("negtome_high", "NegToMe window high"))
    for key, name in (("reference", "reference image"), ("reference_mask", "reference mask")):
        check_upload(form.get(key), name)
    reference = mask = reneg = lora = None
    if "negtome-reference" in methods:
        reference = read_image(form.get("reference"), "RGB", "reference image")
        mask = read_image(form.get("reference_mask"), "L", "reference mask")
    names = allow.names()
    for kind, method, hint in (("reneg", "reneg", "negguide train-reneg"), ("lora", "nft-lora", "negguide train-nft")):
        what = AllowList.KINDS[kind]
        choice = allow.resolve(kind, form.get(f"{kind}_choice"))
        check_upload(form.get(f"{kind}_file"), f"{what} upload")
        if method not in methods:
            continue
        upload = uploaded_weights(form.get(f"{kind}_file"), f"{what} upload")
        if upload:
            names[upload] = f"the uploaded {what}"
        path = upload or choice
        if path is None:
            raise Rejected(f"{method} needs a {what}: choose one or upload a .safetensors written by `{hint}`")
        reneg, lora = (path, lora) if kind == "reneg" else (reneg, path)
    request = gen.GenerateRequest(
        prompt=prompt,
        methods=methods,
        perp_neg=PerpNegSettings(
            negatives=[r[0] for r in negatives],
            negative_weights=[r[1] for r in negatives],
            negative_windows=[r[2] for r in negatives],
        ),
        sampling=gen.SamplingSettings(
            seed=num("seed", "seed", True),
            steps=num("steps", "steps", True),
            height=size,
            width=size,
            batch=num("batch", "images per method", True),
            guidance_scale=num("guidance_scale", "guidance scale"),
        ),
        negtome_overrides=negtome if flag(form.get("negtome_custom"), "custom NegToMe settings") else {},
        nag_overrides={} if form.get("nag_scale") is None else {"negative_weights": [num("nag_scale", "NAG scale")]},
        reference_image=reference,
        reference_mask=mask,
        reneg=reneg,
        lora=lora,
        lora_scale=num("lora_scale", "LoRA scale"),
        with_negatives=flag(form.get("with_negatives"), "also apply the negatives"),
    )
    return request, names
