"""Diagrams: each one drawn (docs/assets/diagrams/<key>.svg), from its current source, inlined."""

import html
import importlib.util
import re
import sys

import pytest

from handbook_tools import DOCS, ROOT, copy_machinery, mkdocs_build


def load(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


render = load("render_diagrams", ROOT / "tools" / "render_diagrams.py")
diagrams = render.diagrams
QUOTED = re.compile(r'"([^"]+)"')
FIX = f"run `{diagrams.RENDER_COMMAND}` and commit docs/assets/diagrams/"


def svg_problems(source: str) -> list[str]:
    """Why the file of ``source`` is not its drawing: missing, or drawn from another source."""
    path = diagrams.svg_path(DOCS, source)
    name = path.relative_to(ROOT)
    if not path.is_file():
        return [f"{name} is missing: {FIX}"]
    svg = path.read_text(encoding="utf-8")
    key = re.search(r'data-diagram-key="([0-9a-f]+)"', svg)
    if not key or key.group(1) != diagrams.diagram_key(source):
        return [f"{name} was drawn from another source (its key does not match): {FIX}"]
    shown = "".join("".join(diagrams.svg_labels(svg)).split())  # a long label wraps
    absent = [label for label in QUOTED.findall(source)
              if "".join(html.unescape(label).split()) not in shown]
    return [f"{name} does not show {absent}: {FIX}"] if absent else []


FENCES = render.fence_diagrams()


def test_the_pages_have_diagrams_in_both_languages():
    places = " ".join(FENCES.values())
    assert "docs/zh/" in places and "docs/en/" in places, FENCES


@pytest.mark.parametrize("source", FENCES, ids=lambda source: FENCES[source])
def test_each_fence_has_its_drawing_drawn_from_its_source(source):
    assert not svg_problems(source), svg_problems(source)


ZH_FENCES = [s for s, where in FENCES.items() if "docs/zh/" in where]
ENGLISH_WORDS = re.compile(r"\b(?:the|and|or|of|to|from|read|back|crash|output|rows?|image|"
                           r"features|classes|process|spawn|result|error)\b", re.I)


@pytest.mark.parametrize("source", ZH_FENCES, ids=lambda source: FENCES[source])
def test_zh_diagram_labels_are_in_chinese(source):
    labels = QUOTED.findall(source) + re.findall(r":\s*(.+)$", source, re.M)
    english = [label for label in labels if ENGLISH_WORDS.search(label)]
    assert not english, f"{FENCES[source]}: labels in English: {english}"


def test_the_check_catches_a_missing_a_stale_and_a_wrong_drawing(tmp_path, monkeypatch):
    """Planted faults: a source with no file; a file copied under another source's name."""
    source = next(iter(FENCES))
    assert "missing" in svg_problems(source + "\n    extra --> node")[0]
    folder = tmp_path / "docs" / diagrams.FOLDER
    folder.mkdir(parents=True)
    edited = source.replace("-->", "-.->", 1)
    copied = diagrams.svg_path(DOCS, source).read_text(encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", tmp_path / "docs")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    diagrams.svg_path(tmp_path / "docs", edited).write_text(copied, encoding="utf-8")
    assert "drawn from another source" in svg_problems(edited)[0]
    keyed = copied.replace(diagrams.diagram_key(source), diagrams.diagram_key(edited))
    diagrams.svg_path(tmp_path / "docs", edited).write_text(diagrams.SVG_TEXT.sub("", keyed))
    assert "does not show" in svg_problems(edited)[0]


def test_a_drawn_diagram_is_an_inline_named_svg_and_a_missing_one_is_named():
    source = next(iter(FENCES))
    figure = diagrams.figure(source, DOCS, "zh")
    assert figure.startswith('<figure class="diagram" tabindex="0" data-search-exclude><svg aria-label="图：')
    assert figure.rstrip().endswith("</figure>") and 'role="img"' in figure
    assert diagrams.figure("flowchart LR\n  a --> never_drawn", DOCS, "zh") is None
    message = diagrams.missing_message("en/x.py", ["flowchart LR\n  a --> never_drawn"], DOCS)
    assert diagrams.RENDER_COMMAND in message and "a --> never_drawn" in message


# --- the built site ---------------------------------------------------------------------

@pytest.mark.site
def test_every_diagram_is_inline_svg_and_no_page_loads_mermaid(built_site):
    pages = sorted(built_site.rglob("*.html"))
    used = set()
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert 'class="mermaid"' not in text and "language-mermaid" not in text, page
        assert "mermaid.min.js" not in text, page
        used |= set(re.findall(r'data-diagram-key="([0-9a-f]{16})', text))
    on_disk = {p.stem for p in (DOCS / diagrams.FOLDER).glob("*.svg")}
    assert used, "no page shows a diagram"
    assert used == on_disk, f"unused: {on_disk - used}; not on disk: {used - on_disk}"
    assert not (built_site / "assets" / "vendor" / "mermaid").exists()


@pytest.mark.site
def test_a_diagram_not_drawn_fails_the_build_naming_the_command(tmp_path):
    copy_machinery(tmp_path)
    for language in ("zh", "en"):
        (tmp_path / "docs" / language / "definition").mkdir()
        (tmp_path / "docs" / language / "definition" / "index.py").write_text(
            "# %% [markdown]\n# # Scratch\n#\n# ```mermaid\n# flowchart LR\n"
            f"#     a --> never_drawn_{language}\n# ```\n", encoding="utf-8")
    result = mkdocs_build(tmp_path, tmp_path / "site")
    assert result.returncode != 0
    assert "never_drawn_zh" in result.stderr and diagrams.RENDER_COMMAND in result.stderr, \
        result.stderr[-3000:]
