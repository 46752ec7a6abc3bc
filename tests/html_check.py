"""Checks of a self-contained report.html: what it shows, and that it needs nothing from elsewhere."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.missing = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "span" and a.get("class") == "missing":
            self.missing += 1
        for key in ("src", "href"):
            v = a.get(key)
            if v and not v.startswith(("data:", "#")):
                self.external.append(v)
        if tag == "link" or (tag == "script" and a.get("src")):
            self.external.append(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_report(text: str) -> _Page:
    """Tables (rows of cell texts), image sources, external references and missing-picture notes."""
    page = _Page()
    page.feed(text)
    return page


def decoded_images(page: _Page) -> list[Image.Image]:
    """Every inlined picture, decoded (raises if one is not a valid image)."""
    out = []
    for src in page.images:
        head, _, data = src.partition(",")
        assert head.startswith("data:image/") and head.endswith(";base64"), src[:40]
        im = Image.open(io.BytesIO(base64.b64decode(data)))
        im.load()
        out.append(im)
    return out


def check_self_contained(text: str, n_tables: int, n_images: int) -> _Page:
    page = parse_report(text)
    assert page.external == [], f"the page references files or sites: {page.external[:3]}"
    assert page.missing == 0, "a picture the report names is missing"
    assert len(page.tables) == n_tables, (len(page.tables), n_tables)
    assert len(decoded_images(page)) == n_images
    return page


def find_browser() -> str | None:
    """A headless-capable Chromium or Chrome on PATH (``make test`` installs Debian's where it can)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def check_in_browser(path: Path, n_tables: int, n_images: int, screenshot: Path) -> None:
    """Open ``path`` in headless Chromium: no script error on the console, every picture decodes,
    every table is in the DOM, and a screenshot is kept at ``screenshot``."""
    flags = [find_browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--enable-logging=stderr", "--v=0", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    errors = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln and ("Uncaught" in ln or "Error" in ln)]
    assert not errors, errors[:3]  # the page's own script ran without an error
    assert f'data-images-loaded="{n_images}"' in dom.stdout  # set by the page's script once loaded
    page = parse_report(dom.stdout)
    assert len(page.tables) == n_tables and len(page.images) == n_images
    res = subprocess.run([*flags, "--window-size=1200,1600", f"--screenshot={screenshot}", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and screenshot.stat().st_size > 0, res.stderr[-2000:]
