"""Every page's downloads run to their end, offline: prints a table, asserts nothing.

    python -m benchmarks.downloads [--site DIR] [--only CHAPTER]

Runs each page's ``.py`` with ``python`` and its ``.ipynb`` with nbclient, in an
empty folder, with ``tutorials_pkg`` installed (as a reader has it after
``pip install -e .``). ``--site`` defaults to ``site/`` (``mkdocs build`` writes
it). It executes every page twice: many minutes. The tests run one page's
downloads (tests/test_site.py); this runs them all.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from handbook_tools import LANGUAGES, ROOT, chapter_of, page_ids, page_url


def run_script(path: Path) -> str:
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run([sys.executable, str(path)], cwd=folder, capture_output=True,
                                text=True, timeout=1800, env={**os.environ, "MPLBACKEND": "Agg"})
    return "ok" if result.returncode == 0 else f"FAILED: {result.stderr.strip().splitlines()[-1:]}"


def run_notebook(path: Path) -> str:
    notebook = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    with tempfile.TemporaryDirectory() as folder:
        try:
            NotebookClient(notebook, timeout=1800,
                           resources={"metadata": {"path": folder}}).execute()
        except Exception as error:  # noqa: BLE001 - reported, not raised
            return f"FAILED: {type(error).__name__}: {str(error).strip().splitlines()[-1:]}"
    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site")
    parser.add_argument("--only", default="", help="one chapter")
    args = parser.parse_args()
    language = LANGUAGES[-1]  # the code is the same in both languages
    failed = 0
    print(f"{'page':<40} {'.py':>8} {'s':>6} {'.ipynb':>8} {'s':>6}")
    for page in page_ids():
        if args.only and chapter_of(page) != args.only:
            continue
        folder = args.site / page_url(page, language)
        stem = "-".join(p for p in Path(page).with_suffix("").parts if p != "index")
        start = time.perf_counter()
        script = run_script(folder / f"{stem}.py")
        middle = time.perf_counter()
        notebook = run_notebook(folder / f"{stem}.ipynb")
        end = time.perf_counter()
        failed += script != "ok" or notebook != "ok"
        print(f"{page:<40} {script[:8]:>8} {middle - start:6.1f} {notebook[:8]:>8} "
              f"{end - middle:6.1f}")
        for text in (script, notebook):
            if text != "ok":
                print(f"    {text}")
    print(f"\n{failed} page(s) with a download that did not run to its end")


if __name__ == "__main__":
    main()
