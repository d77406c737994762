"""Every page, executed in this process (so coverage measures tutorials_pkg)."""

import pytest

from handbook_tools import DOCS, LANGUAGES, RAISES_TAG, page_ids, read_cells, run_page


@pytest.mark.parametrize("page", page_ids())
def test_page_runs_and_fails_only_where_it_says(page, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # zh and en code cells are identical (test_parity), so each page runs once here,
    # in one language, as the site build runs it once for both.
    runs = run_page(DOCS / "en" / page, tmp_path)
    assert runs, f"{page} has no code cells"
    for run in runs:
        where = f"{page}, cell {run.index}:\n{run.source}"
        if not run.tagged:
            assert run.error is None, f"{where}\nraised {run.error!r}"
            assert run.expected is None, f"{where}\nnames an exception but is not tagged {RAISES_TAG}"
            continue
        assert run.expected, f"{where}\nis tagged {RAISES_TAG} but names no exception (raises=\"...\")"
        assert run.error is not None, f"{where}\nshould raise {run.expected} and raised nothing"
        assert type(run.error).__name__ == run.expected, (
            f"{where}\nshould raise {run.expected}, raised {run.error!r}")


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


SHOWS_WARNING_TAG = "shows-warning"


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
