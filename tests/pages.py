"""Reading and running the jupytext pages, for the tests."""

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import jupytext

from conftest import DOCS, LANGUAGES

RAISES_TAG = "raises-exception"


def tutorial_pages(language: str) -> list[Path]:
    return sorted(p for p in (DOCS / language).rglob("*.py") if "assets" not in p.parts)


def page_ids() -> list[str]:
    """Relative paths of the tutorial pages (the same in every language)."""
    return [p.relative_to(DOCS / LANGUAGES[0]).as_posix() for p in tutorial_pages(LANGUAGES[0])]


def read_cells(path: Path):
    return jupytext.read(path).cells


@dataclass
class CellRun:
    index: int
    source: str
    error: BaseException | None
    tagged: bool          # tagged "raises-exception"
    expected: str | None  # the exception class name in its "raises" metadata
    output: str


def run_page(path: Path, workdir: Path) -> list[CellRun]:
    """Run a page's code cells in this process, in order, in ``workdir``.

    IPython runs them as the kernel does at build time (a cell's last
    expression is displayed), but in this process, so coverage sees the package.
    """
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.reset(new_session=True)
    # reset() drops __spec__ from the shell's __main__; a kernel has it (None), and
    # multiprocessing's spawn reads it (tutorials_pkg.distributed starts processes).
    shell.user_module.__dict__.setdefault("__spec__", None)
    shell.InteractiveTB.set_mode("Minimal")
    runs = []
    here = os.getcwd()
    os.chdir(workdir)
    try:
        for index, cell in enumerate(read_cells(path)):
            if cell.cell_type != "code":
                continue
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                result = shell.run_cell(cell.source, store_history=False)
            error = result.error_in_exec or result.error_before_exec
            runs.append(CellRun(index, cell.source, error,
                                RAISES_TAG in cell.metadata.get("tags", []),
                                cell.metadata.get("raises"), buffer.getvalue()))
    finally:
        os.chdir(here)
    return runs
