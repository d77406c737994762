"""Every page, as the shared site build executed it: it fails only where its tags say,
and warns only where they say. The build checks the same as it runs; these tests
read what it produced, so a page runs once per test run (and under coverage)."""

import re

import pytest

from handbook_tools import DOCS, LANGUAGES, RAISES_TAG, SHOWS_WARNING_TAG, page_ids, read_cells

DEPRECATION = re.compile(r"^\w*(?:DeprecationWarning|FutureWarning): ", re.M)


def test_the_build_executed_every_page(executed_pages):
    assert sorted(executed_pages) == page_ids()


@pytest.mark.parametrize("page", page_ids())
def test_page_fails_and_warns_only_where_it_says(page, executed_pages):
    notebook = executed_pages[page]
    code = [(i, c) for i, c in enumerate(notebook.cells) if c.cell_type == "code"]
    assert code, f"{page} has no code cells"
    for index, cell in code:
        where = f"{page}, cell {index}:\n{cell.source}"
        tags = cell.metadata.get("tags", [])
        errors = [o for o in cell.outputs if o.output_type == "error"]
        expected = cell.metadata.get("raises")
        if RAISES_TAG in tags:
            assert expected, f"{where}\nis tagged {RAISES_TAG} but names no exception (raises=\"...\")"
            assert [e.ename for e in errors] == [expected], f"{where}\nshould raise {expected}"
        else:
            assert not errors, f"{where}\nraised {errors[0].ename}: {errors[0].evalue}"
            assert expected is None, f"{where}\nnames an exception but is not tagged {RAISES_TAG}"
        stderr = "".join(o.text for o in cell.outputs
                         if o.output_type == "stream" and o.name == "stderr")
        if SHOWS_WARNING_TAG not in tags:
            assert not DEPRECATION.search(stderr), f"{where}\nwarned:\n{stderr}"


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("page", page_ids())
def test_prose_names_each_intended_exception(page, language):
    """The text just before a cell that fails on purpose names the exception it raises."""
    cells = read_cells(DOCS / language / page)
    tagged = [i for i, c in enumerate(cells) if RAISES_TAG in c.metadata.get("tags", [])]
    for index in tagged:
        expected = cells[index].metadata.get("raises", "")
        prose = [c.source for c in cells[:index] if c.cell_type == "markdown"]
        assert prose and expected and expected in prose[-1], (
            f"{language}/{page}, cell {index}: the markdown before it should name {expected!r}")


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("page", page_ids())
def test_prose_names_each_warning_shown_on_purpose(page, language):
    """The text just before a cell tagged shows-warning names the warning's category
    (the build checks it names the category the cell really warns)."""
    cells = read_cells(DOCS / language / page)
    for index, cell in enumerate(cells):
        if SHOWS_WARNING_TAG not in cell.metadata.get("tags", []):
            continue
        prose = [c.source for c in cells[:index] if c.cell_type == "markdown"]
        assert prose and ("DeprecationWarning" in prose[-1] or "FutureWarning" in prose[-1]), (
            f"{language}/{page}, cell {index}: the markdown before it should name the warning")
