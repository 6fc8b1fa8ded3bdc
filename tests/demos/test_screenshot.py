"""A headless-browser screenshot of the demo with its example comparison (written to outputs/demo_screenshot.png).

Skipped without a `chromium` binary on PATH (Debian: apt-get install -y chromium).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs gradio: pip install 'negguide[demo]'")
gradio_client = pytest.importorskip("gradio_client")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install -y chromium)")

from negguide.cli import generation as gen  # noqa: E402
from negguide.cli.demo import load_app  # noqa: E402

SCREENSHOT = os.path.join(os.path.dirname(__file__), "..", "..", "outputs", "demo_screenshot.png")


@pytest.fixture(scope="module")
def server():
    app = load_app()
    # the page opens with the example comparison already generated (fewer steps than the default: a fast test)
    demo = app.build_app(gen.load_pipeline(device="cpu"), run_example=True, example=dict(steps=8))
    url = app.serve(demo, app.free_port(), block=False)
    yield url
    demo.close()


def screenshot(url: str, path: str, width: int = 1400, height: int = 1400) -> None:
    with tempfile.TemporaryDirectory() as profile:
        command = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            f"--window-size={width},{height}",
            "--hide-scrollbars",
            f"--screenshot={path}",
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert os.path.isfile(path), f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-500:]}"


def test_screenshot_shows_the_page_and_generated_images(server):
    client = gradio_client.Client(server, verbose=False)  # a generation through the API first: the app serves
    gallery, _, summary = client.predict(
        api_name="/generate",
        prompt="a red shape",
        methods=["none", "perp-neg"],
        negative_1="a red circle",
        steps=4,
        size=32,
        batch=2,
        reference_mask=None,
    )
    assert len(gallery) == 4 and "| perp-neg |" in summary
    path = os.path.abspath(SCREENSHOT)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.remove(path)
    screenshot(server, path)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.int32)
    assert pixels.shape[:2] == (1400, 1400)
    assert pixels.std() > 10, "the screenshot is blank"  # a blank page is about 0; the page is mostly white
    colours = np.unique(pixels.reshape(-1, 3) // 8, axis=0)
    assert len(colours) > 200, f"only {len(colours)} distinct colours: not a rendered page"
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    shape_red = (r > 170) & (g < 90) & (b < 90)  # ShapeWorld red (220, 30, 30); gradio's orange has g > 100
    assert shape_red.sum() > 5000, "no generated red shapes on the page: the example comparison is not shown"
