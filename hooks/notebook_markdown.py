"""An executed tutorial page as the Markdown of a MkDocs page.

The page's Markdown cells are kept as written: MkDocs renders them as it renders
every Markdown page (headings and their ids, the table of contents, search, code
blocks in the prose with Material's copy button). Each code cell becomes one HTML
block: its code highlighted in Material's markup (``tutorials_pkg.source.highlight_html``)
and its outputs. A code cell's classes carry its tags (``celltag_measured``), an
error output its exception (``data-ename``); a cell that only shows a recipe
(``show_source``) shows no code of its own, only the recipe with a caption linking
its file. Each Mermaid diagram (a fence in the prose or a ``text/vnd.mermaid``
output) is replaced by the SVG drawn beforehand (``hooks/diagrams.py``).

Nothing here imports MkDocs: ``hooks/notebook_pages.py`` calls ``page_markdown``.
"""

import ast
import html
import re
from pathlib import Path

from nbconvert.filters import ansi2html
# A shown recipe's data, and code in Material's markup.
from tutorials_pkg.source import SOURCE_MIME, hanging_indents, highlight_html
MERMAID_MIME = "text/vnd.mermaid"
# Richest first, as Jupyter picks what to show.
DISPLAY_ORDER = (SOURCE_MIME, MERMAID_MIME, "image/svg+xml", "text/html", "image/png",
                 "image/jpeg", "text/plain")


def joined(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def shows_source_only(code: str) -> bool:
    """A cell that only imports and calls ``show_source(...)``: its output (the source with
    its imports, under a caption naming the file) says all its code would."""
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    *imports, last = body or [None]
    return (all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in imports)
            and isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
            and isinstance(last.value.func, ast.Name) and last.value.func.id == "show_source")


class Renderer:
    """Turns one language's executed page into Markdown.

    ``source_url``: the base URL of the repository's files (``.../blob/main/``) that a
    shown recipe's caption links to, or None; ``diagram``: ``source -> HTML`` of a
    drawn diagram, or None where it is not drawn yet (``missing`` lists those);
    ``fence``: the pattern of a Mermaid fence in Markdown.
    """

    def __init__(self, source_url: str | None, diagram, fence):
        self.source_url = source_url
        self.diagram = diagram
        self.fence = fence  # a Mermaid fence in Markdown (hooks/diagrams.py)
        self.missing: list[str] = []

    def page(self, notebook, stamp: str = "") -> str:
        """The page; ``stamp``, a line on when its outputs were made, after its first
        Markdown cell (the title and what the page is about)."""
        parts = []
        for cell in notebook.cells:
            if cell.cell_type == "markdown":
                parts.append(self.markdown_cell(cell.source))
                if stamp:
                    parts.append(f'<p class="page-stamp">{html.escape(stamp)}</p>')
                    stamp = ""
            elif cell.cell_type == "code":
                parts.append(self.code_cell(cell))
        return "\n\n".join(parts) + "\n"

    def markdown_cell(self, text: str) -> str:
        def replace(match):
            drawn = self.drawing(match.group(1))
            return match.group(0) if drawn is None else drawn

        return self.fence.sub(replace, text)

    def drawing(self, source: str) -> str | None:
        drawn = self.diagram(source)
        if drawn is None:
            self.missing.append(source)
        return drawn

    def code_cell(self, cell) -> str:
        classes = " ".join(["jp-Cell", "jp-CodeCell",
                            *(f"celltag_{tag}" for tag in cell.metadata.get("tags", []))])
        code = "" if shows_source_only(cell.source) else (
            f'<div class="jp-InputArea-editor">{highlight_html(cell.source)}</div>')
        outputs = "".join(self.output(output) for output in cell.get("outputs", []))
        # <nb-cell data-search-exclude>: Material's search leaves the cell out of the index
        # up to the first end tag of that name, so the name must not nest (the index keeps
        # the prose and headings, which name what each cell teaches).
        block = (f'<div class="{classes}"><nb-cell data-search-exclude>{code}{outputs}'
                 "</nb-cell></div>")
        return markdown_safe(block)

    def output(self, output) -> str:
        kind = output.output_type
        if kind == "stream":
            mime = f"application/vnd.jupyter.{output.name}"
            return (f'<div class="jp-RenderedText jp-OutputArea-output" data-mime-type="{mime}">'
                    f"{printed_text(joined(output.text))}</div>")
        if kind == "error":
            text = ansi2html("\n".join(output.traceback))
            return ('<div class="jp-RenderedText jp-OutputArea-output jp-OutputArea-error" '
                    'data-mime-type="application/vnd.jupyter.stderr" '
                    f'data-ename="{html.escape(output.ename)}"><pre>{text}</pre></div>')
        data = output.get("data", {})
        mime = next((m for m in DISPLAY_ORDER if m in data), None)
        if mime is None:
            return ""
        return (f'<div class="jp-OutputArea-output" data-mime-type="{mime}">'
                f"{self.display(mime, data[mime])}</div>")

    def display(self, mime: str, value) -> str:
        if mime == SOURCE_MIME:
            return self.shown_source(value["code"], value["paths"])
        if mime == MERMAID_MIME:
            source = joined(value)
            drawn = self.drawing(source)
            return drawn if drawn is not None else f"<pre>{html.escape(source)}</pre>"
        if mime in ("image/svg+xml", "text/html"):
            return joined(value)
        if mime in ("image/png", "image/jpeg"):
            return (f'<img alt="An image this cell drew" src="data:{mime};base64,'
                    f'{joined(value).strip()}">')
        return printed_text(joined(value))

    def shown_source(self, code: str, paths: list[str]) -> str:
        def caption(path):
            name = f"<code>{html.escape(path)}</code>"
            if self.source_url:
                name = f'<a href="{html.escape(self.source_url + path, quote=True)}">{name}</a>'
            return f"<figcaption>{name}</figcaption>"

        return (f'<figure class="shown-source">{"".join(map(caption, paths))}'
                f"{highlight_html(code)}</figure>")


TABLE_RULE = re.compile(r"^[ \t]*[-=─━+|]{20,}[ \t]*$", re.MULTILINE)


def printed_text(text: str) -> str:
    """Printed text as a ``<pre>``: its long lines wrap, each continued under its start
    (``hanging_indents``); a printed table (a line that is a rule of ``-``, ``=``, ...)
    keeps its lines whole and scrolls inside its box."""
    if TABLE_RULE.search(text):
        return f'<pre class="printed-table">{html.escape(text)}</pre>'
    return f"<pre>{hanging_indents(html.escape(text))}</pre>"


def markdown_safe(block: str) -> str:
    """An HTML block that Python-Markdown passes through as it is: no backtick in it starts
    a code fence (the fence extension reads the text before the HTML is set aside)."""
    return block.replace("`", "&#96;")


STAMP = {
    "zh": "本页的输出在 {date} 构建网站时运行代码得到，整页运行 {seconds:.1f} 秒{cached}。",
    "en": "The outputs on this page were made by running its code on {date}, when the site "
          "was built; the page ran in {seconds:.1f} s{cached}.",
}
FROM_CACHE = {"zh": "（本次构建取自缓存）", "en": " (this build took them from the cache)"}


def stamp(language: str, date: str, seconds: float, cached: bool) -> str:
    """When a page's outputs were made and how long the page ran, in ``language``."""
    text = STAMP.get(language, STAMP["en"])
    return text.format(date=date, seconds=seconds,
                       cached=FROM_CACHE.get(language, FROM_CACHE["en"]) if cached else "")


def page_markdown(notebook, source_url: str | None, diagram, fence, stamp: str = ""
                  ) -> tuple[str, list[str]]:
    """The Markdown of ``notebook`` (one language's page with its outputs, and ``stamp``
    after its first Markdown cell); the sources of the diagrams not drawn yet."""
    renderer = Renderer(source_url, diagram, fence)
    return renderer.page(notebook, stamp), renderer.missing


def renderer_code() -> str:
    """What the Markdown depends on besides the notebook (keys the remembered Markdown):
    this file, hooks/diagrams.py (the figures) and tutorials_pkg/source.py (the
    highlighting)."""
    import tutorials_pkg.source
    here = Path(__file__)
    return "".join(Path(module).read_text(encoding="utf-8") for module in (
        here, here.with_name("diagrams.py"), tutorials_pkg.source.__file__))
