"""docs/guiders.md: its CPU examples run as written and print what the page shows; the package imports light."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys

from helpers import REPO

PAGE = REPO / "docs" / "guiders.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def test_the_page_runs_on_a_cpu_and_prints_what_it_shows(tmp_path, monkeypatch):
    blocks = FENCE.findall(PAGE.read_text())
    code = [body for lang, title, body in blocks if lang == "python" and "hub model (GPU)" not in title]
    shown = [body for lang, _, body in blocks if lang == "text"]
    assert len(code) == 3 and len(shown) == 1
    monkeypatch.chdir(tmp_path)  # the page saves a guider to the current folder
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        for body in code:
            exec(compile(body, str(PAGE), "exec"), namespace)
    assert shown[0] in out.getvalue()
    assert (tmp_path / "perp-neg-guider" / "guider_config.json").is_file()


def test_the_package_imports_without_torch_or_diffusers():
    code = (
        "import sys, negguide.guiders as g; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules));"
        "print(sorted(g.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    loaded, names = out.stdout.splitlines()
    assert loaded == "[]"
    assert "PerpNegGuider" in names and "NAGGuider" in names and "add_negatives" in names
