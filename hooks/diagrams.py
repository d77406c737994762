"""Mermaid diagrams drawn once, kept in the repository, inlined into the pages as SVG.

A diagram is a ```` ```mermaid ```` fence in a page's Markdown, or a code cell's
``text/vnd.mermaid`` output (the grad_fn page's ``graph.mermaid()``). Drawing
one needs a browser, so the build draws nothing: ``tools/render_diagrams.py``
draws each diagram with the vendored mermaid in headless Chromium and writes it
to ``docs/assets/diagrams/<key>.svg``, where ``key`` is a hash of the diagram's
source, of the mermaid version and of ``CONFIG``. The build inlines that file
where the diagram is, so a page loads no script to show it and shows it with
JavaScript off; a diagram without its file fails the strict build with a message
that names the command drawing it (``RENDER_COMMAND``). The files are committed:
``mkdocs serve`` needs no browser.

Nothing here imports MkDocs or a browser: the hook, the render script and the
tests share it.
"""

import hashlib
import html
import json
import re
from pathlib import Path

MERMAID_VERSION = "11.17.2"  # tools/render_diagrams.py checks the vendored file's version
# mermaid.initialize() options: labels as SVG text (no <foreignObject> HTML), ids
# that do not depend on the drawing order, the default light theme.
CONFIG = {
    "startOnLoad": False,
    "theme": "default",
    "deterministicIds": True,
    "htmlLabels": False,
    "flowchart": {"htmlLabels": False},
    "fontFamily": "Arial, Helvetica, 'Microsoft YaHei', 'WenQuanYi Micro Hei', sans-serif",
    "securityLevel": "strict",
}
FOLDER = Path("assets") / "diagrams"  # under docs_dir
RENDER_COMMAND = "python tools/render_diagrams.py"
KEY_LENGTH = 16  # hex digits of the key in a file's name
READABLE = 0.75  # the smallest scale a diagram is shown at (its text at 16 px * 0.75 = 12 px)

FENCE = re.compile(r"^```mermaid[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
MERMAID_MIME = "text/vnd.mermaid"
SVG_TEXT = re.compile(r"<text\b[^>]*>(.*?)</text>", re.S)
TAG = re.compile(r"<[^>]+>")


def normalized(source: str) -> str:
    """The source as keyed: no trailing spaces, no blank lines around it."""
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def diagram_key(source: str) -> str:
    """The full sha256 key of ``source`` drawn by this mermaid version with ``CONFIG``."""
    text = json.dumps([MERMAID_VERSION, CONFIG, normalized(source)], ensure_ascii=False,
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def svg_path(docs_dir: Path, source: str) -> Path:
    return Path(docs_dir) / FOLDER / f"{diagram_key(source)[:KEY_LENGTH]}.svg"


def fences(markdown: str) -> list[str]:
    """The sources of the ```` ```mermaid ```` fences in ``markdown``."""
    return [normalized(m.group(1)) for m in FENCE.finditer(markdown)]


def notebook_diagrams(notebook) -> list[str]:
    """Every diagram of a notebook: its Markdown cells' fences, its outputs' mermaid."""
    found = []
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            found += fences(cell.source)
        for output in cell.get("outputs", []):
            source = output.get("data", {}).get(MERMAID_MIME)
            if source:
                found.append(normalized(source if isinstance(source, str) else "".join(source)))
    return found


def svg_labels(svg: str) -> list[str]:
    """The text a drawing shows, in document order, each once."""
    texts = (" ".join(html.unescape(TAG.sub(" ", t)).split()) for t in SVG_TEXT.findall(svg))
    return list(dict.fromkeys(t for t in texts if t))


def figure(source: str, docs_dir: Path, language: str) -> str | None:
    """The drawing of ``source`` as an inline SVG figure, or None if it is not drawn yet."""
    path = svg_path(docs_dir, normalized(source))
    if not path.is_file():
        return None
    svg = path.read_text(encoding="utf-8")
    label = "图：" if language == "zh" else "Diagram: "
    separator = "，" if language == "zh" else ", "
    name = html.escape(label + separator.join(svg_labels(svg)), quote=True)
    # An image with a name, for screen readers (mermaid's graphics-document role wants one).
    svg = re.sub(r'\brole="[^"]*"', 'role="img"', svg, count=1)
    svg = svg.replace("<svg ", f'<svg aria-label="{name}" ', 1)
    width = re.search(r'viewBox="[-\d.]+ [-\d.]+ ([\d.]+)', svg)
    if width:  # never drawn smaller than READABLE of its size: a wide one scrolls
        natural = float(width.group(1))
        svg = re.sub(r'style="max-width: [^"]*"', f'style="max-width: {natural:.0f}px; '
                     f'min-width: {natural * READABLE:.0f}px"', svg, count=1)
    # tabindex: a panel that scrolls is reachable with the keyboard.
    return f'<figure class="diagram" tabindex="0" data-search-exclude>{svg}</figure>'


def missing_message(page: str, missing: list[str], docs_dir: Path) -> str:
    """What the build says of the diagrams (their sources) of ``page`` not drawn yet."""
    first = normalized(missing[0]).splitlines()
    shown = "\n".join("    " + line for line in first[:3])
    files = ", ".join(sorted({svg_path(docs_dir, normalized(s)).relative_to(Path(docs_dir).parent)
                              .as_posix() for s in missing}))
    return (f"{page}: {len(missing)} diagram(s) not drawn yet ({files} missing); the first "
            f"begins:\n{shown}\n  Run `{RENDER_COMMAND}` (draws every missing diagram with "
            "Chromium, removes the unused ones), then commit docs/assets/diagrams/.")
