"""The Gradio demo on the bundled ShapeWorld model: started on a free local port, called through gradio_client."""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs gradio: pip install 'negguide[demo]'")
gradio_client = pytest.importorskip("gradio_client")

from helpers import READING, make_assets  # noqa: E402

from negguide.cli import generation as gen  # noqa: E402
from negguide.cli import main as cli  # noqa: E402
from negguide.cli.demo import load_app  # noqa: E402

pytestmark = pytest.mark.slow  # runs the bundled ShapeWorld model end to end

SMALL = dict(steps=4, size=32, batch=2)
CAPTION = re.compile(r"^(?P<method>[a-z-]+) #(?P<index>\d+): (?P<reading>.+)$")


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def server(app):
    """`negguide demo`'s main on a free port of 127.0.0.1 (in this process, not blocking): (demo, url, pipe)."""
    port = app.free_port()
    demo, url = app.main(["--port", str(port), "--no-example", "--device", "cpu"], block=False)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server[1], verbose=False)


@pytest.fixture(scope="module")
def pipe():
    return gen.load_pipeline(device="cpu")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, pipe):
    return make_assets(str(tmp_path_factory.mktemp("demo_assets")), pipe)


def generate(client, **inputs):
    """Call /generate; unspecified inputs keep the page's defaults (files have none: they are optional)."""
    inputs = {**SMALL, **inputs}
    return client.predict(api_name="/generate", **inputs)


def lora_file(assets):
    """The LoRA folder's weights file, for an upload (clients upload files; they never name a server path)."""
    return gradio_client.handle_file(os.path.join(assets["lora"], "pytorch_lora_weights.safetensors"))


def check_outputs(result, methods, batch=2, size=32):
    gallery, grid, summary = result
    assert len(gallery) == len(methods) * batch
    zoom = max(1, load_app().DISPLAY_PIXELS // size)
    for i, item in enumerate(gallery):
        match = CAPTION.match(item["caption"])
        assert match, item["caption"]
        assert match["method"] == methods[i // batch] and int(match["index"]) == i % batch + 1
        assert READING.match(match["reading"]), match["reading"]  # the ShapeWorld judge's reading
        image = np.asarray(Image.open(item["image"]).convert("RGB"))
        assert image.shape == (size * zoom, size * zoom, 3)
        assert image.std() > 5, "blank image"
    grid_image = np.asarray(Image.open(grid).convert("RGB"))
    assert grid_image.shape[0] > len(methods) * size and grid_image.std() > 5
    for method in methods:
        assert f"| {method} |" in summary
    return gallery


def test_binds_to_localhost_with_a_bounded_queue(server):
    demo, url = server
    assert url.startswith("http://127.0.0.1:")
    assert demo._queue.max_size == load_app().QUEUE_SIZE and demo._queue.default_concurrency_limit == 1
    assert demo.api_open is False, "direct POST /run/<endpoint> would skip the queue"


@pytest.mark.parametrize(
    "method", ["none", "plain", "perp-neg", "nag", "negtome", "negtome-reference", "reneg", "nft-lora"]
)
def test_every_method(client, assets, method):
    inputs = dict(
        prompt="a circle",
        methods=[method],
        negative_1="red",
        weight_1=1.5,
        start_1=0.0,
        end_1=1.0,
        negative_2="a square",
        weight_2=0.5,
        start_2=0.3,
        end_2=1.0,
    )
    if method == "negtome-reference":
        inputs.update(
            reference=gradio_client.handle_file(assets["reference"]),
            reference_mask=gradio_client.handle_file(assets["mask"]),
        )
    inputs.update(reneg_file=gradio_client.handle_file(assets["reneg"]), lora_file=lora_file(assets), lora_scale=0.8)
    if method == "nag":
        inputs.update(guidance_scale=1.0, nag_scale=3.0)
    check_outputs(generate(client, **inputs), [method])


def test_side_by_side_with_the_same_seed(client, assets):
    methods = ["none", "perp-neg", "nft-lora", "negtome"]
    first = check_outputs(
        generate(
            client,
            prompt="a red shape",
            methods=methods,
            negative_1="a red circle",
            lora_file=lora_file(assets),
            negtome_custom=True,
            negtome_alpha=1.0,
        ),
        methods,
    )
    again = check_outputs(generate(client, prompt="a red shape", methods=["none"]), ["none"])
    pixels = [np.asarray(Image.open(item["image"])) for item in (first[0], again[0])]
    assert np.array_equal(*pixels), "same seed, no LoRA left loaded: the baseline must repeat exactly"


@pytest.mark.parametrize(
    "inputs, message",
    [
        (dict(prompt=""), "the prompt is empty"),
        (dict(prompt="a circle", steps=1000), "1000"),
        (dict(prompt="a circle", size=36), "multiples of 8 up to 64"),
        (dict(prompt="a circle", methods=[]), "choose at least one method"),
        (dict(prompt="a circle", methods=["perp-neg"], negative_1=""), "perp-neg needs at least one negative"),
        (dict(prompt="a circle", methods=["perp-neg"], negative_1="red", start_1=0.9, end_1=0.1), "is reversed"),
        (dict(prompt="a circle", methods=["negtome-reference"], reference=None), "needs a reference image"),
        (dict(prompt="a circle", methods=["negtome"], batch=1), "batch of 2 or more"),
        (dict(prompt="a circle", methods=["nft-lora"], lora_choice="lora"), "the LoRA choice is not one of those"),
        (dict(prompt="a circle", methods=["reneg"], reneg_choice="x"), "the ReNeg embedding choice is not one of"),
    ],
)
def test_bad_input_is_a_readable_error_and_the_server_keeps_serving(client, inputs, message):
    with pytest.raises(Exception) as error:
        generate(client, **{"methods": ["none"], **inputs})
    text = str(error.value)
    assert message in text and "Traceback" not in text and "\n" not in text.strip(), text
    check_outputs(generate(client, prompt="a circle", methods=["none"]), ["none"])


def test_a_crash_is_one_line_without_traceback(client, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("out of memory\n  at line 3")

    monkeypatch.setattr(gen, "run", boom)  # the app calls negguide.cli.generation.run: the server runs in this process
    with pytest.raises(Exception) as error:
        generate(client, prompt="a circle", methods=["none"])
    assert "generation failed (RuntimeError): out of memory at line 3" in str(error.value)
    monkeypatch.undo()
    check_outputs(generate(client, prompt="a circle", methods=["none"]), ["none"])


def test_progress_is_reported_per_step(app, pipe):
    calls = []

    def progress(fraction, desc=None):
        calls.append((fraction, desc))

    handler = app.make_handler(pipe)
    values = dict(
        prompt="a circle",
        methods=["none", "perp-neg"],
        seed=0,
        steps=3,
        size=32,
        batch=2,
        guidance_scale=5.0,
        negative_1="red",
        weight_1=1.0,
        start_1=0.0,
        end_1=1.0,
        negative_2="",
        weight_2=1.0,
        start_2=0.0,
        end_2=1.0,
        negative_3="",
        weight_3=1.0,
        start_3=0.0,
        end_3=1.0,
        with_negatives=False,
        nag_scale=4.0,
        reference=None,
        reference_mask=None,
        reneg_choice=None,
        reneg_file=None,
        lora_choice=None,
        lora_file=None,
        lora_scale=1.0,
        negtome_custom=False,
        negtome_alpha=0.9,
        negtome_threshold=0.7,
        negtome_low=0.8,
        negtome_high=1.0,
    )
    gallery, grid, summary = handler(**values, progress=progress)
    fractions = [f for f, _ in calls]
    assert len(gallery) == 4 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert len(calls) == 1 + 2 * 3 and calls[-1][1] == "perp-neg: step 3/3"


def test_sliders_take_their_ranges_from_the_settings(server):
    from negguide.perpneg.settings import PerpNegSettings

    demo, _ = server
    sliders = {c.label: c for c in demo.blocks.values() if type(c).__name__ == "Slider"}
    steps = gen.SamplingSettings.field_specs()["steps"]
    assert (sliders["steps"].minimum, sliders["steps"].maximum) == (steps["min"], steps["max"])
    weight = PerpNegSettings.field_specs()["negative_weights"]
    assert (sliders["weight"].minimum, sliders["weight"].maximum, sliders["weight"].step) == (
        weight["min"],
        weight["max"],
        weight["step"],
    )
    assert sliders["size"].maximum == 64  # the bundled model's transformer takes at most 64 px


def test_demo_command_rejects_bad_flags(capsys):
    assert cli(["demo", "--port", "99999"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("negguide demo: ") and "--port = 99999 is outside" in err and err.count("\n") == 1


def test_demo_command_serves_the_page(app):
    """`negguide demo` as a user runs it: a separate process that serves the page on 127.0.0.1 until stopped."""
    import subprocess
    import time
    import urllib.request

    port = app.free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(
        [sys.executable, "-m", "negguide.cli", "demo", "--port", str(port), "--no-example"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline, page = time.time() + 120, None
        while page is None and time.time() < deadline and server.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(0.5)
        assert server.poll() is None, server.stderr.read().decode()[-2000:]
        assert page is not None and "gradio" in page.lower()
        import httpx

        upload = httpx.post(f"http://127.0.0.1:{port}/gradio_api/upload", files={"files": ("probe.bin", b"0" * 100)})
        path = upload.json()[0]
        assert os.path.isfile(path)
    finally:
        server.terminate()  # SIGTERM: the demo closes as after Ctrl+C and removes its uploads
        server.wait(timeout=30)
    assert not os.path.exists(path), "an upload was left on disk after the demo stopped"
