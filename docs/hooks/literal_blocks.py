"""A mkdocs hook: the docstrings' reStructuredText ``::`` read as plain text.

The library's docstrings introduce an example with ``Example::`` or end a
paragraph with ``::`` before an indented block (the block itself renders as
Python code). On the generated API pages, ``Example::`` becomes a bold
"Example" heading and a paragraph's trailing ``::`` a single colon, as
reStructuredText would show them. Other pages are left alone.
"""

from __future__ import annotations

import re
from typing import Any

_EXAMPLE = re.compile(r"<p>(Examples?(?: \([^<]*\))?)::</p>")
_TRAILING = re.compile(r"::</p>")


def on_page_content(html: str, page: Any, **_: Any) -> str:
    """Rewrite the ``::`` markers of one generated API page."""
    if not page.file.src_uri.startswith("api/"):
        return html
    html = _EXAMPLE.sub(r"<p><strong>\1</strong></p>", html)
    return _TRAILING.sub(":</p>", html)
