"""Draw the handbook's Mermaid diagrams as SVG files, for the build to inline.

    python tools/render_diagrams.py          # draw the missing ones, remove the unused ones
    python tools/render_diagrams.py --check  # only say what is missing or unused (exit 1 if any)
    python tools/render_diagrams.py grad_fn  # only these pages' diagrams (nothing removed)

Every diagram of every page, in both languages: the ```` ```mermaid ```` fences
of the Markdown, and the ``text/vnd.mermaid`` outputs of the executed pages
(taken from the build's execution cache, ``.cache/handbook/executed``; pages not
in it are executed first, as a build would). Each is drawn with the vendored
mermaid (``tools/vendor/mermaid/mermaid.min.js``) in the system Chromium
(playwright, from the test extra) and written to ``docs/assets/diagrams/<key>.svg``
(``hooks/diagrams.py`` says what the key is). Commit the files: the build reads
them, and needs no browser. Chinese labels need a CJK font where this runs
(``apt-get install fonts-wqy-microhei``): text is measured when it is drawn.
"""

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MERMAID_JS = ROOT / "tools" / "vendor" / "mermaid" / "mermaid.min.js"
CHROMIUM_NAMES = ["chromium", "chromium-browser", "google-chrome"]
LANGUAGES = ("zh", "en")


def load_hook_module(name: str):
    spec = importlib.util.spec_from_file_location(f"handbook_{name}", ROOT / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


diagrams = load_hook_module("diagrams")


def chapter_of(path: str) -> str:
    """``save_load/checkpoints.py`` -> ``save_load`` (a page's chapter is its folder)."""
    return path.split("/")[0].removesuffix(".py")


def page_ids(chapters=()) -> list[str]:
    found = sorted({p.relative_to(DOCS / language).as_posix() for language in LANGUAGES
                    for p in (DOCS / language).rglob("*.py") if "assets" not in p.parts})
    known = sorted({chapter_of(p) for p in found})
    unknown = sorted(set(chapters) - set(known))
    if unknown:
        raise SystemExit(f"no chapter named {', '.join(unknown)}; chapters: {', '.join(known)}")
    return [p for p in found if not chapters or chapter_of(p) in chapters]


def fence_diagrams(chapters=()) -> dict[str, str]:
    """Sources of the fences in the pages and Markdown files, by where each is."""
    import jupytext

    found = {}
    for language in LANGUAGES:
        for path in sorted((DOCS / language).rglob("*")):
            if chapters and chapter_of(path.relative_to(DOCS / language).as_posix()) not in chapters:
                continue
            if path.suffix == ".py" and "assets" not in path.parts:
                sources = diagrams.notebook_diagrams(jupytext.read(path))
            elif path.suffix == ".md":
                sources = diagrams.fences(path.read_text(encoding="utf-8"))
            else:
                continue
            for number, source in enumerate(sources):
                found.setdefault(source, f"{path.relative_to(ROOT)} (fence {number + 1})")
    return found


def output_diagrams(chapters=()) -> dict[str, str]:
    """Sources of the mermaid outputs of the executed pages (executing those not cached)."""
    execution = load_hook_module("page_execution")
    pages = execution.read_pages(DOCS, list(LANGUAGES), page_ids(chapters))
    outcome = execution.execute_pages(pages, ROOT, ROOT / ".cache" / "handbook" / "executed")
    if outcome.ran:
        print(f"executed {', '.join(outcome.ran)} ({outcome.seconds:.0f} s)")
    found = {}
    for page_id, notebook in sorted(outcome.executed.items()):
        for source in diagrams.notebook_diagrams(notebook):
            found.setdefault(source, f"an output of {page_id}")
    return found


def chromium() -> str:
    found = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if found is None:
        raise SystemExit("Chromium not found: apt-get install chromium (drawing needs a browser)")
    return found


def check_cjk_font() -> None:
    try:
        fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return
    if not fonts.strip():
        raise SystemExit("No Chinese font: apt-get install fonts-wqy-microhei "
                         "(labels are measured when drawn; without one they overflow their boxes)")


DRAW = """async ([id, source, config]) => {
  mermaid.initialize(config);
  const {svg} = await mermaid.render(id, source);
  return svg;
}"""


def vendored_version() -> str | None:
    """The version string built into the vendored mermaid.min.js."""
    found = re.search(r'=\{version:"(\d+\.\d+\.\d+)"\}', MERMAID_JS.read_text(encoding="utf-8"))
    return found.group(1) if found else None


# A number with two or more decimals, not part of a run like "12.34.5" (SVG's compact
# form of 12.34 and .5, as in the icons of sequence diagrams).
NUMBER = re.compile(r"(?<![\d.])-?\d+\.\d{2,}(?![\d.])")
PATH_TOKEN = re.compile(r"([MLCZmlcz])([^MLCZmlcz]*)")
PATH_D = re.compile(r'(<path\b[^>]*?\bd=")([^"]*)(")')
STYLE = re.compile(r"(<style>.*?</style>)", re.DOTALL)


def rounded(text: str) -> str:
    """Numbers to one decimal: a tenth of a pixel is finer than a screen shows."""
    return NUMBER.sub(lambda match: number(float(match.group(0))), text)


def off_chord(start, control, end) -> float:
    """How far ``control`` lies from the line through ``start`` and ``end``, in pixels."""
    (x0, y0), (x1, y1), (x2, y2) = start, control, end
    length = ((x2 - x0) ** 2 + (y2 - y0) ** 2) ** 0.5
    if length == 0:
        return ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5
    return abs((x2 - x0) * (y0 - y1) - (x0 - x1) * (y2 - y0)) / length


def straightened(d: str, tolerance: float = 0.6) -> str:
    """An outline mermaid draws as many short curves (its rough.js shapes: stadiums,
    circles; each stroke twice) as a polyline through the same points.

    Only a path of absolute M, C, L and Z in which no curve's control point lies
    more than ``tolerance`` pixels off its chord: an edge's curves stay as drawn.
    """
    tokens = [(c, [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", args)])
              for c, args in PATH_TOKEN.findall(d)]
    if (sum(c == "C" for c, _ in tokens) < 8 or any(c not in "MCLZ" for c, _ in tokens)
            or any(len(v) % 2 for _, v in tokens)):
        return d
    parts, seen, here = [], set(), None
    for command, values in tokens:
        if command == "Z":
            parts.append("Z")
            continue
        end = (values[-2], values[-1])
        if command == "M":
            here = end
            continue
        controls = list(zip(values[0:-2:2], values[1:-2:2]))
        if here is None or any(off_chord(here, c, end) > tolerance for c in controls):
            return d
        if end != here and (here, end) not in seen:
            seen.add((here, end))
            if not parts or parts[-1][1] != here:
                parts.append((f"M{number(here[0])} {number(here[1])}", here))
            parts.append((f"L{number(end[0])} {number(end[1])}", end))
        here = end
    return "".join(p if isinstance(p, str) else p[0] for p in parts) or d


def number(value: float) -> str:
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# Attributes that change nothing drawn: mermaid's bookkeeping for its own scripts, defaults.
UNDRAWN = re.compile(r'\s(?:data-(?:points|id|look|edge|et|node)="[^"]*"|style=""|'
                     r'font-(?:style|weight)="normal")')
ID = re.compile(r'\sid="([^"]+)"')
MARKER = re.compile(r'<(marker|symbol)\b[^>]*\bid="([^"]+)"[^>]*>.*?</\1>', re.S)
EMPTY_LABEL = re.compile(r'<g class="edgeLabel"[^>]*><g class="label"[^>]*>'
                         r'(?:<rect[^>]*/>|<rect[^>]*></rect>)?(?:<text[^>]*>\s*</text>)?</g></g>')


CSS_RULE = re.compile(r"([^{}]+)\{([^{}]*)\}")
KEYFRAMES = re.compile(r"@keyframes\s+([\w-]+)\s*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}")
CLASS_NAME = re.compile(r"\.(-?[_a-zA-Z][\w-]*)")


def used_css(svg: str) -> str:
    """The SVG with its <style> keeping only rules that can match one of its elements
    (every class a selector names is on some element) and keyframes those rules use."""
    classes = {c for value in re.findall(r'\bclass="([^"]*)"', svg) for c in value.split()}

    def keep_rule(match):
        selectors = [s for s in match.group(1).split(",")
                     if set(CLASS_NAME.findall(s.split(":")[0] if "::" not in s else s)) <= classes]
        return f"{','.join(selectors)}{{{match.group(2)}}}" if selectors else ""

    def prune(match):
        css = KEYFRAMES.sub("", match.group(1))
        css = CSS_RULE.sub(keep_rule, css)
        names = set(re.findall(r"animation(?:-name)?:\s*([\w-]+)", css))
        kept = "".join(k.group(0) for k in KEYFRAMES.finditer(match.group(1))
                       if k.group(1) in names)
        return f"<style>{kept}{css}</style>"

    return re.sub(r"<style>(.*?)</style>", prune, svg, count=1, flags=re.S)


def compact(svg: str) -> str:
    """The SVG mermaid drew, smaller, drawing the same: numbers rounded, outlines
    straightened, no attribute that draws nothing, no id or marker nothing refers to."""
    pieces = STYLE.split(svg)
    pieces = [piece if piece.startswith("<style>") else UNDRAWN.sub("", rounded(piece))
              for piece in pieces]
    svg = "".join(pieces)
    svg = PATH_D.sub(lambda m: m.group(1) + straightened(m.group(2)) + m.group(3), svg)
    svg = EMPTY_LABEL.sub("", svg)
    root = ID.search(svg).group(1)  # the <svg>'s own id scopes its <style>
    referenced = lambda name: f"#{name}" in svg  # noqa: E731  url(#x), href="#x", #x in CSS
    svg = MARKER.sub(lambda m: m.group(0) if referenced(m.group(2)) else "", svg)
    svg = ID.sub(lambda m: m.group(0) if m.group(1) == root or referenced(m.group(1)) else "", svg)
    return used_css(svg)


def draw(sources: dict[str, str]) -> dict[str, str]:
    """SVG text for each source, drawn in one headless Chromium."""
    from playwright.sync_api import sync_playwright

    drawn = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(),
                                             args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.set_content("<!doctype html><html><body></body></html>")
        page.add_script_tag(path=str(MERMAID_JS))
        if vendored_version() != diagrams.MERMAID_VERSION:
            raise SystemExit(f"{MERMAID_JS} is mermaid {vendored_version()}; hooks/diagrams.py says "
                             f"{diagrams.MERMAID_VERSION}: change MERMAID_VERSION there")
        for source, where in sources.items():
            key = diagrams.diagram_key(source)
            try:
                svg = page.evaluate(DRAW, [f"diagram-{key[:diagrams.KEY_LENGTH]}", source,
                                           diagrams.CONFIG])
            except Exception as error:  # playwright's Error carries mermaid's message
                raise SystemExit(f"{where}: mermaid could not draw it: {error}") from None
            drawn[source] = compact(svg).replace("<svg ", f'<svg data-diagram-key="{key}" ', 1) + "\n"
        browser.close()
    return drawn


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="draw nothing; list missing and unused files, exit 1 if any")
    parser.add_argument("chapters", nargs="*", help="only these chapters' pages (default: every page)")
    args = parser.parse_args(argv)
    sources = {**fence_diagrams(args.chapters), **output_diagrams(args.chapters)}
    folder = DOCS / diagrams.FOLDER
    wanted = {diagrams.svg_path(DOCS, s): (s, where) for s, where in sources.items()}
    missing = {s: where for path, (s, where) in wanted.items() if not path.is_file()}
    unused = [] if args.chapters else sorted(p for p in folder.glob("*.svg") if p not in wanted)
    for source, where in missing.items():
        print(f"missing: {diagrams.svg_path(DOCS, source).relative_to(ROOT)}  ({where})")
    for path in unused:
        print(f"unused:  {path.relative_to(ROOT)}")
    if args.check:
        print(f"{len(wanted)} diagrams, {len(missing)} missing, {len(unused)} unused")
        return 1 if missing or unused else 0
    if missing:
        check_cjk_font()
        folder.mkdir(parents=True, exist_ok=True)
        for source, svg in draw(missing).items():
            path = diagrams.svg_path(DOCS, source)
            path.write_text(svg, encoding="utf-8")
            print(f"drew {path.relative_to(ROOT)}: {len(svg.encode()) / 1024:.1f} KB")
    for path in unused:
        path.unlink()
    print(f"{len(wanted)} diagrams in {folder.relative_to(ROOT)}: {len(missing)} drawn, "
          f"{len(unused)} unused removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
