"""The built site in headless Chromium: outputs, language switch, copy button, search,
and every page on a phone and on a desktop."""

import contextlib
import os
import re
from urllib.parse import urlparse

import pytest

from handbook_tools import (CHROMIUM_FLAGS, LANGUAGES, find_chromium, page_ids, page_url,
                           run_copied_code, site_path)

pytestmark = [pytest.mark.site, pytest.mark.browser]

CHROMIUM = find_chromium()

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


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module (a launch takes a second); each test has its own context."""
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    tab = context.new_page()
    tab.requests = []
    tab.on("request", lambda request: tab.requests.append(request.url))
    yield tab
    tab.screenshot(path=str(tmp_path / "page.png"), full_page=False)
    assert (tmp_path / "page.png").stat().st_size > 10_000
    context.close()


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
    """Blocks of shown source, copied with the button, are the code shown; the first
    runs in an isolated interpreter (``python -I`` in an empty directory) without
    tutorials_pkg."""
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
        if index > 0:
            # Copied as shown: each shown block's source runs in a fresh interpreter in
            # tests/test_source.py; one per chapter runs here, from the clipboard.
            continue
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


# --- every page, on a phone and on a desktop ----------------------------------------------

PHONE, DESKTOP = 390, 1280

# One pass over a page in the browser: what a reader would see wrong. Returns a list of
# problems, each naming the element.
PAGE_PROBLEMS = """(width) => {
  const problems = [];
  const name = e => e.tagName.toLowerCase() + (e.className && typeof e.className === "string"
    ? "." + e.className.trim().split(/\\s+/).join(".") : "") + ` "${e.textContent.trim().slice(0, 40)}"`;
  const W = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth > W) {
    problems.push(`page scrolls sideways: ${document.documentElement.scrollWidth} px wide`);
  }
  const article = document.querySelector(".md-content article");
  // Nothing runs into the table of contents on the right (where it is shown) or off a
  // phone's screen, unless a box it sits in scrolls (a table, a diagram) short of that.
  const toc = document.querySelector(".md-sidebar--secondary").getBoundingClientRect();
  const limit = Math.min(W, toc.width > 0 ? toc.left : W) + 1;
  for (const e of article.querySelectorAll("*")) {
    if (e.getBoundingClientRect().right <= limit) continue;
    let clipped = false;
    for (let p = e.parentElement; p && p !== article; p = p.parentElement) {
      if (["auto", "scroll", "hidden"].includes(getComputedStyle(p).overflowX)
          && p.getBoundingClientRect().right <= limit) { clipped = true; break; }
    }
    if (!clipped) { problems.push(`runs out of the column: ${name(e)}`); break; }
  }
  // Code is styled as code: a box and a code font, and a copy button on code to copy.
  for (const pre of article.querySelectorAll("pre")) {
    const style = getComputedStyle(pre.querySelector("code") || pre);
    const box = [pre, pre.querySelector("code"), pre.parentElement].filter(Boolean)
      .some(e => getComputedStyle(e).backgroundColor !== "rgba(0, 0, 0, 0)"
                 || getComputedStyle(e).borderLeftStyle !== "none");
    if (!box || !/mono|courier/i.test(style.fontFamily)) problems.push(`unstyled code: ${name(pre)}`);
  }
  for (const block of article.querySelectorAll(".highlight")) {
    if (block.closest(".jp-OutputArea-output:not([data-mime-type$='source+json'])")) continue;
    if (!block.querySelector("button[data-md-type='copy']")) {
      problems.push(`code without a copy button: ${name(block)}`);
    }
  }
  // A long shown source opens collapsed, with a button to open it.
  for (const figure of article.querySelectorAll("figure.shown-source")) {
    const lines = figure.querySelector(".highlight code").textContent.split("\\n").length - 1;
    if (lines > 40 && !(figure.classList.contains("collapsed")
                        && figure.querySelector("button.source-toggle"))) {
      problems.push(`a shown source of ${lines} lines is not collapsed`);
    }
  }
  // Diagram labels at 12 px or more: a diagram is never drawn under 3/4 of its size.
  for (const svg of article.querySelectorAll("figure.diagram svg")) {
    const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    if (scale < 0.75 - 0.01) problems.push(`a diagram drawn at ${scale.toFixed(2)} of its size`);
  }
  // The interface speaks the page's language: the theme toggle's label.
  const zh = document.documentElement.lang.startsWith("zh");
  for (const label of document.querySelectorAll("form[data-md-component=palette] label")) {
    if (zh !== /[\\u4e00-\\u9fff]/.test(label.title)) problems.push(`theme toggle: "${label.title}"`);
  }
  // The page's table of contents is in the navigation drawer too.
  const contents = document.querySelectorAll(".md-sidebar--secondary .md-nav--secondary a").length;
  const drawer = document.querySelectorAll(
    ".md-nav--primary .md-nav--secondary a, .md-nav--primary .drawer-toc a").length;
  if (contents && drawer !== contents) {
    problems.push(`the drawer lists ${drawer} of the ${contents} headings`);
  }
  return problems;
}"""


def every_page() -> list[str]:
    """Both home pages, every tutorial page and the glossary, in both languages."""
    from benchmarks.lighthouse import pages
    return pages() + [page_url("glossary.md", language) for language in LANGUAGES]


def test_every_page_reads_on_a_phone_and_a_desktop(page, base_url):
    """Every page in both languages at 390 px and at 1280 px: nothing scrolls sideways or
    runs into the table of contents, code looks like code, long sources are collapsed,
    diagrams are readable, the theme toggle is in the page's language, the drawer has
    the page's table of contents."""
    # Each page's search worker would fetch and index the search index: not used here.
    page.route("**/search/search_index.json", lambda route: route.abort())
    problems = {}
    paths = every_page()
    for path in paths:
        page.set_viewport_size({"width": PHONE, "height": 844})
        page.goto(base_url + path, wait_until="domcontentloaded")  # after deferred scripts
        found = [f"{PHONE} px: {p}" for p in page.evaluate(PAGE_PROBLEMS, PHONE)]
        page.set_viewport_size({"width": DESKTOP, "height": 900})
        with contextlib.suppress(sync_api.TimeoutError):  # the header's transitions settle
            page.wait_for_function("() => document.documentElement.scrollWidth <= innerWidth",
                                   timeout=2000)
        found += [f"{DESKTOP} px: {p}" for p in page.evaluate(PAGE_PROBLEMS, DESKTOP)]
        if found:
            problems[path or "/"] = found
    assert len(paths) == 2 * (len(page_ids()) + 2)  # both languages: home, pages, glossary
    assert not problems, "\n".join(f"{path}: {p}" for path, found in problems.items() for p in found)


def test_the_page_check_catches_what_it_looks_for(page, base_url):
    """The check above fails on a page that scrolls sideways, a code block without
    styling, a long source left open and a drawer without the contents."""
    page.set_viewport_size({"width": PHONE, "height": 844})
    page.goto(base_url + "en/save_load/", wait_until="load")
    assert page.evaluate(PAGE_PROBLEMS, PHONE) == []
    page.evaluate("""() => {
      const article = document.querySelector('.md-content article');
      const wide = document.createElement('p');
      wide.style.width = '900px';
      wide.textContent = 'wide';
      article.append(wide);
      const bare = document.createElement('pre');
      bare.textContent = 'print(1)';
      article.append(bare);
      document.querySelector('.drawer-toc').remove();
    }""")
    found = "\n".join(page.evaluate(PAGE_PROBLEMS, PHONE))
    assert "scrolls sideways" in found and "runs out of the column" in found, found
    assert 'unstyled code: pre "print(1)"' in found, found
    assert "the drawer lists 0 of the" in found, found
    page.goto(base_url + "en/distributed/launcher/", wait_until="load")
    page.evaluate("() => document.querySelector('figure.shown-source.collapsed')"
                  ".classList.remove('collapsed')")
    assert "is not collapsed" in "\n".join(page.evaluate(PAGE_PROBLEMS, PHONE))


def test_a_phone_drawer_shows_a_chapter_page_contents_and_long_sources_open(page, base_url):
    page.set_viewport_size({"width": PHONE, "height": 844})
    page.goto(base_url + "distributed/", wait_until="load")  # a chapter's first page
    page.locator("label.md-header__button[for=__drawer]").click()
    toc = page.locator(".md-nav--primary .drawer-toc a")
    toc.first.wait_for(state="visible")
    assert toc.first.bounding_box()["y"] > 50  # below the drawer's title, not under it
    assert [t.strip() for t in toc.all_inner_texts()] == [
        t.strip() for t in page.locator(".md-sidebar--secondary .md-nav--secondary a")
        .evaluate_all("links => links.map(a => a.textContent)")]
    # A long shown source: collapsed to a few lines, opened by its button, copied whole.
    page.goto(base_url + "en/distributed/launcher/", wait_until="load")
    figure = page.locator("figure.shown-source").filter(
        has=page.locator("button.source-toggle")).first
    assert figure.evaluate("f => f.classList.contains('collapsed')")
    closed = figure.bounding_box()["height"]
    figure.locator("button.source-toggle").click()
    assert figure.evaluate("f => !f.classList.contains('collapsed')")
    assert figure.bounding_box()["height"] > closed * 1.5
    assert figure.locator("button.source-toggle").get_attribute("aria-expanded") == "true"


def test_a_wrapped_line_of_code_continues_under_its_start(page, base_url):
    """On a phone a long line wraps; its continuation starts further in than the line,
    and the text (what the copy button copies) is the code as written."""
    page.set_viewport_size({"width": PHONE, "height": 844})
    page.goto(base_url + "en/distributed/launcher/", wait_until="load")
    line = page.locator('figure.shown-source pre .line[style*="--indent:4"]').first
    boxes = line.evaluate("""l => {
      const range = document.createRange();
      range.selectNodeContents(l);
      const rects = [...range.getClientRects()].filter(r => r.width > 0);
      const tops = [...new Set(rects.map(r => Math.round(r.top)))].sort((a, b) => a - b);
      const left = top => Math.min(...rects.filter(r => Math.round(r.top) === top).map(r => r.left));
      const ch = parseFloat(getComputedStyle(l).fontSize) * 0.5;
      const first = l.textContent.search(/\\S/);
      return {lines: tops.length, start: left(tops[0]), second: left(tops[1] ?? tops[0]), first, ch};
    }""")
    assert boxes["lines"] >= 2, boxes  # it does wrap at 390 px
    # The text starts `first` columns in; the continuation 4 columns further in.
    assert boxes["second"] > boxes["start"] + boxes["first"] * boxes["ch"], boxes
    shown, written = line.evaluate("l => [l.closest('code').innerText, l.closest('code').textContent]")
    assert shown.rstrip("\n") == written.rstrip("\n")


SEARCHES = {
    "zh": [("保存", "save_load/"), ("中间层", "intermediate/"), ("剪枝", "grad_fn/"),
           ("钩子", "intermediate/"), ("state_dict", "save_load/"),
           ("weights_only", "save_load/"), ("safetensors", "save_load/"),
           ("IntermediateLayerGetter", "intermediate/")],
    "en": [("surgery", "surgery/"), ("summaries", "summary/"), ("checkpoints", ""),
           ("hooks", "intermediate/"), ("sharded", "distributed/"), ("pickle", "save_load/"),
           ("gradients", "intermediate/"), ("safetensors", "save_load/"),
           ("state_dict", "save_load/"), ("weights_only", "save_load/"),
           ("IntermediateLayerGetter", "intermediate/"), ("pruning", "grad_fn/")],
}


@pytest.mark.parametrize("language", sorted(SEARCHES))
def test_search_finds_its_own_language_by_word_forms(page, base_url, language):
    """Each query finds pages of the page's own language only, its first result in the
    chapter expected; English by word forms (stemmed), Chinese by words, identifiers in
    both."""
    root = "" if language == "zh" else f"{language}/"
    page.goto(base_url + root + "definition/")
    page.wait_for_load_state("networkidle")
    page.locator("label.md-search__icon, .md-search__input").first.click()
    box = page.locator("input.md-search__input")
    meta = page.locator(".md-search-result__meta")
    wrong = []
    for query, chapter in SEARCHES[language]:
        box.fill("")
        page.keyboard.press("End")
        page.wait_for_function(  # the last query's results are gone
            "() => !document.querySelector('.md-search-result__list').children.length")
        box.fill(query)  # all at once: results for a part of the query never show
        page.keyboard.press("End")  # Material searches on keyup (see test_search_finds_the_page)
        page.wait_for_function(
            "() => document.querySelector('.md-search-result__list').children.length > 0 || "
            "/^(No|没有)/.test(document.querySelector('.md-search-result__meta').innerText)",
            timeout=15_000)
        hrefs = [urlparse(a).path.removeprefix(urlparse(base_url).path) for a in
                 page.locator(".md-search-result__item > a").evaluate_all(
                     "links => links.map(a => a.href)")]
        if not hrefs:
            wrong.append(f"{query!r}: {meta.inner_text()!r}")
        elif not all(h.startswith(root) and (root or not h.startswith("en/")) for h in hrefs):
            wrong.append(f"{query!r}: results in another language {hrefs[:3]}")
        elif not hrefs[0].removeprefix(root).startswith(chapter):
            wrong.append(f"{query!r}: first result {hrefs[0]}, not in {root}{chapter}")
    assert not wrong, "\n".join(wrong)
    assert not off_site(page.requests), off_site(page.requests)


@pytest.mark.parametrize("start, other", [("en/save_load/checkpoints/", "zh"),
                                          ("save_load/checkpoints/", "en")])
def test_switching_language_keeps_the_section(page, base_url, start, other):
    """The pages are translations with their headings in the same order: switching
    language lands on the same section, from the address's anchor or from where the
    reader has scrolled to."""
    page.goto(base_url + start, wait_until="load")
    ids = page.locator(".md-content article :is(h1, h2, h3, h4)[id]").evaluate_all(
        "hs => hs.map(h => h.id)")
    page.evaluate("id => document.getElementById(id).scrollIntoView()", ids[3])
    page.locator(".md-header .md-select").first.hover()
    page.locator(f'.md-header a.md-select__link[hreflang="{other}"]').click()
    page.wait_for_function("() => location.hash.length > 1")
    there = page.locator(".md-content article :is(h1, h2, h3, h4)[id]").evaluate_all(
        "hs => hs.map(h => h.id)")
    assert page.evaluate("() => decodeURIComponent(location.hash)") == "#" + there[3]
    top = page.locator(f'[id="{there[3]}"]').bounding_box()["y"]
    assert 0 <= top < 300, top  # scrolled to it
