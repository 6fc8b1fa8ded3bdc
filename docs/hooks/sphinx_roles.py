"""mkdocs hook: tidy the reStructuredText leftovers of the docstrings in the rendered API pages.

The docstrings are Google style, but some name objects with Sphinx roles (:class:`~negguide.negtome.NegToMeSettings`)
or end a paragraph with "::" before a code block. mkdocstrings renders them literally; this hook drops the role
prefix (keeping the name as code, shortened after a leading "~" as Sphinx does) and the doubled colon. It only
touches the HTML of the pages under api/.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(<code>)(~?)([^<]*)(</code>)")
DOUBLE_COLON = re.compile(r"::(</p>)")


def _role(match: re.Match) -> str:
    opening, tilde, name, closing = match.groups()
    return f"{opening}{name.rsplit('.', 1)[-1] if tilde else name}{closing}"


def on_page_content(html: str, page, config, files) -> str:
    if not page.file.src_uri.startswith("api/"):
        return html
    return DOUBLE_COLON.sub(r":\1", ROLE.sub(_role, html))
