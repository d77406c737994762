"""Both languages have the same pages, and the same code in them."""

import re

import pytest

from handbook_tools import DOCS, page_ids, read_cells


def relative_files(language):
    root = DOCS / language
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix in {".py", ".md"})


def test_same_pages_in_both_languages():
    assert relative_files("zh") == relative_files("en")
    assert page_ids(), "no tutorial pages found"


def heading_levels(cells):
    return [len(m.group(1)) for c in cells if c.cell_type == "markdown"
            for m in re.finditer(r"^(#{1,6}) ", c.source, re.M)]


@pytest.mark.parametrize("page", page_ids())
def test_code_cells_are_identical_and_markdown_lines_up(page):
    zh, en = read_cells(DOCS / "zh" / page), read_cells(DOCS / "en" / page)
    assert [c.cell_type for c in zh] == [c.cell_type for c in en], "cells do not line up"
    for index, (a, b) in enumerate(zip(zh, en)):
        if a.cell_type == "code":
            assert a.source == b.source, f"code cell {index} differs"
            assert dict(a.metadata) == dict(b.metadata), f"code cell {index} metadata differs"
    assert heading_levels(zh) == heading_levels(en), "the two tables of contents differ"


def test_markdown_pages_have_the_same_headings():
    for name in relative_files("zh"):
        if name.endswith(".md"):
            levels = [re.findall(r"^(#{1,6}) ", (DOCS / lang / name).read_text(), re.M)
                      for lang in ("zh", "en")]
            assert levels[0] == levels[1], name
