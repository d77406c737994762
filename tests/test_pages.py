"""Every page, executed in this process (so coverage measures tutorials_pkg)."""

import pytest

from handbook_tools import DOCS, LANGUAGES, RAISES_TAG, page_ids, read_cells, run_page


@pytest.mark.parametrize("page", page_ids())
def test_page_runs_and_fails_only_where_it_says(page, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # zh and en code cells are identical (test_parity), so one language runs here;
    # the site build runs both.
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
