"""A copy of the site's machinery with only some pages, for quick strict builds.

The site test uses it for a scratch page that must fail the build; authors use
it to preview a chapter without executing every other page:

    python tests/site_copy.py blocks surgery      # builds these pages, both languages

It prints where the site was written. The execution cache is off, and the
copy's nav keeps only the pages copied.
"""

import re
import shutil
import sys
import tempfile
from pathlib import Path

from conftest import DOCS, LANGUAGES, ROOT, mkdocs_build

NAV_PAGE = re.compile(r"^\s+- [^:]+: (\S+)\.py\s*$")


def config_with_pages(stems) -> str:
    """mkdocs.yml, its nav reduced to the home page and the given tutorial pages."""
    lines = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(line for line in lines
                   if not (m := NAV_PAGE.match(line)) or m.group(1) in stems)


def copy_machinery(where: Path, stems=("definition",)) -> None:
    """mkdocs.yml (nav: home and ``stems``), hooks, overrides and assets.

    The home pages are stubs (the real ones link to every chapter); no tutorial
    page is copied: ``copy_pages`` does that.
    """
    (where / "mkdocs.yml").write_text(config_with_pages(set(stems)), encoding="utf-8")
    for name in ("hooks", "overrides"):
        source = ROOT / name
        shutil.copytree(source, where / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(DOCS / "assets", where / "docs" / "assets")
    for language in LANGUAGES:
        (where / "docs" / language).mkdir(parents=True)
        (where / "docs" / language / "index.md").write_text("# Preview\n", encoding="utf-8")


def copy_pages(where: Path, stems) -> None:
    for language in LANGUAGES:
        for stem in stems:
            shutil.copy(DOCS / language / f"{stem}.py", where / "docs" / language / f"{stem}.py")


def main(stems: list[str]) -> int:
    where = Path(tempfile.mkdtemp(prefix="site-copy-"))
    copy_machinery(where, stems)
    copy_pages(where, stems)
    result = mkdocs_build(where, where / "site")
    sys.stderr.write(result.stderr[-8000:])
    print(f"\nsite: {where / 'site'}  (build {'passed' if result.returncode == 0 else 'FAILED'})")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
