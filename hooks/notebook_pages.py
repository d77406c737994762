"""MkDocs hook: tutorial pages executed once for both languages, rendered by mkdocs-jupyter.

How a build goes (``hooks/page_execution.py`` does the executing):

1. ``on_config``, first language of the build: every tutorial page's code runs
   once, or comes from the cache (``.cache/handbook/executed``), keyed by its
   code cells, the versions that run it and the ``tutorials_pkg`` files it
   imported. Pages run in parallel, one kernel per core. A failing cell not
   tagged ``raises-exception``, a tagged one that raises nothing or another
   exception, or a DeprecationWarning/FutureWarning not tagged ``shows-warning``
   fails the build.
2. ``on_config``, every language: its pages are written as ``.ipynb`` (its own
   Markdown plus the shared outputs) under ``.cache/handbook/pages/<language>``,
   and ``on_files`` points each notebook page's ``abs_src_path`` at that file.
   mkdocs-jupyter renders it with ``execute: false``, and caches the HTML per
   language, keyed by that file's bytes.
3. ``on_page_content``: Chinese heading ids (``pymdownx.slugs``, as on the
   Markdown pages) and the TOC read back from the rendered headings; code cells
   in Material's markup (copy button, colours); each Mermaid diagram replaced by
   its SVG, drawn beforehand by ``tools/render_diagrams.py`` (``hooks/diagrams.py``):
   a diagram not drawn yet is a warning, so the strict build fails naming that command.

What only depends on a file's bytes is remembered in ``.cache/handbook/parsed``:
pages as jupytext reads them, the downloadable ``.ipynb``, the post-processed HTML.
``MKDOCS_JUPYTER_CACHE=false`` (mkdocs-jupyter's ``cache`` option) turns every
cache off: every page runs, once, and renders afresh.

Third-party names this hook replaces: one, ``mkdocs_static_i18n.folder.create_i18n_file``
(public): i18n rebuilds every ``File`` in ``on_files`` and drops mkdocs-jupyter's
``NotebookFile`` wrapper, so ``.py`` pages would be copied raw, with no language
alternates; the factory now keeps the wrapper. The notebook template
(``hooks/templates/mkdocs_html``) takes precedence over mkdocs-jupyter's own
through ``JUPYTER_PATH``, the Jupyter data path in which nbconvert finds templates:
it inlines no CSS and loads no script from a CDN (``docs/assets/notebook.css``
styles the cells once for the site).
"""

import functools
import hashlib
import html
import inspect
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import weakref
from pathlib import Path
from urllib.parse import urlparse

import jupytext
import mkdocs_static_i18n.folder
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority, get_plugin_logger
from mkdocs.structure.toc import get_toc
from mkdocs_jupyter.plugin import NotebookFile
from pymdownx.slugs import slugify

HOOKS = Path(__file__).resolve().parent
TEMPLATES = HOOKS / "templates"
log = get_plugin_logger("handbook")


def load_sibling(name: str):
    """``hooks/<name>.py`` as a module (mkdocs puts hooks/ on sys.path only while loading)."""
    spec = importlib.util.spec_from_file_location(f"handbook_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


execution = load_sibling("page_execution")
diagrams = load_sibling("diagrams")


# --- the notebook template ---------------------------------------------------------------

def use_site_templates() -> None:
    """Put hooks/templates first on the Jupyter data path, where nbconvert looks for templates."""
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if str(TEMPLATES) not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(TEMPLATES), *paths])


use_site_templates()


# --- notebook pages survive i18n (the one replaced name) --------------------------------

_create_i18n_file = getattr(mkdocs_static_i18n.folder.create_i18n_file, "__wrapped__",
                            mkdocs_static_i18n.folder.create_i18n_file)


@functools.wraps(_create_i18n_file)
def create_i18n_file_keeping_notebooks(file, current_language, default_language,
                                       all_languages, config):
    """i18n's file factory, returning a ``NotebookFile`` for a notebook page."""
    i18n_file = _create_i18n_file(file, current_language, default_language,
                                  all_languages, config)
    if not isinstance(file, NotebookFile):
        return i18n_file
    notebook = NotebookFile(i18n_file, config.use_directory_urls, config.site_dir)
    # i18n has already placed the page (zh at /, en at /en/): keep its place.
    notebook.dest_path = i18n_file.dest_path
    notebook.abs_dest_path = i18n_file.abs_dest_path
    notebook.url = i18n_file.url
    return notebook


# Wrapping unwraps first, so loading this hook again does not stack wrappers.
mkdocs_static_i18n.folder.create_i18n_file = create_i18n_file_keeping_notebooks


# --- execution, once per build ----------------------------------------------------------

class BuildState:
    """What the first language's ``on_config`` found, for the other languages of the build."""

    def __init__(self, config):
        self.config = weakref.ref(config)
        self.outcome = None
        self.rendered: dict[str, Path] = {}   # "en/definition.py" -> its .ipynb
        self.scratch: Path | None = None      # rendered pages when the cache is off
        self.memo: Path | None = None         # pages as read by jupytext, by their bytes


_state: BuildState | None = None


def build_state(config) -> BuildState:
    """The state of this build: i18n builds each language with the same config object."""
    global _state
    if _state is None or _state.config() is not config:
        if _state is not None and _state.scratch:
            shutil.rmtree(_state.scratch, ignore_errors=True)
        _state = BuildState(config)
    return _state


def site_root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def tutorial_page_ids(docs_dir: Path, language: str) -> list[str]:
    folder = docs_dir / language
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.py")
                  if "assets" not in p.relative_to(folder).parts)


def render_stamp() -> dict:
    """What shapes the HTML besides the notebook: it keys mkdocs-jupyter's cache with it."""
    digest = hashlib.sha256()
    for path in sorted(TEMPLATES.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(TEMPLATES).as_posix().encode() + path.read_bytes())
    return {"template": digest.hexdigest()[:16],
            "versions": {name: execution.distribution_version(name)
                         for name in ("mkdocs-jupyter", "nbconvert", "Pygments", "mistune")}}


@event_priority(-200)  # after i18n (-100) has chosen the language of this build
def on_config(config):
    jupyter, i18n = config.plugins["mkdocs-jupyter"], config.plugins["i18n"]
    if jupyter.config["execute"]:
        raise PluginError("mkdocs.yml: set mkdocs-jupyter's `execute: false`; "
                          "hooks/notebook_pages.py executes the pages (once for both languages)")
    root, docs_dir = site_root(config), Path(config.docs_dir)
    caching = bool(jupyter.config["cache"])
    languages = [language.locale for language in i18n.config.languages]
    state = build_state(config)
    state.memo = root / ".cache" / "handbook" / "parsed" if caching else None
    try:
        if state.outcome is None:
            execution.forget_old_memos(state.memo)
            page_ids = sorted(set().union(*(tutorial_page_ids(docs_dir, l) for l in languages)))
            pages = execution.read_pages(docs_dir, languages, page_ids, state.memo)
            state.outcome = execution.execute_pages(
                pages, root, root / ".cache" / "handbook" / "executed" if caching else None)
            log.info("Pages executed: %s; from cache: %s (%.1f s)",
                     ", ".join(state.outcome.ran) or "none",
                     ", ".join(state.outcome.cached) or "none", state.outcome.seconds)
        render_language(state, config, i18n.current_language, caching)
    except execution.PageError as error:
        raise PluginError(f"\n{error}") from None
    # mkdocs-jupyter's HTML cache, per language: each language's build evicts
    # the entries it did not use.
    jupyter.config["cache_dir"] = str(root / ".cache" / "mkdocs-jupyter" / i18n.current_language)
    return config


def render_language(state: BuildState, config, language: str, caching: bool) -> None:
    """Write ``language``'s pages as notebooks with the shared outputs."""
    root, docs_dir = site_root(config), Path(config.docs_dir)
    if caching:
        folder = root / ".cache" / "handbook" / "pages" / language
    else:
        state.scratch = state.scratch or Path(tempfile.mkdtemp(prefix="handbook-pages-"))
        folder = state.scratch / language
    stamp = render_stamp()
    problems = []
    for page_id, executed in state.outcome.executed.items():
        source = docs_dir / language / page_id
        problems += execution.shows_warning_prose_problems(source, executed, state.memo)
        text = execution.render_notebook(source, executed, stamp, state.memo)
        target = folder / Path(page_id).with_suffix(".ipynb")
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            execution.write_atomic(target, text)
        state.rendered[f"{language}/{page_id}"] = target
    if problems:
        raise execution.PageError("\n".join(problems))


@event_priority(-200)  # after i18n has chosen this language's files
def on_files(files, config):
    rendered = _state.rendered if _state else {}
    for file in files:
        if isinstance(file, NotebookFile) and file.src_uri in rendered:
            # mkdocs-jupyter renders the notebook at abs_src_path: the page with its outputs.
            file.abs_src_path = str(rendered[file.src_uri])
    return files


# --- the rendered HTML ------------------------------------------------------------------

unicode_slug = slugify(case="lower")
HEADING = re.compile(r'<h([1-6])\b([^>]*?) id="[^"]*"([^>]*)>(.*?)'
                     r'<a class="anchor-link" href="#[^"]*">(.*?)</a></h\1>', re.S)
TOC_HEADING = re.compile(r'<h([1-6])\b[^>]*\bid="([^"]+)"[^>]*>(.*?)</h\1>', re.S)
TAG = re.compile(r"<[^>]+>")
CELL_ID = re.compile(r' id="cell-id=[^"]*"')
# mkdocs-jupyter appends nbconvert's Pygments CSS (as a Python list) to an .ipynb page.
APPENDED_STYLE = re.compile(r"\s*<style>\s*\[.*?</style>\s*$", re.S)
CODE_CELL_SOURCE = re.compile(
    r'<div class="jp-InputArea-editor"><pre><code class="language-python">([^<]*)</code></pre></div>')


def heading_slug(text: str) -> str:
    return unicode_slug(text, "-")


def heading_text(inner: str) -> str:
    return html.unescape(TAG.sub("", inner)).replace("¶", "").strip()


def fix_headings(content: str) -> str:
    """Heading ids as the Markdown pages get them (Chinese kept), unique, with Material's permalink.

    mkdocs-jupyter's ids drop every non-ASCII character (a Chinese heading gets
    an empty id), and nbconvert percent-encodes the rest.
    """
    seen: set[str] = set()

    def replace(match):
        level, before, after, inner, mark = match.groups()
        anchor = base = heading_slug(heading_text(inner)) or "section"
        number = 0
        while anchor in seen:
            number += 1
            anchor = f"{base}_{number}"
        seen.add(anchor)
        return (f'<h{level}{before} id="{anchor}"{after}>{inner}'
                f'<a class="headerlink" href="#{anchor}">{mark}</a></h{level}>')

    return HEADING.sub(replace, content)


def shows_source_only(code: str) -> bool:
    """A cell that only imports and calls ``show_source(...)``: its output, the source
    with its imports and a caption naming the file, says all its code would."""
    import ast

    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    *imports, last = body or [None]
    return (all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in imports)
            and isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
            and isinstance(last.value.func, ast.Name) and last.value.func.id == "show_source")


def highlight_code_cells(content: str) -> str:
    """Code cells in Material's markup, highlighted as the shown source is; none for a
    cell that only shows source (``shows_source_only``)."""
    from tutorials_pkg.source import highlight_html

    def replace(match):
        code = html.unescape(match.group(1))
        if shows_source_only(code):
            return ""
        return f'<div class="jp-InputArea-editor">{highlight_html(code)}</div>'

    return CODE_CELL_SOURCE.sub(replace, content)


UNSEARCHED = re.compile(r"<(pre|table|figcaption|svg)\b")


def unsearched_code_cells(content: str) -> str:
    """Code cells' code and outputs left out of the search index: the index keeps the
    prose and headings, which name what each section teaches, at a fraction of the size.

    Material's search skips an element marked ``data-search-exclude`` up to the first
    end tag of the same name, so the mark goes on elements that do not nest
    (``pre``, ``table``, ``figcaption``, ``svg``), not on the cell's ``div``.
    """
    parts = content.split('<div class="jp-Cell ')
    return '<div class="jp-Cell '.join(
        [parts[0]] + [UNSEARCHED.sub(r"<\1 data-search-exclude", part)
                      if part.startswith("jp-CodeCell") else part for part in parts[1:]])


def toc_tokens_from_html(content: str, depth: int = 6) -> list[dict]:
    """TOC tokens, as Python-Markdown makes them, for the headings in ``content``."""
    root: list[dict] = []
    stack: list[dict] = []
    for level, anchor, inner in TOC_HEADING.findall(content):
        if int(level) > depth:
            continue
        token = {"level": int(level), "id": anchor, "name": heading_text(inner), "children": []}
        while stack and stack[-1]["level"] >= token["level"]:
            stack.pop()
        (stack[-1]["children"] if stack else root).append(token)
        stack.append(token)
    return root


def postprocess(content: str) -> str:
    """The HTML mkdocs-jupyter rendered, as the site shows it."""
    # nbconvert gives each cell id="cell-id=<id>": Material makes that an invalid
    # CSS selector for the copy button.
    content = CELL_ID.sub("", content)
    content = APPENDED_STYLE.sub("\n", content)
    content = fix_headings(content)
    return unsearched_code_cells(highlight_code_cells(content))


def postprocess_code() -> str:
    from tutorials_pkg import source

    return "\n".join([inspect.getsource(f) for f in (postprocess, fix_headings, highlight_code_cells,
                                                     shows_source_only, unsearched_code_cells)]
                     + [inspect.getsource(source.highlight_html)])


POSTPROCESS_CODE = postprocess_code()  # what the remembered HTML depends on


def github_repo(repo_url: str | None) -> str | None:
    """``owner/name`` of a GitHub ``repo_url``, else None."""
    url = urlparse(repo_url or "")
    return url.path.strip("/") if url.netloc == "github.com" else None


SOURCE_CAPTION = re.compile(r'<figcaption([^>]*?) data-path="([^"]+)"><code>(.*?)</code></figcaption>')


def link_source_captions(content: str, repo_url: str | None, edit_uri: str | None) -> str:
    """Each shown source's caption links to its file in the repository (``repo_url``,
    on the branch of ``edit_uri``: ``edit/main/docs/`` -> main)."""
    if not repo_url:
        return content
    parts = (edit_uri or "").strip("/").split("/")
    branch = parts[1] if len(parts) > 1 and parts[0] in ("edit", "blob") else "main"
    base = f"{repo_url.rstrip('/')}/blob/{branch}/"
    return SOURCE_CAPTION.sub(
        lambda m: (f'<figcaption{m.group(1)}><a href="{base}{m.group(2)}"><code>{m.group(3)}</code>'
                   "</a></figcaption>"),
        content)


def on_page_content(content, page, config, files):
    if not isinstance(page.file, NotebookFile):
        return content
    key = hashlib.sha256(content.encode() + POSTPROCESS_CODE.encode()).hexdigest()
    content = execution.remembered(key, lambda: postprocess(content), _state and _state.memo)
    content = link_source_captions(content, config.repo_url, config.edit_uri)
    content, missing = diagrams.inline(content, Path(config.docs_dir),
                                       config.plugins["i18n"].current_language)
    if missing:
        log.warning(diagrams.missing_message(page.file.src_uri, missing, Path(config.docs_dir)))
    tokens = toc_tokens_from_html(content, config.plugins["mkdocs-jupyter"].config["toc_depth"])
    page.toc = get_toc(tokens)
    if tokens and tokens[0]["level"] == 1:
        page.title = tokens[0]["name"]
    stem = download_stem(page.file.src_uri)
    page.notebook_links = {"py": f"{stem}.py", "ipynb": f"{stem}.ipynb"}
    repo = github_repo(config.repo_url)
    if repo:
        # The Pages deploy (mkdocs gh-deploy) keeps the built site, .ipynb files
        # included, on the gh-pages branch, where Colab can open them.
        page_dir = Path(page.file.dest_path).parent.as_posix()
        path = f"{stem}.ipynb" if page_dir == "." else f"{page_dir}/{stem}.ipynb"
        page.notebook_links["colab"] = (
            f"https://colab.research.google.com/github/{repo}/blob/gh-pages/{path}")
    return content


# --- downloads --------------------------------------------------------------------------

def download_stem(src_uri: str) -> str:
    """The name of a page's downloads: ``en/save_load/index.py`` -> ``save_load``,
    ``en/save_load/checkpoints.py`` -> ``save_load-checkpoints``."""
    parts = Path(src_uri).with_suffix("").parts[1:]  # without the language folder
    return "-".join(p for p in parts if p != "index") or "index"


def notebook_for_download(py_path: str, repo_url: str | None, memo_dir: Path | None = None) -> str:
    """The page as ``.ipynb``, with a first cell that installs ``tutorials_pkg`` if missing."""
    install = repo_url and (
        f"# In Colab (or anywhere tutorials_pkg is missing) this installs it from {repo_url}\n"
        "import importlib.util, subprocess, sys\n"
        "if importlib.util.find_spec('tutorials_pkg') is None:\n"
        f"    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', "
        f"'git+{repo_url}'])\n")

    def convert() -> str:
        notebook = execution.read_notebook(Path(py_path), memo_dir)
        if install:
            notebook.cells.insert(0, jupytext.reads(install, fmt="py:percent").cells[0])
        return jupytext.writes(notebook, fmt="ipynb")

    key = execution.bytes_key(Path(py_path), "download", install or "")
    return execution.remembered(key, convert, memo_dir)


ALTERNATE_LINK = re.compile(r'\s*<link rel="alternate" href="[^"]*" hreflang="[^"]*">')


def on_post_page(output, page, config):
    # Material fetches "sitemap.xml" next to every <link rel="alternate">, which it
    # expects to be a language's root; i18n points them at the page itself, so each
    # load made two requests that 404. The language menu keeps its per-page links,
    # and sitemap.xml keeps the hreflang alternates for search engines.
    output = ALTERNATE_LINK.sub("", output)
    if isinstance(page.file, NotebookFile):
        source = Path(config.docs_dir) / page.file.src_uri
        folder = Path(page.file.abs_dest_path).parent
        folder.mkdir(parents=True, exist_ok=True)
        stem = download_stem(page.file.src_uri)
        shutil.copyfile(source, folder / f"{stem}.py")  # the page's .py, for download
        (folder / f"{stem}.ipynb").write_text(
            notebook_for_download(str(source), config.repo_url, _state.memo if _state else None),
            encoding="utf-8")
    return output


# --- the search index -------------------------------------------------------------------

@event_priority(-100)  # after the search plugin has written the index
def on_post_build(config):
    """The search index as UTF-8: Material writes it with every Chinese character as a
    six-byte ``\\uXXXX`` escape, twice the bytes. Same JSON, same entries."""
    import json

    site = Path(config.site_dir)
    for index in {site / "search" / "search_index.json",
                  site.parent / "search" / "search_index.json"}:
        if index.is_file():
            text = index.read_text(encoding="utf-8")
            if "\\u" in text:
                data = json.loads(text)
                index.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")),
                                 encoding="utf-8")
