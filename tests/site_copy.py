"""A copy of the site's machinery with only some pages, for quick strict builds.

The site test uses it for a scratch page that must fail the build; authors use
it to preview a chapter without executing every other page:

    python tests/site_copy.py blocks surgery      # builds definition + these, both languages

It prints where the site was written. The execution cache is off.
"""

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LANGUAGES = ("zh", "en")
NAV_PAGES = ("definition",)  # pages mkdocs.yml's nav names: every copy needs them


def copy_machinery(where: Path) -> None:
    """mkdocs.yml, hooks, overrides, assets and the home pages, without any tutorial page."""
    for name in ("mkdocs.yml", "hooks", "overrides"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, where / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, where / name)
    shutil.copytree(DOCS / "assets", where / "docs" / "assets")
    for language in LANGUAGES:
        (where / "docs" / language).mkdir(parents=True)
        shutil.copy(DOCS / language / "index.md", where / "docs" / language / "index.md")


def copy_pages(where: Path, stems) -> None:
    for language in LANGUAGES:
        for stem in stems:
            shutil.copy(DOCS / language / f"{stem}.py", where / "docs" / language / f"{stem}.py")


def main(stems: list[str]) -> int:
    from conftest import mkdocs_build

    where = Path(tempfile.mkdtemp(prefix="site-copy-"))
    copy_machinery(where)
    copy_pages(where, dict.fromkeys([*NAV_PAGES, *stems]))
    result = mkdocs_build(where, where / "site")
    sys.stderr.write(result.stderr[-8000:])
    print(f"\nsite: {where / 'site'}  (build {'passed' if result.returncode == 0 else 'FAILED'})")
    return result.returncode


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main(sys.argv[1:]))
