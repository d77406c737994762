"""The built site in headless Chromium: outputs, language switch, copy button, search."""

import os
import re
import shutil
from urllib.parse import urlparse

import pytest

from handbook_tools import run_copied_code, site_path

pytestmark = [pytest.mark.site, pytest.mark.browser]

CHROMIUM = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])),
                None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--no-first-run"]

try:
    from playwright import sync_api
except ImportError:  # pragma: no cover - playwright is in the test extra
    sync_api = None

MISSING = ("Chromium not found (apt-get install chromium; .ci/run installs it)" if CHROMIUM is None
           else "playwright not installed (pip install -e '.[test]')" if sync_api is None else None)
if MISSING:
    if os.environ.get("HANDBOOK_REQUIRE_TOOLS"):
        raise RuntimeError(MISSING)
    pytest.skip(MISSING, allow_module_level=True)


@pytest.fixture(scope="module")
def base_url(built_site):
    """The site at site_url's path, gzip-compressed as GitHub Pages serves it."""
    from benchmarks.lighthouse import serve

    server, url = serve(built_site, f"/{site_path()}/" if site_path() else "/")
    yield url
    server.shutdown()


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        tab = context.new_page()
        tab.requests = []
        tab.on("request", lambda request: tab.requests.append(request.url))
        yield tab
        tab.screenshot(path=str(tmp_path / "page.png"), full_page=False)
        assert (tmp_path / "page.png").stat().st_size > 10_000
        browser.close()


def off_site(urls):
    return [u for u in urls if urlparse(u).hostname not in {"127.0.0.1", None}
            and not u.startswith(("data:", "blob:"))]


def test_zh_page_switches_to_en_and_shows_outputs(page, base_url):
    page.goto(base_url + "definition/")
    assert page.locator("h1").first.inner_text().startswith("模型定义的三种方式")
    outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
    assert any("torch.Size([8, 10])" in text for text in outputs)

    page.locator(".md-header .md-select").first.hover()  # Material's language menu
    page.locator('.md-header a.md-select__link[hreflang="en"]').click()
    page.wait_for_url("**/en/definition/")
    assert page.locator("h1").first.inner_text().startswith("Three ways to define a model")
    outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
    assert any("torch.Size([8, 10])" in text for text in outputs)
    assert not off_site(page.requests), off_site(page.requests)


def copy_block(page, block) -> str:
    """What Material's copy button on ``block`` puts on the clipboard."""
    block.scroll_into_view_if_needed()
    block.hover()
    block.locator('button[data-md-type="copy"]').click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.strip() == block.locator("code").inner_text().strip()
    return copied


BLOCKS_PER_PAGE = 4


@pytest.mark.parametrize("chapter", ["definition", "save_load"])
def test_copy_button_copies_the_code_and_the_copy_runs(page, base_url, chapter, tmp_path):
    """Blocks of shown source, copied with the button, run in an isolated interpreter
    (``python -I`` in an empty directory) without tutorials_pkg."""
    page.goto(base_url + f"en/{chapter}/")
    blocks = page.locator(".jp-OutputArea-output .highlight")  # outputs of show_source
    count = blocks.count()
    assert count >= 2, f"{chapter} shows {count} source blocks"
    for index in range(min(count, BLOCKS_PER_PAGE)):
        block = blocks.nth(index)
        # Shown once: its caption links to the file; no code cell above it repeats the call.
        link = block.evaluate("b => b.closest('figure').querySelector('figcaption a').href")
        assert re.fullmatch(r"https://github\.com/.+/blob/\w+/tutorials_pkg/[\w/]+\.py", link), link
        shown_input = block.evaluate(
            "b => b.closest('.jp-CodeCell').querySelector('.jp-InputArea-editor')?.innerText ?? ''")
        lines = [line for line in shown_input.splitlines() if line.strip()]
        assert not lines or not all(line.startswith(("from ", "import ", "show_source("))
                                    for line in lines), f"shown twice:\n{shown_input}"
        copied = copy_block(page, block)
        # It fits the column at 1280 px: long lines wrap, nothing scrolls sideways.
        assert block.evaluate("b => b.querySelector('pre').scrollWidth <= b.querySelector('pre').clientWidth")
        # Its lines start at the left edge (Material centres the text of a <figure>).
        assert block.evaluate("b => getComputedStyle(b.querySelector('pre')).textAlign") in ("left", "start")
        workdir = tmp_path / f"block-{index}"
        workdir.mkdir()
        check = copied
        if chapter == "definition" and index == 0:
            assert "def mlp_sequential" in copied
            check += "\nprint(mlp_sequential())\n"
        result = run_copied_code(check, workdir)
        assert result.returncode == 0, f"{chapter} block {index}:\n{copied}\n{result.stderr}"
        if chapter == "definition" and index == 0:
            assert "Linear(in_features=64" in result.stdout
    assert not off_site(page.requests), off_site(page.requests)


REQUEST_BUDGET_BYTES = 200 * 1024


@pytest.mark.parametrize("chapter", ["en/definition/", "grad_fn/drawing/"])
def test_a_diagram_is_an_svg_in_the_document_and_no_request_is_large(page, base_url, chapter):
    """Diagrams are drawn at build time: an SVG in the page, no script draws it; and
    nothing the page loads (scripts, styles, the search index its worker fetches) is
    over the budget, as transferred (gzip, as GitHub Pages sends text)."""
    finished = []
    page.context.on("requestfinished", lambda request: finished.append(request))  # a bound
    # builtin (list.append) cannot be a Playwright handler: it sets an attribute on it
    page.goto(base_url + chapter)
    page.wait_for_load_state("networkidle")
    drawn = page.locator("figure.diagram > svg").first
    assert drawn.bounding_box()["height"] > 30
    assert drawn.get_attribute("role") == "img" and drawn.get_attribute("aria-label")
    assert not any("mermaid" in u for u in page.requests), page.requests
    sizes = {r.url: r.sizes()["responseBodySize"] for r in finished}
    assert any(u.endswith("search_index.json") for u in sizes), sorted(sizes)
    large = {u: s for u, s in sizes.items() if s > REQUEST_BUDGET_BYTES}
    assert not large, large
    assert not off_site(page.requests), off_site(page.requests)


@pytest.mark.parametrize("start, query, expected", [
    ("", "模型", "definition/"),
    ("en/", "ModuleDict", "en/definition/"),
])
def test_search_finds_the_page(page, base_url, start, query, expected):
    page.goto(base_url + start)
    page.wait_for_load_state("networkidle")  # the search index and its worker are loaded
    box = page.locator("input.md-search__input")
    page.locator("label.md-search__icon, .md-search__input").first.click()
    box.focus()
    page.keyboard.type(query)
    # Material searches on keyup; characters typed through an input method (as
    # Chinese is) arrive without one, so release a key as the IME's commit would.
    page.keyboard.press("End")
    results = page.locator(".md-search-result__item a")
    try:
        results.first.wait_for(timeout=15_000)
    except sync_api.TimeoutError:
        meta = page.locator(".md-search-result__meta").inner_text()
        raise AssertionError(f"no results for {query!r}: {meta!r}, box={box.input_value()!r}")
    hrefs = [urlparse(h).path for h in (a.get_attribute("href") for a in results.all()) if h]
    assert any(h.endswith("/" + expected) for h in hrefs), hrefs
    assert not off_site(page.requests), off_site(page.requests)
