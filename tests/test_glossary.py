"""One term per concept on the Chinese pages: the spellings the glossary rules out do not
appear in their prose (code, inline or fenced, is left out of the check)."""

import functools
import re

import pytest

from handbook_tools import DOCS, read_cells, tutorial_pages

GLOSSARY = DOCS / "zh" / "glossary.md"
ROW = re.compile(r"^\|([^|]*)\|([^|]*)\|([^|]*)\|\s*$", re.M)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
BARE_STATE_DICT = re.compile(r"(?<![\w.])state_dict(?!\w)")


def ruled_out() -> dict[str, str]:
    """Spelling to avoid -> the term to use, from the glossary's table."""
    found = {}
    for english, chinese, avoid in ROW.findall(GLOSSARY.read_text(encoding="utf-8")):
        for wrong in re.findall(r"「(.+?)」", avoid):
            found[wrong] = chinese.strip()
    return found


@functools.cache
def zh_prose() -> dict[str, str]:
    """The prose of every Chinese page but the glossary, code removed."""
    texts = {path.relative_to(DOCS).as_posix(): "\n".join(
        c.source for c in read_cells(path) if c.cell_type == "markdown")
        for path in tutorial_pages("zh")}
    texts.update({path.relative_to(DOCS).as_posix(): path.read_text(encoding="utf-8")
                  for path in (DOCS / "zh").rglob("*.md") if path != GLOSSARY})
    return {name: CODE.sub(" ", text) for name, text in texts.items()}


def test_the_glossary_rules_out_spellings():
    assert {"模型块", "批次", "eval 模式", "就地"} <= set(ruled_out())


@pytest.mark.parametrize("page", sorted(zh_prose()))
def test_a_chinese_page_uses_the_glossarys_terms(page):
    text = zh_prose()[page]
    wrong = {w: right for w, right in ruled_out().items() if w.lower() in text.lower()}
    assert not wrong, f"{page}: " + "; ".join(f"「{w}」: write {r}" for w, r in wrong.items())
    bare = BARE_STATE_DICT.findall(text)
    assert not bare, f"{page}: state_dict in the prose is written as code, `state_dict`"


def test_the_check_finds_a_ruled_out_spelling_and_ignores_code():
    text = CODE.sub(" ", "把模型切换到 eval 模式，再用 `model.eval()`；```\neval 模式\n```")
    assert [w for w in ruled_out() if w in text] == ["eval 模式"]
