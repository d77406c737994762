"""One module per chapter (a folder of pages), a declared API in each, the wrong ways kept apart."""

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import tutorials_pkg
from handbook_tools import DOCS, LANGUAGES, chapter_of, chapters, nav_page_ids, page_ids, read_cells

PACKAGE_DIR = Path(tutorials_pkg.__file__).parent
WRONG_HEADING = re.compile(r"^# --- Wrong\b", re.M)


def top_level_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE_DIR)]))


def chapter_modules() -> list[str]:
    return [name for name in top_level_modules() if name not in tutorials_pkg.SUPPORT_MODULES]


def all_module_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if p.name != "__init__.py")


def test_support_modules_exist():
    assert set(tutorials_pkg.SUPPORT_MODULES) <= set(top_level_modules())


def test_every_page_sits_in_a_chapter_folder_that_opens_with_index():
    loose = [p for p in page_ids() if "/" not in p]
    assert not loose, f"pages outside a chapter folder: {loose}; move each to <chapter>/index.py"
    without_index = [c for c in chapters() if f"{c}/index.py" not in page_ids()]
    assert not without_index, f"chapters without an index.py (their first page): {without_index}"


@pytest.mark.parametrize("page", page_ids())
def test_every_page_has_the_module_of_its_chapter_and_imports_it(page):
    chapter = chapter_of(page)
    assert chapter in chapter_modules(), (
        f"page {page} has no tutorials_pkg/{chapter}.py (or package tutorials_pkg/{chapter}/)")
    imports = re.compile(rf"^\s*(from|import) tutorials_pkg\.{chapter}(\.\w+)*\b", re.M)
    for language in LANGUAGES:
        code = "\n".join(c.source for c in read_cells(DOCS / language / page)
                         if c.cell_type == "code")
        assert imports.search(code), f"{language}/{page} never imports tutorials_pkg.{chapter}"


def test_every_page_is_in_the_nav_under_its_chapter():
    listed = nav_page_ids()
    assert sorted(listed) == page_ids(), (
        f"not in mkdocs.yml's nav: {sorted(set(page_ids()) - set(listed))}; "
        f"in the nav but missing: {sorted(set(listed) - set(page_ids()))}")
    order = [chapter_of(p) for p in listed]
    assert order == sorted(order, key=order.index), "a chapter's pages sit apart in the nav"
    firsts = [p for i, p in enumerate(listed) if i == 0 or order[i - 1] != order[i]]
    assert all(p.endswith("/index.py") for p in firsts), f"a chapter must open with index.py: {firsts}"


def test_every_chapter_module_has_a_page():
    orphans = sorted(set(chapter_modules()) - set(chapters()))
    assert not orphans, (f"chapter modules without a page: {orphans}; add a page of that stem, "
                         "or list a shared module in tutorials_pkg.SUPPORT_MODULES")


@pytest.mark.parametrize("path", all_module_files(), ids=lambda p: p.relative_to(PACKAGE_DIR).as_posix())
def test_every_module_declares_its_api(path):
    name = "tutorials_pkg." + path.relative_to(PACKAGE_DIR).with_suffix("").as_posix().replace("/", ".")
    if name in ("tutorials_pkg.runtime", "tutorials_pkg.source"):
        pytest.skip("page furniture, not taught")
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


@pytest.mark.parametrize("path", all_module_files(), ids=lambda p: p.relative_to(PACKAGE_DIR).as_posix())
def test_the_wrong_ways_sit_together_at_the_end(path):
    source = path.read_text(encoding="utf-8")
    heading = WRONG_HEADING.search(source)
    start = source[:heading.start()].count("\n") + 1 if heading else None
    for node in ast.parse(source).body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        wrong = (ast.get_docstring(node) or "").startswith("Wrong")
        after = start is not None and node.lineno > start
        assert wrong == after, (
            f"{path.name}: {node.name} " + ("is wrong-way code outside" if wrong else
                                            "has no 'Wrong:' docstring but sits under")
            + " the '# --- Wrong' heading at the end of the module")
