"""Every Python example in README.md and docs/**/*.md is checked, so the documentation cannot rot.

The rule is the fence, visible in the page:

* a block fenced exactly ```` ```python ```` runs on a CPU, offline (``HF_HUB_OFFLINE=1``), on the bundled
  ShapeWorld models or negguide.testing's tiny components, as the block itself says;
* a block whose fence carries a title, ```` ```python title="hub model (GPU)" ````, needs a hub checkpoint, a GPU
  or files that do not exist: it is compiled (syntax only).

Any other fence of Python (```` ```py ````, ```` ```python3 ````, other attributes) is refused, so a block cannot
drop out of both checks. A page's runnable blocks run in order in one fresh namespace (a later block may use an
earlier block's names), from a temporary working directory that holds a link to the repository's ``assets/`` (the
pages load the bundled models by the repository-relative path ``assets/shapeworld/...``, as a reader who runs them
from the repository root does), with ``tempfile`` pointed at that directory too, so whatever an example writes
lands there. A failure names the page, the first line of the block in the page and the exception; the traceback's
line numbers are the page's.
"""

from __future__ import annotations

import os
import re
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import REPO

from negguide.nag.routing import NegativeIgnoredWarning

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]

#: an opening or closing fence: indentation, backticks (three or more), the info string
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^`]*)$")
#: the info string of a syntax-only block: python, then a title and nothing else
TITLED = re.compile(r'^python\s+title="[^"]+"$')
#: info strings that are Python under another name (refused: they would be neither run nor compiled)
PYTHON_LIKE = re.compile(r"^(py|python\d?|python3|pycon|ipython)\b", re.I)
#: the page loads a bundled ShapeWorld model or the reward: tens of seconds, marked slow
LOADS_A_MODEL = re.compile(r"assets/shapeworld|load_bench_pipeline\(|ShapeWorldReward\.from_pretrained\(")


@dataclass(frozen=True)
class Block:
    page: str  # the path relative to the repository root
    line: int  # the line of the opening fence (1-based)
    info: str  # the fence's info string
    code: str

    @property
    def runs(self) -> bool:
        return self.info == "python"

    def compiled(self):
        # pad with empty lines so that the compiled code's line numbers are the page's
        return compile("\n" * self.line + self.code, self.page, "exec")


def python_blocks(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced Python blocks of a Markdown page, and its problems: a Python fence of neither form, an open fence."""
    page = str(path.relative_to(REPO))
    blocks, problems, lines, i = [], [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, ticks, info = opening["indent"], opening["ticks"], opening["info"].strip()
        body, j = [], i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if closing and len(closing["ticks"]) >= len(ticks) and not closing["info"].strip():
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j == len(lines):
            problems.append(f"{page}, line {i + 1}: the fence opened here is never closed")
        if info == "python" or TITLED.match(info):
            blocks.append(Block(page, i + 1, info, "\n".join(body) + "\n"))
        elif PYTHON_LIKE.match(info):
            problems.append(
                f"{page}, line {i + 1}: the fence {ticks}{info} is neither ```python (runs on a CPU) nor "
                '```python title="..." (syntax only: a hub model, a GPU, missing files)'
            )
        i = j + 1
    return blocks, problems


PARSED = {str(p.relative_to(REPO)): python_blocks(p) for p in PAGES}
BLOCKS = {page: blocks for page, (blocks, _) in PARSED.items()}
WITH_CODE = [page for page, (blocks, problems) in PARSED.items() if blocks or problems]
RUNNABLE = [
    pytest.param(page, id=page, marks=[pytest.mark.slow] if LOADS_A_MODEL.search(code) else [])
    for page, blocks in BLOCKS.items()
    if (code := "".join(b.code for b in blocks if b.runs))
]


def where(block: Block) -> str:
    return f"{block.page}, the block at line {block.line} (```{block.info})"


def test_the_pages_have_examples_of_both_kinds():
    """The extraction finds the examples (a broken pattern would otherwise check nothing)."""
    assert "README.md" in WITH_CODE and "docs/quick-tour.md" in WITH_CODE
    everything = [b for blocks in BLOCKS.values() for b in blocks]
    assert sum(b.runs for b in everything) >= 20 and sum(not b.runs for b in everything) >= 5
    assert any(b.runs for b in BLOCKS["README.md"])


@pytest.mark.parametrize("page", WITH_CODE)
def test_every_python_block_follows_the_rule_and_compiles(page):
    problems = PARSED[page][1]
    assert not problems, "\n".join(problems)
    failures = []
    for block in BLOCKS[page]:
        try:
            block.compiled()
        except SyntaxError as error:
            failures.append(f"{where(block)} does not compile: {error.msg} (line {error.lineno})")
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


@pytest.mark.parametrize("page", RUNNABLE)
def test_the_runnable_blocks_run_on_a_cpu(page, tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "assets").symlink_to(REPO / "assets", target_is_directory=True)  # the pages' relative model paths
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tempfile.mkdtemp() in an example lands here
    namespace: dict = {"__name__": "__docs__"}
    failure = None
    # the examples' unseeded draws leave the suite's global generator alone; a negative an example gives that acts
    # nowhere (NegativeIgnoredWarning) is a wrong example
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("error", NegativeIgnoredWarning)
        torch.manual_seed(0)
        for block in (b for b in BLOCKS[page] if b.runs):
            try:
                exec(block.compiled(), namespace)
            except Exception as error:
                frames = "".join(traceback.format_exception(type(error), error, error.__traceback__.tb_next))
                failure = f"{where(block)} failed: {type(error).__name__}: {error}\n\n{frames[-4000:]}"
                break
    if failure:
        pytest.fail(failure, pytrace=False)
    assert os.getcwd() == str(work), "an example changed the working directory"
