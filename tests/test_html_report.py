"""report.html: markdown tables and pictures in one page that needs nothing else, checked by
parsing, and in a real headless browser where one is installed."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from html_check import check_in_browser, check_self_contained, decoded_images, find_browser, parse_report
from PIL import Image

from nasdm_aug.metrics.html_report import markdown_to_html, write_html_report

MD = """# A report

> **Toy data.** a notice

| row | Dice | PQ |
|---|---|---|
| R2 | 0.7220 ± 0.0100 | 0.118 |
| S2 & more | 0.6120 ± 0.0200 | 0.098 |

![first](a.png)

Text with `code` and a second table:

| k | v |
|---|---|
| x | 1 |

![second](sub/b.png)
"""


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "sub" / "b.png")
    return tmp_path


def test_tables_and_pictures_are_in_the_page(folder):
    path = write_html_report(MD, folder, "t")
    page = check_self_contained(path.read_text(), n_tables=2, n_images=2)
    assert page.tables[0] == [["row", "Dice", "PQ"], ["R2", "0.7220 ± 0.0100", "0.118"],
                              ["S2 & more", "0.6120 ± 0.0200", "0.098"]]
    assert page.tables[1] == [["k", "v"], ["x", "1"]]
    first = page.images[0].partition(",")[2]
    assert base64.b64decode(first) == (folder / "a.png").read_bytes()  # the file itself, byte for byte
    assert decoded_images(page)[0].size == (30, 20)
    assert not (folder / "report.html.partial").exists()


def test_a_missing_picture_is_said_not_hidden(folder):
    text = markdown_to_html("![gone](nothere.png)\n", folder, "t")
    page = parse_report(text)
    assert page.missing == 1 and page.images == [] and "nothere.png" in text


@pytest.mark.skipif(find_browser() is None, reason="no headless Chromium / Chrome installed")
def test_page_loads_in_a_headless_browser(folder):
    path = write_html_report(MD, folder, "t")
    check_in_browser(path, n_tables=2, n_images=2, screenshot=folder / "report-screenshot.png")
