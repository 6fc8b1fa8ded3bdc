"""The demo under attack: the API only through the queue, one request at a time on the shared pipeline (restored
after each), no client value reaching a server path or a hub, capped uploads and images, no server path in /config,
and a clear one-line error for every hostile value, the server answering after each."""

from __future__ import annotations

import builtins
import json
import os
import re
import socket
import struct
import tempfile
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs gradio: pip install 'negguide[demo]'")
gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

from helpers import make_assets  # noqa: E402

from negguide.cli import demo_security as sec  # noqa: E402
from negguide.cli import generation as gen  # noqa: E402
from negguide.cli import main as cli  # noqa: E402
from negguide.cli.demo import load_app  # noqa: E402

pytestmark = pytest.mark.slow  # starts the demo on the bundled ShapeWorld model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(steps=2, size=32, batch=2)
HOSTILE = [
    "/etc/passwd",
    "/etc/shadow",
    "/root/.ssh/id_rsa",
    "../../x",
    "owner/name",
    "~/.cache/x",
    "file:///etc/passwd",
]


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def pipe():
    return gen.load_pipeline(device="cpu")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, pipe):
    """An --allow-dir folder: a negative embedding (neg.safetensors) and a LoRA folder (lora/) of this model."""
    return make_assets(str(tmp_path_factory.mktemp("allowed")), pipe)


@pytest.fixture(scope="module")
def server(app, pipe, assets):
    """The page with its example comparison, the assets' folder allowed, uploads capped at 1 MiB: (demo, url)."""
    folder = os.path.dirname(assets["reneg"])
    example = dict(methods=["none"], steps=1, batch=2)  # a small example comparison: its images come by an event
    demo = app.build_app(pipe, run_example=True, example=example, allow_dirs=[folder])
    url = app.serve(demo, app.free_port(), block=False, max_upload_mb=1)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server[1], verbose=False)


@pytest.fixture(scope="module")
def defaults(server):
    """/generate's parameters in order, with the page's values: what a raw HTTP client sends."""
    info = httpx.get(server[1] + "gradio_api/info", timeout=30).json()
    return {p["parameter_name"]: p["parameter_default"] for p in info["named_endpoints"]["/generate"]["parameters"]}


def predict(client, **inputs):
    return client.predict(api_name="/generate", **{**SMALL, "methods": ["none"], **inputs})


def pixels(result) -> list:
    return [np.asarray(Image.open(item["image"]).convert("RGB")) for item in result[0]]


def raw_call(url: str, defaults: dict, body: str | None = None, **values) -> tuple[str, object]:
    """POST /gradio_api/call/generate as any HTTP client can (NaN, wrong types, file payloads naming server paths),
    then read the event stream: ("complete", data), ("error", message) or ("http <status>", text)."""
    if body is None:
        data = {**defaults, **SMALL, "methods": ["none"], **values}
        body = json.dumps({"data": [data[name] for name in defaults]})  # json.dumps writes NaN and Infinity
    posted = httpx.post(url + "gradio_api/call/generate", content=body, headers={"content-type": "application/json"})
    if posted.status_code != 200:
        return f"http {posted.status_code}", posted.text
    stream = httpx.get(url + f"gradio_api/call/generate/{posted.json()['event_id']}", timeout=120).text
    event, data = re.findall(r"event: (\w+)\ndata: (.*)", stream)[-1]
    data = json.loads(data)
    return event, data.get("error") if event == "error" and isinstance(data, dict) else data


def check_message(message, *forbidden):
    """A rejection says what was wrong, on one line, without a traceback or a server path."""
    assert isinstance(message, str) and message.strip(), f"no message: {message!r}"
    assert "\n" not in message and "Traceback" not in message, message
    for text in (REPO, os.getcwd(), "/tmp", tempfile.gettempdir(), sec.upload_root(), *forbidden):
        assert text not in message, f"{text!r} in {message!r}"


def still_serves(client):
    assert len(predict(client, prompt="a circle", steps=1, batch=1)[0]) == 1


def png_claiming(width: int, height: int) -> bytes:
    """A tiny real PNG whose header (IHDR) claims width x height pixels: a decompression bomb's header."""
    import io

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "PNG")
    data = bytearray(out.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[12 : ihdr + 13])) & 0xFFFFFFFF)
    return bytes(data)


def form(**values) -> dict:
    """Every value of the form, for a direct call of the handler (no gradio in between)."""
    rows = {f"{k}_{i}": v for i in (1, 2, 3) for k, v in dict(negative="", weight=1.0, start=0.0, end=1.0).items()}
    base = dict(prompt="a circle", methods=["none"], seed=0, guidance_scale=5.0, with_negatives=False, lora_scale=1.0)
    base.update(reference=None, reference_mask=None, reneg_choice=None, reneg_file=None, lora_choice=None)
    base.update(lora_file=None, negtome_custom=False, negtome_alpha=0.9, negtome_threshold=0.7)
    base.update(negtome_low=0.8, negtome_high=1.0, **SMALL)
    return {**rows, **base, **values}


@pytest.fixture
def overlap(monkeypatch):
    """gen.run wrapped to count the generations running at once: {"now", "most", "calls"}."""
    state, lock, run = dict(now=0, most=0, calls=0), threading.Lock(), gen.run

    def counted(*args, **kwargs):
        with lock:
            state["now"] += 1
            state["calls"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            return run(*args, **kwargs)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(gen, "run", counted)
    return state


# ------------------------------------------------------------------------------------------- the queue and the lock
def test_direct_run_posts_are_closed_and_the_api_goes_through_the_queue(server, client, overlap):
    _, url = server
    generate = next(i for i, fn in server[0].fns.items() if fn.api_name == "generate")
    for route, body in (("run/generate", {}), ("api/generate", {}), ("run/predict", {"fn_index": generate})):
        answer = httpx.post(url + f"gradio_api/{route}", json={"data": [], **body}, timeout=30)
        assert answer.status_code == 404 and "queue" in answer.text, answer.text
    assert overlap["calls"] == 0
    still_serves(client)
    info = httpx.get(url + "gradio_api/info", timeout=30).json()
    assert list(info["named_endpoints"]) == ["/generate"] and not info.get("unnamed_endpoints")


def test_concurrent_requests_run_one_at_a_time_and_equal_the_same_requests_alone(server, client, assets, overlap):
    _, url = server
    lora = dict(methods=["nft-lora"], lora_choice=os.path.basename(os.path.dirname(assets["reneg"])) + "/lora")
    alone = {"none": pixels(predict(client)), "lora": pixels(predict(client, **lora))}
    assert not all(np.array_equal(a, b) for a, b in zip(alone["none"], alone["lora"])), "the LoRA changes nothing"
    clients = [gradio_client.Client(url, verbose=False) for _ in range(4)]
    kinds = ["none", "lora"] * 2
    jobs = [
        c.submit(api_name="/generate", **{**SMALL, "methods": ["none"], **(lora if k == "lora" else {})})
        for c, k in zip(clients, kinds)
    ]
    for kind, job in zip(kinds, jobs):
        got = pixels(job.result(timeout=300))
        assert all(np.array_equal(a, b) for a, b in zip(got, alone[kind])), f"a {kind} request saw another's state"
    assert overlap["most"] == 1 and overlap["calls"] == 2 + len(jobs)


def test_the_lock_serialises_calls_that_bypass_the_queue(app, pipe, assets, overlap):
    """The second line of defence: the handler itself, called from threads at once (no gradio queue)."""
    handler = app.make_handler(pipe, sec.AllowList.build(pipe, [os.path.dirname(assets["reneg"])]))
    lora = dict(methods=["nft-lora"], lora_choice=os.path.basename(os.path.dirname(assets["reneg"])) + "/lora")
    quiet = lambda *args, **kwargs: None  # noqa: E731
    requests = [form(), form(**lora)] * 2
    alone = [handler(**values, progress=quiet) for values in requests[:2]]
    results: dict = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, handler(**requests[i], progress=quiet)))
        for i in range(len(requests))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert overlap["most"] == 1 and len(results) == len(requests)
    for i, result in results.items():
        for (image, _), (expected, _) in zip(result[0], alone[i % 2][0]):
            assert np.array_equal(np.asarray(image), np.asarray(expected)), f"request {i} saw another's state"


def test_a_request_that_fails_midway_leaves_the_pipeline_as_it_was(app, pipe, monkeypatch):
    """A request that loads a LoRA and installs NegToMe's hooks, then crashes, must not leak them to the next."""
    from negguide.cli.inputs import LORA_ADAPTER
    from negguide.negtome.hooks import NegToMeHandle
    from negguide.negtome.settings import NegToMeSettings
    from negguide.shapeworld.assets import BUNDLED_NFT_LORA

    handler, quiet = app.make_handler(pipe), lambda *args, **kwargs: None
    before = handler(**form(), progress=quiet)

    def leaky(pipe, request, progress=None):
        pipe.family_pipeline().load_lora_weights(BUNDLED_NFT_LORA, adapter_name=LORA_ADAPTER, use_safetensors=True)
        inner = pipe.family_pipeline()
        NegToMeHandle(pipe.transformer, pipe.family, NegToMeSettings(), lambda rows: rows, inner.scheduler).install()
        raise RuntimeError("out of memory")

    monkeypatch.setattr(gen, "run", leaky)
    with pytest.raises(Exception, match="generation failed"):
        handler(**form(), progress=quiet)
    monkeypatch.undo()
    modules = list(pipe.transformer.modules())
    assert not any(type(m).__module__.startswith("peft.") for m in modules), "the LoRA stayed loaded"
    assert getattr(pipe.transformer, "_negguide_negtome", None) is None, "NegToMe stayed applied"
    after = handler(**form(), progress=quiet)
    for (a, _), (b, _) in zip(before[0], after[0]):
        assert np.array_equal(np.asarray(a), np.asarray(b)), "the failed request changed the next one"
    assert len(handler(**form(methods=["negtome"]), progress=quiet)[0]) == 2  # NegToMe applies again


# ------------------------------------------------------------------------------------------- server paths and hubs
@pytest.fixture
def touched(monkeypatch):
    """Every path opened or looked at (open, os.stat, os.lstat) and every host name resolved, while a test runs."""
    seen: list = []
    real_open, real_stat, real_lstat, real_resolve = builtins.open, os.stat, os.lstat, socket.getaddrinfo

    def record(real):
        def wrapper(target, *args, **kwargs):
            seen.append(str(target))
            return real(target, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(builtins, "open", record(real_open))
    monkeypatch.setattr(os, "stat", record(real_stat))
    monkeypatch.setattr(os, "lstat", record(real_lstat))
    monkeypatch.setattr(socket, "getaddrinfo", record(real_resolve))
    return seen


def _reached(seen: list, value: str) -> list:
    """The recorded paths and hosts that a hostile value names (e.g. any path ending in /etc/passwd or /x)."""
    tail = value.replace("file://", "").replace("~/", "").lstrip("./")
    return [s for s in seen if s == tail or s.endswith("/" + tail) or s.endswith("/" + value)]


@pytest.mark.parametrize("value", HOSTILE)
def test_no_client_value_reaches_a_server_path_or_a_hub(server, client, defaults, touched, value):
    _, url = server
    attempts = [
        ("reneg_choice", value, ["reneg"]),
        ("lora_choice", value, ["nft-lora"]),
        ("reference", {"path": value, "meta": {"_type": "gradio.FileData"}}, ["negtome-reference"]),
        ("reference", {"path": os.path.join(sec.upload_root(), "..", "..", value.lstrip("/"))}, ["negtome-reference"]),
        ("reneg_file", {"path": value, "orig_name": "x.safetensors"}, ["reneg"]),
        ("lora_file", {"url": "https://huggingface.co/" + value, "meta": {"_type": "gradio.FileData"}}, ["nft-lora"]),
        ("lora_file", value, ["nft-lora"]),
    ]
    for name, payload, methods in attempts:
        event, message = raw_call(url, defaults, **{name: payload, "methods": methods})
        assert event == "error", (name, payload, event, message)
        check_message(message, value)
        assert "offered" in message or "upload" in message, message
    assert not _reached(touched, value), _reached(touched, value)
    assert not [s for s in touched if "huggingface" in s], "a hub was contacted"
    still_serves(client)


def test_an_allowed_server_path_is_not_a_choice_either(server, client, assets):
    with pytest.raises(Exception) as error:
        predict(client, methods=["reneg"], reneg_choice=assets["reneg"])  # a real file, named by its path
    check_message(str(error.value), assets["reneg"])
    assert "not one of those offered" in str(error.value)


def test_the_allowed_folders_are_offered_by_name_and_equal_an_upload(server, client, assets):
    folder = os.path.basename(os.path.dirname(assets["reneg"]))
    config = httpx.get(server[1] + "config", timeout=30).text
    assert f"{folder}/neg.safetensors" in config and f"{folder}/lora" in config
    chosen = pixels(predict(client, methods=["reneg"], reneg_choice=f"{folder}/neg.safetensors"))
    uploaded = pixels(predict(client, methods=["reneg"], reneg_file=gradio_client.handle_file(assets["reneg"])))
    assert all(np.array_equal(a, b) for a, b in zip(chosen, uploaded))


def test_a_wrong_upload_is_named_by_what_it_is_not_by_its_server_path(client, assets):
    wrong = [
        (dict(methods=["nft-lora"], lora_file=gradio_client.handle_file(assets["reneg"])), "no LoRA weights"),
        (dict(methods=["reneg"], reneg_file=gradio_client.handle_file(assets["reference"])), ".safetensors file"),
        (dict(methods=["negtome-reference"], reference=gradio_client.handle_file(assets["reneg"])), "cannot read"),
    ]
    for inputs, expected in wrong:
        with pytest.raises(Exception) as error:
            predict(client, **inputs)
        check_message(str(error.value))
        assert expected in str(error.value), str(error.value)
    still_serves(client)


# ------------------------------------------------------------------------------------------- uploads and images
@pytest.mark.parametrize("width, height", [(13000, 13000), (5000, 5000)])
def test_an_image_header_claiming_too_many_pixels_is_refused_before_decoding(
    client, tmp_path, monkeypatch, width, height
):
    from PIL import ImageFile

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(width, height))
    assert bomb.stat().st_size < 1000 and struct.unpack(">II", bomb.read_bytes()[16:24]) == (width, height)
    decoded, load = [], ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or load(self))
    with pytest.raises(Exception) as error:
        predict(client, methods=["negtome-reference"], reference=gradio_client.handle_file(str(bomb)))
    check_message(str(error.value))
    assert "pixels" in str(error.value) and "limit is 16.8 megapixels" in str(error.value), str(error.value)
    assert (width, height) not in decoded, "the image was decoded before its size was checked"
    still_serves(client)


def _big_files(folder: str) -> set:
    """Files of 1 MiB or more under ``folder``."""
    found = set()
    for parent, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(parent, name)
            try:
                if os.path.isfile(path) and os.path.getsize(path) >= 1 << 20:
                    found.add(path)
            except OSError:
                pass
    return found


def test_uploads_are_capped_in_bytes(server, client):
    _, url = server
    before = _big_files(sec.upload_root())  # where gradio spools an upload while it arrives
    name = "negguide_too_big_probe.safetensors"
    answer = httpx.post(url + "gradio_api/upload", files={"files": (name, b"\0" * (1 << 20) + b"\0")}, timeout=60)
    assert answer.status_code == 413 and "maximum allowed size" in answer.text
    assert _big_files(sec.upload_root()) - before == set(), "a refused upload was left on disk"
    still_serves(client)


def test_uploads_are_removed_when_the_demo_stops(app, pipe):
    demo = app.build_app(pipe, run_example=False)
    url = app.serve(demo, app.free_port(), block=False, max_upload_mb=1)
    try:
        answer = httpx.post(url + "gradio_api/upload", files={"files": ("probe.safetensors", b"\0" * 1000)})
        path = answer.json()[0]
        assert os.path.isfile(path)
    finally:
        demo.close()
    assert not os.path.exists(path)


# ------------------------------------------------------------------------------------------- /config
def test_config_names_no_server_path(server, assets):
    _, url = server
    config = httpx.get(url + "config", timeout=30).text
    json.loads(config)
    home = os.path.expanduser("~") + "/"
    for text in (os.getcwd(), REPO, "/tmp", tempfile.gettempdir(), sec.upload_root(), os.path.dirname(assets["reneg"])):
        assert text not in config, f"/config holds {text!r}"
    assert home == "//" or home not in config
    page = httpx.get(url, timeout=30).text
    assert "/tmp" not in page and REPO not in page


def test_the_example_comparison_is_sent_by_an_event(server, client):
    """The page still opens with the example: its images come with the page's load event, not in /config."""
    demo, _ = server
    loads = [fn for fn in demo.fns.values() if any(t[1] == "load" for t in fn.targets)]
    assert len(loads) == 1 and not loads[0].inputs  # it takes nothing from a client
    gallery, grid, reference = loads[0].fn()
    assert len(gallery) == 2 and grid is not None and reference is not None


# ------------------------------------------------------------------------------------------- hostile values
NAN, INF = float("nan"), float("inf")
FUZZ = [
    (dict(prompt=123), "prompt must be text"),
    (dict(prompt=["a"]), "prompt must be text"),
    (dict(prompt=""), "the prompt is empty"),
    (dict(prompt="a" * 100_000), "the limit is 300"),
    (dict(methods="bogus"), "unknown method 'bogus'"),
    (dict(methods=["/etc/passwd"]), "unknown method: choose from"),
    (dict(methods=[1]), "methods must be a list of names"),
    (dict(methods={"none": 1}), "methods must be a list of names"),
    (dict(methods=[]), "choose at least one method"),
    (dict(methods=["none", "none"]), "repeat a method"),
    (dict(seed=-1), "seed = -1 is outside"),
    (dict(seed=2**40), "seed = 1099511627776 is outside"),
    (dict(seed=10**400), "seed is far outside its range"),
    (dict(seed=1.5), "whole number"),
    (dict(seed="5"), "seed must be a number, got text"),
    (dict(seed=True), "seed must be a number, got true/false"),
    (dict(seed=None), "seed must be a number, got null"),
    (dict(steps=NAN), "steps = nan is not a finite number"),
    (dict(steps=INF), "steps = inf is not a finite number"),
    (dict(steps=0), "steps = 0 is outside"),
    (dict(steps=10**6), "steps = 1000000 is outside"),
    (dict(size=10**9), "is outside"),
    (dict(size=36), "multiples of 8"),
    (dict(size=-64), "is outside"),
    (dict(batch=1000), "batch = 1000 is outside"),
    (dict(guidance_scale=-INF), "is not a finite number"),
    (dict(guidance_scale="high"), "guidance scale must be a number"),
    (dict(negative_1="red", weight_1=NAN), "weight 1 = nan is not a finite number"),
    (dict(weight_2={"x": 1}), "weight 2 must be a number, got an object"),
    (dict(methods=["perp-neg"], negative_1="red", start_1=0.9, end_1=0.1), "is reversed"),
    (dict(with_negatives="yes"), "must be true or false"),
    (dict(nag_scale="strong"), "NAG scale must be a number, got text"),
    (dict(nag_scale=-1), "negative_weights[0] = -1.0 is outside"),
    (dict(nag_scale=INF), "NAG scale = inf is not a finite number"),
    (dict(negtome_custom=True, negtome_alpha=50), "alpha = 50.0 is outside"),
    (dict(negtome_custom=True, negtome_alpha=1e300), "NegToMe alpha is far outside its range"),
    (dict(negtome_custom=1), "must be true or false"),
    (dict(lora_scale=NAN), "LoRA scale = nan is not a finite number"),
    (dict(reneg_choice=5), "choice is not one of those offered"),
    (dict(lora_choice=["a"]), "choice is not one of those offered"),
    (dict(reference="a string"), "must be a file uploaded to this demo"),
    (dict(reference=5), "must be a file uploaded to this demo"),
    (dict(reference_mask={"path": 5}), "must be a file uploaded to this demo"),
    (dict(lora_file={"path": "http://127.0.0.1:9/x.safetensors"}), "must be a file uploaded to this demo"),
]


@pytest.mark.parametrize("values, expected", FUZZ, ids=[f"{next(iter(v))}-{i}" for i, (v, _) in enumerate(FUZZ)])
def test_hostile_values_are_clear_errors(server, defaults, values, expected):
    """Each answered by the queue with one line (the next case's answer shows the server still serves after it)."""
    event, message = raw_call(server[1], defaults, **values)
    assert event == "error", (event, str(message)[:300])
    check_message(message)
    assert expected in message, message


def test_the_server_still_generates_after_the_hostile_values(server, client, defaults):
    assert raw_call(server[1], defaults, steps=1, batch=1)[0] == "complete"
    still_serves(client)


@pytest.mark.parametrize(
    "body, expected",
    [
        (json.dumps({"data": [1, 2]}), "error: the request has 2 values; this endpoint takes {inputs}"),
        (json.dumps({"data": "x"}), "http 422"),
        (json.dumps({"nothing": []}), "http 422"),
        ("{not json", "http 422"),
        ('{"data": [NaN, Infinity' + "{nulls}]}", "error: the prompt must be text, got a number"),
    ],
)
def test_malformed_bodies_are_refused(app, server, client, defaults, body, expected):
    inputs = len(app.INPUTS)  # the form's values, one per input component
    body, expected = body.replace("{nulls}", ", null" * (inputs - 2)), expected.format(inputs=inputs)
    event, message = raw_call(server[1], defaults, body=body)
    assert f"{event}: {message}".startswith(expected), (event, message)
    if event == "error":
        check_message(message)
    still_serves(client)


def test_demo_flags_for_allowed_folders_and_uploads(capsys, tmp_path):
    assert cli(["demo", "--allow-dir", str(tmp_path / "missing"), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "--allow-dir" in err and "is not a folder" in err and err.count("\n") == 1
    assert cli(["demo", "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb = 0 is outside" in capsys.readouterr().err
