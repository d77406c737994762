"""tools/print_pdf.py on one chapter of the built site, in both languages: its pages,
its outline (the chapter's headings, in order and nesting), text that pdftotext finds
(the prose, and the end of the chapter's longest output line, which fits only wrapped),
its links, and its fonts (each embedded, none as Type 3 glyphs)."""

import html
import os
import re
import shutil
import subprocess
from urllib.parse import urljoin

import pytest

from handbook_tools import CHROMIUM_FLAGS, LANGUAGES, find_chromium, page_url

pytestmark = [pytest.mark.site, pytest.mark.browser]

try:
    from playwright import sync_api
    from pypdf import PdfReader
except ImportError:  # pragma: no cover - both are in the test extra
    sync_api = None

from tools import print_pdf  # noqa: E402

CHROMIUM = find_chromium()


def missing_tool() -> str | None:
    if CHROMIUM is None:
        return "Chromium not found (apt-get install chromium; .ci/run installs it)"
    if not (shutil.which("pdftotext") and shutil.which("pdffonts")):
        return "pdftotext/pdffonts not found (apt-get install poppler-utils; .ci/run installs it)"
    if sync_api is None:
        return "playwright or pypdf not installed (pip install -e '.[test]')"
    return print_pdf.missing_chinese_font()


MISSING = missing_tool()
if MISSING:
    if os.environ.get("HANDBOOK_REQUIRE_TOOLS"):
        raise RuntimeError(MISSING)
    pytest.skip(MISSING, allow_module_level=True)

CHAPTER = "definition"


@pytest.fixture(scope="module")
def pdfs(built_site, tmp_path_factory):
    out = tmp_path_factory.mktemp("pdf")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=CHROMIUM_FLAGS)
        printed = {language: print_pdf.print_pdf(built_site, language, out, CHAPTER, browser)
                   for language in LANGUAGES}
        browser.close()
    return printed


def chapter_html(site, language) -> list[tuple[str, str]]:
    """(page id, its HTML) for the chapter's pages, in nav order."""
    return [(page, (site / page_url(page, language) / "index.html").read_text(encoding="utf-8"))
            for page in print_pdf.pages_to_print(CHAPTER)]


def plain(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())


def expected_outline(site, language) -> list[tuple[int, str]]:
    """The headings of the chapter's pages: its first page's h1 at the top, the other
    pages one level down."""
    outline = []
    for page, text in chapter_html(site, language):
        shift = 0 if page.endswith("/index.py") else 1
        article = text[text.index("<article"):text.index("</article>")]
        for level, inner in re.findall(r'<h([1-6]) id="[^"]*">(.*?)<a class="headerlink"', article):
            outline.append((int(level) - 1 + shift, plain(inner)))
    return outline


def pdf_outline(reader) -> list[tuple[int, str]]:
    found = []

    def walk(items, depth):
        for item in items:
            if isinstance(item, list):
                walk(item, depth + 1)
            else:
                found.append((depth, " ".join(item.title.split())))
    walk(reader.outline, 0)
    return found


def pdf_text(path) -> str:
    result = subprocess.run(["pdftotext", "-enc", "UTF-8", str(path), "-"],
                            capture_output=True, text=True, check=True)
    return result.stdout


def squeezed(text: str) -> str:
    return "".join(text.split())


def longest_output_line(site, language) -> str:
    lines = [line for _, text in chapter_html(site, language)
             for block in re.findall(r'class="jp-RenderedText[^>]*><pre>(.*?)</pre>', text, re.S)
             for line in html.unescape(re.sub(r"<[^>]+>", "", block)).splitlines()]
    return max(lines, key=len)


@pytest.mark.parametrize("language", LANGUAGES)
def test_chapter_pdf_has_its_pages_and_outline(pdfs, built_site, language):
    reader = PdfReader(pdfs[language])
    assert 6 <= len(reader.pages) <= 40, len(reader.pages)
    outline = pdf_outline(reader)
    expected = expected_outline(built_site, language)
    assert len(expected) >= 8
    assert outline == expected
    assert outline[0] == (0, {"zh": "模型定义的三种方式", "en": "Three ways to define a model"}[language])
    assert reader.metadata.title == print_pdf.handbook_title(built_site, language)


@pytest.mark.parametrize("language", LANGUAGES)
def test_chapter_pdf_text_is_searchable_and_outputs_wrap(pdfs, built_site, language):
    text = squeezed(pdf_text(pdfs[language]))
    first_page = chapter_html(built_site, language)[0][1]
    first_paragraph = plain(re.search(r"<h1.*?<p>(.*?)</p>", first_page, re.S).group(1))
    assert len(first_paragraph) > 100 and squeezed(first_paragraph) in text
    assert {"zh": "三者都会注册它们装着的层", "en": "Allthreeregisterthelayers"}[language] in text
    assert "torch.Size([8,10])" in text  # an output of the chapter's first page
    # Drawn past the page's edge, the end of this line would be cut off.
    line = longest_output_line(built_site, language)
    assert len(line) > 120, line
    assert squeezed(line)[-30:] in text


def article_links(site, language) -> tuple[set[str], set[str]]:
    """Where the chapter's articles link to: places in the site (each a page of the chapter,
    or a heading on one), and addresses elsewhere (the recipes' files on GitHub, where the
    build knows its repository); the page buttons' downloads left out, as the PDF leaves
    them out."""
    places, addresses = set(), set()
    for page, text in chapter_html(site, language):
        article = text[text.index("<article"):text.index("</article>")]
        article = re.sub(r'<nav class="notebook-actions".*?</nav>', "", article, flags=re.S)
        for href in map(html.unescape, re.findall(r'<a href="([^"]*)"', article)):
            if re.match(r"https?://", href):
                addresses.add(href)
            elif not href.startswith("#"):
                places.add(urljoin("/" + page_url(page, language), href))
    return places, addresses


@pytest.mark.parametrize("language", LANGUAGES)
def test_chapter_pdf_links_and_fonts(pdfs, built_site, language):
    reader = PdfReader(pdfs[language])
    targets, uris = [], []
    for page in reader.pages:
        for annotation in page.get("/Annots") or []:
            annotation = annotation.get_object()
            if "/Dest" in annotation:
                targets.append(str(annotation["/Dest"]))
            elif "/URI" in (annotation.get("/A") or {}):
                uris.append(str(annotation["/A"]["/URI"]))
    places, addresses = article_links(built_site, language)
    # Links between the chapter's pages lead to their places in the PDF, not to a server
    # (a link that wraps is two link areas: distinct places are counted).
    assert len(set(targets)) == len(places) >= 3
    assert set(targets) <= set(reader.named_destinations), targets
    assert set(uris) == addresses
    fonts = subprocess.run(["pdffonts", str(pdfs[language])], capture_output=True, text=True,
                           check=True).stdout.splitlines()[2:]
    assert fonts and all(line.split()[-5] == "yes" for line in fonts), fonts  # "emb" column
    # Type 3 glyphs (a CFF font, a synthesized bold) leave their lines when text is copied.
    assert not [line for line in fonts if " Type 3 " in line], fonts


def test_unknown_chapter_is_refused_by_name():
    with pytest.raises(SystemExit, match="no chapter named 'defintion'; chapters: blocks, "):
        print_pdf.pages_to_print("defintion")
