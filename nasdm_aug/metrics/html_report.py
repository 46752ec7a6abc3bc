"""``report.html``: one self-contained page per output folder (demo, benchmark, evaluate).

The markdown report is rendered with Python-Markdown (tables, fenced code) and every picture it
links, local PNG or JPEG, is inlined as a ``data:`` URI, so the page opens offline, from any
folder, mailed or archived alone. Nothing is fetched: no fonts, scripts or styles from elsewhere.
A few lines of inline script count the pictures that decoded (``<body data-images-loaded>``),
which is what the browser test reads.
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path

import markdown

from nasdm_aug.utils import write_text_atomic

__all__ = ["markdown_to_html", "write_html_report"]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".svg": "image/svg+xml"}

_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eee; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
blockquote { border-left: 4px solid #c90; margin: 1em 0; padding: 0.2em 1em; background: #fff8e8; }
code, pre { background: #f4f4f4; font-size: 13px; }
pre { padding: 0.6em; overflow-x: auto; }
.missing { color: #a00; font-weight: bold; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var ok = 0;
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    if (im.complete && im.naturalWidth > 0) ok++;
  }
  document.body.setAttribute("data-images-loaded", String(ok));
});
"""

_IMG = re.compile(r'<img([^>]*?)src="([^"]+)"([^>]*)>')


def _inline_images(body: str, base: Path) -> str:
    def repl(m: re.Match) -> str:
        src = html.unescape(m.group(2))
        if src.startswith("data:"):
            return m.group(0)
        path = (base / src).resolve()
        mime = _MIME.get(path.suffix.lower())
        if mime is None or not path.is_file():
            alt = re.search(r'alt="([^"]*)"', m.group(0))
            what = alt.group(1) if alt else src
            return f'<span class="missing">[picture {html.escape(what)} not found: {html.escape(src)}]</span>'
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img{m.group(1)}src="data:{mime};base64,{data}"{m.group(3)}>'
    return _IMG.sub(repl, body)


def markdown_to_html(text: str, base: str | os.PathLike, title: str) -> str:
    """A whole HTML page from markdown ``text``; pictures are read relative to ``base`` and
    inlined (a missing one becomes a visible red note, not a broken link)."""
    body = markdown.markdown(text, extensions=["tables", "fenced_code"], output_format="html")
    body = _inline_images(body, Path(base))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n<script>{_SCRIPT}</script>\n"
            f"</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_html_report(text: str, folder: str | os.PathLike, title: str, name: str = "report.html") -> Path:
    """Write ``folder/name`` from markdown ``text`` (pictures relative to ``folder``), atomically."""
    return write_text_atomic(Path(folder) / name, markdown_to_html(text, folder, title))
