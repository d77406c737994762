"""Print the built site to one PDF per language, with headless Chromium.

    python tools/print_pdf.py --site site --out site/pdf             # both languages
    python tools/print_pdf.py --site site --out DIR --language en --chapter definition

Needs a built site (``mkdocs build -d DIR``), Chromium, playwright (``pip install -e
".[pdf]"``) and the TrueType Chinese font WenQuanYi Micro Hei (``apt-get install
fonts-wqy-microhei``; ``missing_chinese_font`` says why that one). Writes
``pytorch-model-handbook-<language>.pdf`` (``-<chapter>`` added with ``--chapter``) and
prints each file's size and how long it took.

The site is served on loopback at ``site_url``'s path. Each page of the nav, in its
order (the home page, every chapter, the glossary; with ``--chapter``, that chapter's
pages), is opened and its article kept, without the page buttons and permalinks; the
articles become one document with the site's stylesheets plus the print rules below
(code and outputs wrap, diagrams fit the page), which Chromium prints once. A chapter's
first page keeps its ``h1`` and the chapter's other pages move down one heading level,
so that the PDF's outline, made from the headings, reads chapter > page > section.
Links to a page in the PDF become links inside it; other links to the site point at
``site_url``. Diagrams are inline SVG, so they print as vectors; Chromium embeds the
subset of each font it uses. The docs workflow prints both languages into the site it
deploys, under ``pdf/``, where the home pages link them.
"""

import argparse
import html
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.lighthouse import serve  # noqa: E402
from handbook_tools import (  # noqa: E402
    CHROMIUM_FLAGS, LANGUAGES, chapter_of, find_chromium, page_url, site_path, site_url)

NAME = "pytorch-model-handbook"
CHINESE_FONT = "WenQuanYi Micro Hei"
NAV_ENTRY = re.compile(r"^\s+- (?:[^:]+: )?(\S+\.(?:py|md))\s*$")

PRINT_CSS = """
/* Chinese in a TrueType font (fonts-wqy-microhei, also named by the diagrams), which
   Chromium embeds as a font; it has no bold, and a synthesized bold, like an OpenType CFF
   font (Noto Sans CJK), becomes Type 3 glyphs that readers take out of their lines when
   they search or copy: bold Chinese prints in the regular weight. */
:root, body {
  --md-text-font: Helvetica, Arial, "WenQuanYi Micro Hei";
  --md-code-font: "DejaVu Sans Mono", "WenQuanYi Micro Hei Mono";
}
* { font-synthesis-weight: none; }
@page { size: A4; margin: 16mm 14mm 18mm; }  /* COLUMN_PX: 210 mm - 2 * 14 mm */
html { font-size: 112%; }
body { margin: 0; background: #fff; }
.md-typeset { font-size: 0.7rem; }
.pdf-page + .pdf-page.pdf-chapter { break-before: page; }
.md-typeset h1, .md-typeset h2, .md-typeset h3, .md-typeset h4 { break-after: avoid; }
/* Code, outputs and shown source wrap at the page's edge instead of being cut off; a
   printed table keeps its lines, in smaller type where it is wider (FIT_PRINTED_TABLES). */
.md-typeset pre, .md-typeset pre > code, .md-typeset .jp-OutputArea-output > pre {
  white-space: pre-wrap; overflow-wrap: anywhere; overflow: visible; max-height: none;
}
.md-typeset .jp-OutputArea-output > pre.printed-table { white-space: pre; overflow-wrap: normal; }
.md-typeset .jp-OutputArea-output > pre { font-size: 0.85em; }
/* A block starts on the next page rather than split, unless it is longer than a page. */
.md-typeset .highlight, .md-typeset .jp-OutputArea-output > pre { break-inside: avoid; }
/* Tables and diagrams fit the page's width; diagrams stay vectors. */
.md-typeset table:not([class]) { display: table; font-size: 0.7rem; }
.md-typeset table:not([class]) td, .md-typeset table:not([class]) th { overflow-wrap: anywhere; }
.md-typeset figure.diagram { overflow: visible; break-inside: avoid; }
.md-typeset figure.diagram svg { max-width: 100% !important; min-width: 0 !important; height: auto; }
.md-typeset a { color: var(--md-typeset-a-color); }
"""

COLUMN_PX = round((210 - 2 * 14) / 25.4 * 96)  # the width of the printed column, in CSS px

FOOTER = ('<div style="width:100%;font-size:8px;color:#666;text-align:center;">'
          '<span class="pageNumber"></span> / <span class="totalPages"></span></div>')

# Runs in each served page: its article, cleaned, with absolute URLs, and short ids unique
# in the document (PDF names are short; ids inside SVG drawings stay: their styles use them).
EXTRACT_ARTICLE = """([key, demote]) => {
  const article = document.querySelector("article.md-content__inner").cloneNode(true);
  article.querySelectorAll(".notebook-actions, a.headerlink, .md-source-file, .md-code__nav, "
                           + ".md-clipboard, .source-toggle, script")
    .forEach(e => e.remove());
  article.querySelectorAll(".collapsed").forEach(e => e.classList.remove("collapsed"));
  article.querySelectorAll("a[href]").forEach(a => a.setAttribute("href", a.href));
  article.querySelectorAll("img[src]").forEach(i => {
    i.setAttribute("src", i.src); i.removeAttribute("loading"); });
  article.querySelectorAll("details").forEach(d => d.setAttribute("open", ""));
  const ids = {};
  article.querySelectorAll("[id]").forEach((e, n) => {
    if (!e.closest("svg")) { ids[e.id] = `${key}-${n}`; e.id = ids[e.id]; } });
  if (demote) {
    article.querySelectorAll("h1, h2, h3, h4, h5").forEach(h => {
      const lower = document.createElement("h" + (Number(h.tagName[1]) + 1));
      for (const attr of h.attributes) lower.setAttribute(attr.name, attr.value);
      lower.append(...h.childNodes);
      h.replaceWith(lower);
    });
  }
  return {html: article.innerHTML, ids,
          styles: [...document.querySelectorAll('link[rel="stylesheet"]')].map(l => l.href),
          body: Object.fromEntries([...document.body.attributes].map(a => [a.name, a.value]))};
}"""

# Runs in the combined document, laid out as printed: a printed table wider than the
# column gets the type size at which it fits.
FIT_PRINTED_TABLES = """() => {
  for (const pre of document.querySelectorAll("pre.printed-table")) {
    if (pre.scrollWidth <= pre.clientWidth) continue;
    const size = parseFloat(getComputedStyle(pre).fontSize);
    pre.style.fontSize = `${(size * pre.clientWidth / pre.scrollWidth * 0.98).toFixed(2)}px`;
  }
}"""

# Runs in the combined document: links to its pages point inside it, links to the rest
# of the served site point at the published site.
LINK_LINKS = """([pages, ids, served, published]) => {
  for (const a of document.querySelectorAll("a[href]")) {
    const url = new URL(a.getAttribute("href"));
    let path = url.origin + url.pathname.replace(/index\\.html$/, "");
    if (!path.endsWith("/") && !/\\.[a-z0-9]+$/i.test(path)) path += "/";
    const key = pages[path];
    if (key !== undefined) {
      const id = url.hash ? ids[key][decodeURIComponent(url.hash.slice(1))] : undefined;
      a.setAttribute("href", "#" + (id ?? key));
    } else if (url.href.startsWith(served)) {
      a.setAttribute("href", published + url.href.slice(served.length));
    }
  }
}"""


def chromium() -> str:
    found = find_chromium()
    if not found:
        raise SystemExit("Chromium not found (looked for chromium, chromium-browser, "
                         "google-chrome): apt-get install chromium")
    return found


def missing_chinese_font() -> str | None:
    """Why Chinese text cannot print, or None. Every language has some (the glossary), and
    it needs a TrueType font: Chromium turns an OpenType CFF font such as Noto Sans CJK
    into Type 3 glyphs, which PDF readers take out of their lines when they search or copy."""
    fc_list = shutil.which("fc-list")
    if fc_list and not subprocess.run([fc_list, CHINESE_FONT], capture_output=True,
                                      text=True).stdout.strip():
        return (f"the font {CHINESE_FONT!r} is not installed, and the PDFs need it for "
                "Chinese text that can be searched: apt-get install fonts-wqy-microhei")
    return None


def nav_pages() -> list[str]:
    """Every page of mkdocs.yml's nav (Markdown and tutorial pages), in its order."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:\n")[1]
    return [m.group(1) for line in nav.splitlines() if (m := NAV_ENTRY.match(line))]


def pages_to_print(chapter: str | None) -> list[str]:
    """The pages to print, in nav order: every page, or ``chapter``'s."""
    pages = nav_pages()
    if chapter is None:
        return pages
    chapters = sorted({chapter_of(p) for p in pages if "/" in p})
    if chapter not in chapters:
        raise SystemExit(f"no chapter named {chapter!r}; chapters: {', '.join(chapters)}")
    return [p for p in pages if chapter_of(p) == chapter]


def keeps_h1(page_id: str) -> bool:
    """A chapter's first page, the home page and the glossary head the outline."""
    return "/" not in page_id or page_id.endswith("/index.py")


def handbook_title(site: Path, language: str) -> str:
    """The home page's heading: the handbook's name in ``language``."""
    home = site / page_url("index.md", language) / "index.html"
    match = re.search(r"<h1[^>]*>(.*?)<", home.read_text(encoding="utf-8"), re.S)
    return html.unescape(match.group(1).strip())


def check_site(site: Path, pages: list[str], language: str) -> None:
    """Refuses a folder that is not a built site with every page to print."""
    if not (site / "sitemap.xml").is_file():
        raise SystemExit(f"{site} is not a built site (it has no sitemap.xml); "
                         "build one first: mkdocs build -d DIR, then --site DIR")
    missing = [page_url(p, language) or "/" for p in pages
               if not (site / page_url(p, language) / "index.html").is_file()]
    if missing:
        raise SystemExit(f"{site} lacks pages of the nav ({', '.join(missing)}): "
                         "build the whole site again (mkdocs build -d DIR)")


def pdf_name(language: str, chapter: str | None) -> str:
    return f"{NAME}-{language}{f'-{chapter}' if chapter else ''}.pdf"


def print_pdf(site: Path, language: str, out: Path, chapter: str | None = None,
              browser=None) -> Path:
    """Print ``language``'s pages (one chapter's, with ``chapter``) of the built ``site``
    into ``out``; returns the PDF's path. ``browser``: a launched playwright Chromium."""
    from playwright.sync_api import sync_playwright

    site = Path(site)
    pages = pages_to_print(chapter)
    check_site(site, pages, language)
    if missing_chinese_font():
        raise SystemExit(missing_chinese_font())
    out.mkdir(parents=True, exist_ok=True)
    target = out / pdf_name(language, chapter)
    server, served = serve(site, f"/{site_path()}/" if site_path() else "/")
    server.handle_error = lambda request, address: None  # a load Chromium gave up on
    playwright = None
    try:
        if browser is None:
            playwright = sync_playwright().start()
            browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        tab = browser.new_page()
        sections, keys, ids, styles, body = [], {}, {}, [], {}
        for index, page_id in enumerate(pages):
            url = served + page_url(page_id, language)
            tab.goto(url)
            key = f"p{index}"
            found = tab.evaluate(EXTRACT_ARTICLE, [key, not keeps_h1(page_id)])
            chapter_start = ' pdf-chapter' if keeps_h1(page_id) else ''
            sections.append(f'<section class="pdf-page{chapter_start}" id="{key}">'
                            f'{found["html"]}</section>')
            keys[url], ids[key] = key, found["ids"]
            styles, body = styles or found["styles"], body or found["body"]
        links = "\n".join(f'<link rel="stylesheet" href="{html.escape(s)}">' for s in styles)
        body_attributes = " ".join(f'{k}="{html.escape(v)}"' for k, v in body.items())
        title = handbook_title(site, language)
        document = (f'<!doctype html><html lang="{language}"><head><meta charset="utf-8">'
                    f'<title>{html.escape(title)}</title>{links}<style>{PRINT_CSS}</style></head>'
                    f'<body {body_attributes}><article class="md-content__inner md-typeset">'
                    + "\n".join(sections) + "</article></body></html>")
        tab.set_content(document, wait_until="load")
        tab.evaluate("document.fonts.ready")
        tab.emulate_media(media="print")
        tab.set_viewport_size({"width": COLUMN_PX, "height": 1000})
        tab.evaluate(FIT_PRINTED_TABLES)
        tab.evaluate(LINK_LINKS, [keys, ids, served, site_url()])
        tab.pdf(path=str(target), format="A4", print_background=True, outline=True,
                tagged=True, display_header_footer=True, header_template="<span></span>",
                footer_template=FOOTER, prefer_css_page_size=True)
        tab.close()
    finally:
        if playwright is not None:
            browser.close()
            playwright.stop()
        server.shutdown()
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site",
                        help="the built site (mkdocs build -d DIR); default: site/")
    parser.add_argument("--language", choices=LANGUAGES, action="append",
                        help="a language to print (repeat for more); default: every language")
    parser.add_argument("--chapter", help="print only this chapter (its folder's name)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PDFs")
    args = parser.parse_args(argv)
    for language in args.language or LANGUAGES:
        start = time.perf_counter()
        target = print_pdf(args.site, language, args.out, args.chapter)
        print(f"{target.name}: {target.stat().st_size / 1e6:.1f} MB "
              f"in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
