"""The handbook's paths, page runner and site-build helpers, shared by tests/ and benchmarks/.

Found through pytest's ``pythonpath`` setting (tests) and the repository root
on ``sys.path`` (``python -m benchmarks.site_build``). Run as a script, it
builds a preview of some pages, both languages, with the cache off:

    python handbook_tools.py blocks surgery

(chapters: every page of each) and prints where the site was written.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import jupytext

ROOT = Path(__file__).resolve().parent
DOCS = ROOT / "docs"
LANGUAGES = ("zh", "en")


# --- pages ------------------------------------------------------------------------------

def load_hook_module(name: str):
    """``hooks/<name>.py``: the build's own code (tag names, page execution), for the tests."""
    import importlib.util

    module_name = f"handbook_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "hooks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[module_name]


execution = load_hook_module("page_execution")
RAISES_TAG = execution.RAISES_TAG
SHOWS_WARNING_TAG = execution.SHOWS_WARNING_TAG


def tutorial_pages(language: str) -> list[Path]:
    return sorted(p for p in (DOCS / language).rglob("*.py") if "assets" not in p.parts)


def page_ids() -> list[str]:
    """Relative paths of the tutorial pages (the same in every language)."""
    return [p.relative_to(DOCS / LANGUAGES[0]).as_posix() for p in tutorial_pages(LANGUAGES[0])]


def chapter_of(page_id: str) -> str:
    """The chapter a page belongs to: ``save_load/checkpoints.py`` -> ``save_load``.

    A chapter is a folder of pages, ``<chapter>/index.py`` first, and its code lives
    in ``tutorials_pkg.<chapter>``."""
    return page_id.split("/")[0].removesuffix(".py")


def chapters() -> list[str]:
    return sorted({chapter_of(p) for p in page_ids()})


def page_url(page_id: str, language: str = LANGUAGES[0]) -> str:
    """The page's URL path under the site's root: ``save_load/index.py`` -> ``save_load/``
    (``en/save_load/`` in English; the first language sits at the root); the home
    page, ``index.md``, is ``""``."""
    path = Path(page_id).with_suffix("").as_posix().removesuffix("index").rstrip("/")
    path = f"{path}/" if path else ""
    return path if language == LANGUAGES[0] else f"{language}/{path}"


def read_cells(path: Path):
    return jupytext.read(path).cells


# --- the recipes pages show ---------------------------------------------------------------

RECIPE_LINES = 40        # a function or a small class a reader copies
PROGRAM_LINES = 80       # a model definition (an nn.Module subclass) or a whole program (main)
RECIPE_MEDIAN = 20


@dataclass
class Recipe:
    page: str             # page id, e.g. "save_load/checkpoints.py"
    names: list[str]      # what the cell passes to show_source
    lines: int            # non-blank lines of what it shows (what the copy button copies)
    budget: int


def shown_recipes(language: str = "en") -> list[Recipe]:
    """Every ``show_source`` cell of ``language``'s pages, with its length and budget."""
    import ast
    import importlib
    import inspect

    from torch import nn

    from tutorials_pkg.source import source_with_imports

    recipes = []
    for path in tutorial_pages(language):
        names = {}  # imported so far on the page: name -> (module, name)
        for cell in read_cells(path):
            if cell.cell_type != "code":
                continue
            body = ast.parse(cell.source).body
            names.update({alias.asname or alias.name: (node.module, alias.name)
                          for node in ast.walk(ast.Module(body, [])) if isinstance(node, ast.ImportFrom)
                          for alias in node.names})
            calls = [node.value for node in body if isinstance(node, ast.Expr)
                     and isinstance(node.value, ast.Call)
                     and getattr(node.value.func, "id", None) == "show_source"]
            for call in calls:
                shown = [a.id for a in call.args]
                objects = [getattr(importlib.import_module(names[n][0]), names[n][1]) for n in shown]
                code = source_with_imports(*objects)
                big = any(inspect.isclass(o) and issubclass(o, nn.Module) or o.__name__ == "main"
                          for o in objects)
                recipes.append(Recipe(path.relative_to(DOCS / language).as_posix(), shown,
                                      sum(1 for line in code.splitlines() if line.strip()),
                                      PROGRAM_LINES if big else RECIPE_LINES))
    return recipes


# --- building the site ------------------------------------------------------------------

COVERAGE_VARIABLES = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")
# The repository the tests' shared build says it was made from (GitHub Actions' variables).
TEST_REPOSITORY = ("example/handbook", "0123456789abcdef0123456789abcdef01234567")


def build_env(cache_dir: Path | None = None, measured: bool = False,
              repository: tuple[str, str] | None = None) -> dict[str, str]:
    """The environment of a test build: no MkDocs 2 banner; the execution cache in
    ``cache_dir`` (an empty folder: every page runs, and its executed notebook stays
    there), or off. Coverage, where it measures this run, measures the build and its
    kernels only if ``measured`` (a scratch site runs a copy of the package: its lines
    are not the package's). ``repository``: the ``(owner/name, commit)`` the build is
    told it is made from; None: none (a scratch site is not a clone)."""
    env = dict(os.environ)
    env["NO_MKDOCS_2_WARNING"] = "1"
    env.pop("GITHUB_REPOSITORY", None)
    env.pop("GITHUB_SHA", None)
    if repository:
        env["GITHUB_REPOSITORY"], env["GITHUB_SHA"] = repository
    if cache_dir is None:
        env["HANDBOOK_CACHE"] = "false"
    else:
        env["HANDBOOK_CACHE"], env["HANDBOOK_CACHE_DIR"] = "true", str(cache_dir)
    if not measured:
        for name in COVERAGE_VARIABLES:
            env.pop(name, None)
    return env


def mkdocs_build(config_dir: Path, site_dir: Path, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess:
    """``mkdocs build --strict --clean`` of ``config_dir`` into ``site_dir``."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-d", str(site_dir)],
        cwd=config_dir, env=build_env() if env is None else env, capture_output=True, text=True,
        timeout=3600,
    )


def executed_notebooks(cache_dir: Path) -> dict[str, "nbformat.NotebookNode"]:
    """The executed pages a build left in its cache, by page id (``save_load/index.py``)."""
    import nbformat

    found = {}
    for path in sorted((cache_dir / "executed").glob("*.ipynb")):
        notebook = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
        found[notebook.metadata["handbook"]["page"]] = notebook
    return found


# Headless Chromium, as the browser test, the PDF tool and the Lighthouse benchmark run it.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--no-first-run"]


def find_chromium() -> str | None:
    """The Chromium (or Google Chrome) on the PATH, or None."""
    return next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])),
                None)


def site_url() -> str:
    """mkdocs.yml's site_url: the environment's HANDBOOK_SITE_URL (the docs workflow sets
    the repository's Pages address), else the default written there."""
    match = re.search(r"""^site_url:.*?(https?://[^\s\]"']+)""", (ROOT / "mkdocs.yml").read_text(),
                      re.M)
    url = os.environ.get("HANDBOOK_SITE_URL") or (match.group(1) if match else "")
    return url.rstrip("/") + "/" if url else ""


def site_path() -> str:
    """The path part of site_url ("pytorch-model-handbook" for a GitHub project site)."""
    return urlparse(site_url()).path.strip("/")


# --- the cells of a built page ------------------------------------------------------------

@dataclass
class OutputHtml:
    classes: list[str]
    attrs: dict[str, str]
    text: str


@dataclass
class CodeCellHtml:
    classes: list[str]    # celltag_<tag> for each of the cell's tags
    outputs: list[OutputHtml]

    @property
    def tags(self) -> list[str]:
        return [c.removeprefix("celltag_") for c in self.classes if c.startswith("celltag_")]

    @property
    def errors(self) -> list[OutputHtml]:
        return [o for o in self.outputs if "jp-OutputArea-error" in o.classes]


class _CellParser(HTMLParser):
    """Code cells (``div.jp-CodeCell``) and the text of each output block in them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cells: list[CodeCellHtml] = []
        self._divs: list[str] = []  # what each open div is: "cell", "output" or ""
        self._output: OutputHtml | None = None

    def handle_starttag(self, tag, attrs):
        if tag != "div":
            return
        attrs = {k: v or "" for k, v in attrs}
        classes = attrs.get("class", "").split()
        if "jp-CodeCell" in classes:
            self.cells.append(CodeCellHtml(classes, []))
            self._divs.append("cell")
        elif "jp-OutputArea-output" in classes and self.cells and "cell" in self._divs:
            self._output = OutputHtml(classes, attrs, "")
            self.cells[-1].outputs.append(self._output)
            self._divs.append("output")
        else:
            self._divs.append("")

    def handle_endtag(self, tag):
        if tag == "div" and self._divs and self._divs.pop() == "output":
            self._output = None

    def handle_data(self, data):
        if self._output is not None:
            self._output.text += data


def code_cells_in_html(page_html: str) -> list[CodeCellHtml]:
    """The code cells of a built notebook page, in order."""
    parser = _CellParser()
    parser.feed(page_html)
    return parser.cells


# --- checks that several test modules make ---------------------------------------------

CHECK_NOT_IMPORTED = (
    "\nimport sys as _sys\n"
    "assert 'tutorials_pkg' not in _sys.modules, 'the copied code imported tutorials_pkg'\n")


def run_copied_code(code: str, where: Path) -> subprocess.CompletedProcess:
    """``code`` as a reader runs it after copying: a new interpreter, isolated from this
    project's environment variables and working directory (``python -I`` in ``where``,
    an empty directory); it fails if the code imported ``tutorials_pkg``."""
    return subprocess.run([sys.executable, "-I", "-c", code + CHECK_NOT_IMPORTED], cwd=where,
                          capture_output=True, text=True, timeout=300)


def list_of_images_detector():
    """A model that takes one argument, a list of images, as torchvision's detection models do."""
    from torch import nn

    class ListOfImagesDetector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 2)

        def forward(self, images):
            return [{"scores": self.head(self.backbone(image[None]).mean((2, 3)))}
                    for image in images]

    return ListOfImagesDetector()


def model_state(model) -> tuple[list[bool], dict]:
    """Every module's mode, and a copy of every buffer."""
    return ([m.training for m in model.modules()],
            {name: b.clone() for name, b in model.named_buffers()})


def assert_state_unchanged(model, before) -> None:
    """The modes and buffers of ``model`` are what ``model_state`` recorded."""
    import torch

    modes, buffers = before
    assert [m.training for m in model.modules()] == modes
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name


def no_hooks_left(model) -> bool:
    """No module of ``model`` has a forward hook or pre-hook."""
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --- a preview: the site's machinery with only some pages --------------------------------

NAV_ITEM = re.compile(r"^  - ")                        # a top-level nav entry
NAV_PAGE = re.compile(r"^\s+- (?:[^:]+: )?(\S+\.py)\s*$")  # a page, titled or not


def nav_page_ids() -> list[str]:
    """The tutorial pages mkdocs.yml's nav lists, in its order."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:\n")[1]
    return [m.group(1) for line in nav.splitlines() if (m := NAV_PAGE.match(line))]


def config_with_pages(wanted) -> str:
    """mkdocs.yml, its nav reduced to the home page and the ``wanted`` pages: a chapter
    name stands for all of its pages, a page id (``definition/index.py``) for itself.

    The nav is the file's last key; each chapter is a top-level entry (title, then its
    pages); an entry left without pages is dropped."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    head, nav = text.split("\nnav:\n")
    entries: list[list[str]] = []
    for line in nav.splitlines(keepends=True):
        if NAV_ITEM.match(line) or not entries:
            entries.append([])
        entries[-1].append(line)

    def page_kept(line: str) -> bool:
        page = NAV_PAGE.match(line)
        return not page or page.group(1) in wanted or chapter_of(page.group(1)) in wanted

    kept = []
    for entry in entries:
        lines = [line for line in entry if page_kept(line)]
        had_pages = any(NAV_PAGE.match(line) for line in entry)
        if not had_pages or any(NAV_PAGE.match(line) for line in lines):
            kept += lines
    return head + "\nnav:\n" + "".join(kept)


def copy_machinery(where: Path, pages=("definition/index.py",)) -> None:
    """mkdocs.yml (nav: home and ``pages``: chapter names or page ids), hooks, overrides,
    assets and tutorials_pkg.

    The pages of a site run against the site's own copy of the package (the
    hook puts the site's root first on the kernels' path), so a test may edit
    the copy. The home pages are stubs (the real ones link to every chapter);
    no tutorial page is copied: ``copy_pages`` does that.
    """
    (where / "mkdocs.yml").write_text(config_with_pages(set(pages)), encoding="utf-8")
    for name in ("hooks", "overrides", "tutorials_pkg"):
        source = ROOT / name
        shutil.copytree(source, where / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(DOCS / "assets", where / "docs" / "assets")
    for language in LANGUAGES:
        (where / "docs" / language).mkdir(parents=True)
        (where / "docs" / language / "index.md").write_text("# Preview\n", encoding="utf-8")
        for page in (DOCS / language).glob("*.md"):  # the other Markdown pages the nav lists
            if page.name != "index.md":
                shutil.copy(page, where / "docs" / language / page.name)


def copy_pages(where: Path, chapters) -> None:
    """Every page of ``chapters``, both languages."""
    for language in LANGUAGES:
        for chapter in chapters:
            shutil.copytree(DOCS / language / chapter, where / "docs" / language / chapter)


def main(names: list[str]) -> int:
    unknown = sorted(set(names) - set(chapters()))
    if unknown:
        sys.exit(f"no chapter {', '.join(unknown)}; chapters: {', '.join(chapters())}")
    where = Path(tempfile.mkdtemp(prefix="site-copy-"))
    copy_machinery(where, names)
    copy_pages(where, names)
    result = mkdocs_build(where, where / "site")
    sys.stderr.write(result.stderr[-8000:])
    print(f"\nsite: {where / 'site'}  (build {'passed' if result.returncode == 0 else 'FAILED'})")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
