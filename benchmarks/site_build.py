"""Build times and page sizes of the site.

Prints: cold build seconds (both languages, execution cache empty), warm
rebuild seconds (nothing changed), seconds to execute every page once in one
process, the ratio cold / one-process, and the largest and median HTML size of
a tutorial page. Targets: warm rebuild <= 10 s; every tutorial page <= 200 KB.

    python -m benchmarks.site_build

It empties the execution cache (.cache/mkdocs-jupyter) for the cold build.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from handbook_tools import ROOT, run_page, tutorial_pages  # the tests' page runner


def build(site: Path) -> float:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", MKDOCS_JUPYTER_CACHE="true")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def execute_all_pages_in_one_process() -> float:
    os.environ.setdefault("MPLBACKEND", "Agg")
    start = time.perf_counter()
    for language in ("zh", "en"):
        for page in tutorial_pages(language):
            with tempfile.TemporaryDirectory() as scratch:
                runs = run_page(page, Path(scratch))
            failed = [r for r in runs if (r.error is None) == r.tagged]
            assert not failed, f"{page}: cells {[r.index for r in failed]} did not run as tagged"
    return time.perf_counter() - start


def main() -> None:
    shutil.rmtree(ROOT / ".cache" / "mkdocs-jupyter", ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        cold = build(site)
        warm = build(site)
        pages = [site / p.relative_to(ROOT / "docs" / "zh").with_suffix("") / "index.html"
                 for p in tutorial_pages("zh")]
        pages += [site / "en" / p.relative_to(ROOT / "docs" / "en").with_suffix("") / "index.html"
                  for p in tutorial_pages("en")]
        sizes = {p.relative_to(site).as_posix(): p.stat().st_size for p in pages}
    one_process = execute_all_pages_in_one_process()

    largest = max(sizes, key=sizes.get)
    print(f"tutorial pages (both languages): {len(sizes)}")
    print(f"cold build, cache empty:          {cold:7.1f} s")
    print(f"warm rebuild, nothing changed:    {warm:7.1f} s   (target <= 10 s)")
    print(f"all pages executed in 1 process:  {one_process:7.1f} s")
    print(f"cold build / one process:         {cold / one_process:7.2f}")
    print(f"largest tutorial page HTML:       {sizes[largest] / 1024:7.1f} KB  ({largest}; target <= 200 KB)")
    print(f"median tutorial page HTML:        {statistics.median(sizes.values()) / 1024:7.1f} KB")


if __name__ == "__main__":
    main()
