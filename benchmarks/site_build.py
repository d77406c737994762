"""Build times, reproducibility and page sizes of the site.

Prints:

- L: seconds to execute every page once, one page at a time (the build's own page
  runner with one worker: a fresh kernel per page, one language's code);
- the cold build (execution cache empty, both languages) and its ratio to L
  (target <= 1.0 L; stretch <= 0.7 L);
- a warm rebuild with nothing changed (target <= 3 s);
- a rebuild after editing one chapter module, and after a prose-only edit of one
  page, with the pages each executed;
- code cells whose outputs differ between zh and en, and between two cold
  builds (the second is the first ``mkdocs serve``), cells tagged ``measured``
  excepted (target 0 and 0);
- the first ``mkdocs serve`` until the site answers, and how long it then takes
  to show a prose edit;
- the largest and median tutorial page.

    python -m benchmarks.site_build [--keep DIR] [--tests]

``--tests`` also times the README's test run (``python -m pytest``) in this checkout.

Everything runs on a copy of the site in a temporary directory (pages, hooks,
tutorials_pkg), so the repository and its .cache are left alone; ``--keep DIR``
keeps that copy (with its cache) in DIR. It executes every page three times (L,
the cold build, the first serve): minutes.
"""

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from handbook_tools import (
    LANGUAGES,
    DOCS,
    ROOT,
    build_env,
    chapters,
    code_cells_in_html,
    copy_machinery,
    copy_pages,
    execution,
    mkdocs_build,
    page_ids,
    page_url,
    site_path,
)

EXECUTED = re.compile(r"Pages executed: (.*?); from cache: (.*?) \((.*?) s\)")
EDITED_MODULE = "surgery"   # a chapter module: only the pages that import it run again
PROSE_PAGE = "definition/index.py"


def copy_site(where: Path) -> None:
    copy_machinery(where, chapters())
    copy_pages(where, chapters())
    for language in LANGUAGES:  # the real home pages
        shutil.copy(Path(__file__).resolve().parent.parent / "docs" / language / "index.md",
                    where / "docs" / language / "index.md")


def build(site: Path) -> tuple[float, str]:
    """Seconds of ``mkdocs build`` (cache on), and what the hook says it executed."""
    start = time.perf_counter()
    result = mkdocs_build(site, site / "site", build_env(site / ".cache" / "handbook"))
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"build failed:\n{result.stderr[-6000:]}")
    found = EXECUTED.search(result.stderr)
    return seconds, f"executed: {found.group(1)}" if found else "?"


def execute_every_page_one_at_a_time() -> float:
    """L: every page once, one kernel at a time, with the build's own runner (no cache)."""
    pages = execution.read_pages(DOCS, [LANGUAGES[-1]], page_ids())
    return execution.execute_pages(pages, ROOT, None, workers=1).seconds


def time_the_tests() -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"tests failed:\n{result.stdout[-4000:]}")
    return time.perf_counter() - start


def page_url_paths() -> list[tuple[str, str, str]]:
    """(language, page id, path of its index.html in the site) for every tutorial page."""
    found = []
    for language in LANGUAGES:
        for page in page_ids():
            found.append((language, page, page_url(page, language)))
    return found


def outputs(html: str) -> list[list[str] | None]:
    """Each code cell's output texts; None for a cell tagged measured."""
    return [None if "measured" in cell.tags else [o.text for o in cell.outputs]
            for cell in code_cells_in_html(html)]


def differing(a: list, b: list) -> list[int]:
    if len(a) != len(b):
        return [-1]
    return [i for i, (x, y) in enumerate(zip(a, b)) if x is not None and x != y]


def first_difference(a: list[str], b: list[str]) -> str:
    for x, y in zip("".join(a).splitlines(), "".join(b).splitlines()):
        if x != y:
            return f"{x[:70]!r} vs {y[:70]!r}"
    return "different number of outputs or lines"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode("utf-8")
    except OSError:
        return None


def wait_for(condition, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if condition():
            return time.perf_counter() - start
        time.sleep(0.5)
    raise TimeoutError(f"still waiting after {timeout:.0f} s")


def main() -> None:
    keep = Path(sys.argv[sys.argv.index("--keep") + 1]) if "--keep" in sys.argv else None
    lines = []

    def report(text: str) -> None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{text}   [load {load:.1f}]", flush=True)
        lines.append(text)

    with tempfile.TemporaryDirectory(prefix="site-build-") as tmp:
        site = keep or Path(tmp) / "copy"
        if site.exists():
            sys.exit(f"{site} exists: --keep needs a new directory")
        site.mkdir(parents=True)
        copy_site(site)
        cold, ran = build(site)
        report(f"cold build, cache empty, both languages:   {cold:7.1f} s")
        first = {(lang, page): page_html for lang, page, path in page_url_paths()
                 if (page_html := (site / "site" / path / "index.html").read_text(encoding="utf-8"))}
        warm, ran = build(site)
        report(f"warm rebuild, nothing changed:             {warm:7.1f} s   (target <= 3 s; {ran})")
        module = site / "tutorials_pkg" / f"{EDITED_MODULE}.py"
        module.write_text(module.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
        seconds, ran = build(site)
        report(f"rebuild, tutorials_pkg/{EDITED_MODULE}.py edited:     {seconds:7.1f} s   ({ran})")
        prose = site / "docs" / "en" / PROSE_PAGE
        prose.write_text(prose.read_text(encoding="utf-8").replace(
            "\n# %% [markdown]\n", "\n# %% [markdown]\n# An edited sentence.\n#\n", 1), encoding="utf-8")
        seconds, ran = build(site)
        report(f"rebuild, prose of en/{PROSE_PAGE} edited:      {seconds:7.1f} s   ({ran})")

        zh_en = []
        for page in page_ids():
            zh, en = outputs(first[("zh", page)]), outputs(first[("en", page)])
            zh_en += [f"{page} cell {i}" for i in differing(zh, en)]
        cells = sum(len(outputs(first[("en", page)])) for page in page_ids())
        report(f"code cells whose outputs differ, zh vs en: {len(zh_en)} of {cells}"
               f"{': ' + ', '.join(zh_en) if zh_en else ''}")

        # The first mkdocs serve of a new user: nothing cached.
        shutil.rmtree(site / ".cache")
        shutil.rmtree(site / "site")
        prose.write_text(prose.read_text(encoding="utf-8").replace("# An edited sentence.\n#\n", ""),
                         encoding="utf-8")
        port = free_port()
        base = f"http://127.0.0.1:{port}/{site_path()}/"
        server = subprocess.Popen([sys.executable, "-m", "mkdocs", "serve", "-a", f"127.0.0.1:{port}"],
                                  cwd=site, env=build_env(site / ".cache" / "handbook"),
                                  stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            serve = wait_for(lambda: fetch(base) is not None, 1800)
            report(f"first mkdocs serve until the site answers: {serve:7.1f} s")
            cold_cold, cells = [], 0
            for language, page, path in page_url_paths():
                a, b = outputs(first[(language, page)]), outputs(fetch(base + path) or "")
                cells += len(a)
                cold_cold += [f"{language}/{page} cell {i} ({first_difference(a[i], b[i])})"
                              if i >= 0 else f"{language}/{page}: cells differ in number"
                              for i in differing(a, b)]
            measured = sum(x is None for language, page, _ in page_url_paths()
                           for x in outputs(first[(language, page)]))
            report(f"code cells whose outputs differ, cold vs cold: {len(cold_cold)} of {cells} "
                   f"({measured} measured cells excepted)")
            for line in cold_cold:
                report(f"    {line}")
            prose.write_text(prose.read_text(encoding="utf-8").replace(
                "\n# %% [markdown]\n", "\n# %% [markdown]\n# A sentence edited while serving.\n#\n", 1),
                encoding="utf-8")
            url = base + page_url(PROSE_PAGE, "en")
            shown = wait_for(lambda: "A sentence edited while serving." in (fetch(url) or ""), 600)
            report(f"mkdocs serve shows a prose edit after:     {shown:7.1f} s")
        finally:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)

    one_process = execute_every_page_one_at_a_time()
    report(f"L: every page executed once, one at a time:  {one_process:7.1f} s")
    report(f"cold build / L: {cold / one_process:.2f}; first serve / L: {serve / one_process:.2f} "
           "(target <= 1.0, stretch <= 0.7)")

    sizes = {f"{lang}/{page}": len(text.encode()) for (lang, page), text in first.items()}
    largest = max(sizes, key=sizes.get)
    report(f"largest tutorial page HTML:                {sizes[largest] / 1024:7.1f} KB  "
           f"({largest}; target <= 100,000 bytes)")
    report(f"median tutorial page HTML:                 {statistics.median(sizes.values()) / 1024:7.1f} KB")
    if "--tests" in sys.argv:
        report(f"the test run (python -m pytest):           {time_the_tests():7.1f} s   "
               "(target <= 300 s)")


if __name__ == "__main__":
    main()
