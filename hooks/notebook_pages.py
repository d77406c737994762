"""MkDocs hook: make mkdocs-jupyter 0.26.3 work with mkdocs-static-i18n and Material.

Each numbered fix answers one known problem of those versions:

1. i18n rebuilds every ``File`` in ``on_files`` (priority -100) and drops
   mkdocs-jupyter's ``NotebookFile`` wrapper, so ``.py`` pages are copied raw or
   vanish, and get no language alternates. i18n's file factory now keeps the
   wrapper, so i18n handles notebook pages exactly like Markdown pages.
2. The execution cache key is the page file plus options only: a change to
   ``tutorials_pkg`` would leave stale outputs, and each language's build
   evicts the other's entries. The cache lives in
   ``.cache/mkdocs-jupyter/<language>/<fingerprint>``; the fingerprint covers
   the package source, this hook, the template and the versions that run it.
3. No execution timeout option: every cell gets ``CELL_TIMEOUT_S`` seconds.
   Tracebacks are IPython's "Minimal" ones: the exception and its message.
4. ASCII-only heading ids: Chinese headings got empty ids. Ids now come from
   ``pymdownx.slugs`` (as on the Markdown pages), and the table of contents is
   read back from the rendered HTML, so every TOC link has its anchor.
5. Pages ran in the directory mkdocs was started from; now each page runs in
   a fresh temporary directory, as the tests run it.
6. About 600 KB of JupyterLab CSS inlined per page, and MathJax / mermaid /
   RequireJS from CDNs: our template (``hooks/templates``) inlines nothing and
   loads nothing; ``docs/assets/notebook.css`` styles the cells once for the
   site. Code cells get Material's own markup, so Material's copy button and
   colours apply to them as to every other code block. Mermaid diagrams (in
   Markdown cells or as ``text/vnd.mermaid`` outputs) get Material's markup;
   ``overrides/main.html`` loads the site's own copy of mermaid on those pages.

Every patch wraps the library's function (``functools.wraps``), and unwraps
first, so ``mkdocs serve`` loading this hook again does not stack patches.
"""

import functools
import hashlib
import html
import os
import platform
import re
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import jupytext
import mkdocs_jupyter.convert
import mkdocs_jupyter.nbconvert2
import mkdocs_jupyter.plugin
import mkdocs_static_i18n.folder
import nbconvert.filters.strings
from mkdocs.plugins import event_priority
from mkdocs.structure.toc import get_toc
from mkdocs_jupyter.config import settings
from mkdocs_jupyter.plugin import NotebookFile
from pymdownx.slugs import slugify

from tutorials_pkg.source import highlight_html

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "templates"
CACHE_ROOT = ROOT / ".cache" / "mkdocs-jupyter"
CELL_TIMEOUT_S = 600
HEADING = re.compile(r'<h([1-6])\b[^>]*\bid="([^"]+)"[^>]*>(.*?)</h\1>', re.S)
TAG = re.compile(r"<[^>]+>")
CELL_ID = re.compile(r' id="cell-id=[^"]*"')


def unpatched(func):
    return getattr(func, "__wrapped__", func)


# --- 1. notebook pages survive i18n ---------------------------------------------------

_create_i18n_file = unpatched(mkdocs_static_i18n.folder.create_i18n_file)


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


# --- 2. cache per language and per fingerprint ----------------------------------------

def fingerprint() -> str:
    """Changes whenever something that shapes a page's outputs changes."""
    import torch
    import torchvision

    digest = hashlib.sha256()
    watched = sorted((ROOT / "tutorials_pkg").rglob("*.py")) + sorted(TEMPLATES.rglob("*"))
    for path in watched:
        if path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    digest.update(Path(__file__).read_bytes())
    digest.update(f"{platform.python_version()} {torch.__version__} "
                  f"{torchvision.__version__} {torch.cuda.is_available()}".encode())
    return digest.hexdigest()[:16]


@event_priority(-200)  # after i18n (-100) has chosen the language of this build
def on_config(config):
    jupyter, i18n = config.plugins["mkdocs-jupyter"], config.plugins["i18n"]
    if jupyter.config["cache"]:
        language_dir = CACHE_ROOT / i18n.current_language
        current = language_dir / fingerprint()
        for old in language_dir.glob("*"):
            if old != current and old.is_dir():
                for stale in old.glob("*.json"):
                    stale.unlink()
                old.rmdir()
        jupyter.config["cache_dir"] = str(current)
    return config


# --- 3. timeout and short tracebacks ----------------------------------------------------

_get_nbconvert_app = unpatched(mkdocs_jupyter.nbconvert2.get_nbconvert_app)


@functools.wraps(_get_nbconvert_app)
def get_nbconvert_app_with_timeout(*args, **kwargs):
    app = _get_nbconvert_app(*args, **kwargs)
    app.config["ExecutePreprocessor"]["timeout"] = CELL_TIMEOUT_S
    # An intended error shows its type and message, not pages of torch internals.
    app.config["ExecutePreprocessor"]["extra_arguments"] = ["--InteractiveShell.xmode=Minimal"]
    # Talk to the kernel over local sockets, not TCP (ipykernel warns about TCP).
    app.config.KernelManager.transport = "ipc"
    return app


# --- 4. heading ids and table of contents ---------------------------------------------

unicode_slug = slugify(case="lower")


def heading_slug(text: str) -> str:
    return unicode_slug(text, "-")


_convert_header_id = unpatched(nbconvert.filters.strings._convert_header_id)


@functools.wraps(_convert_header_id)
def keep_header_id(slug: str) -> str:
    """nbconvert percent-encodes heading ids; keep the slug as the Markdown pages do."""
    return slug.replace(" ", "-")


def toc_tokens_from_html(content: str, depth: int = 6) -> list[dict]:
    """TOC tokens, as Python-Markdown makes them, for the headings in ``content``."""
    root: list[dict] = []
    stack: list[dict] = []
    for level, anchor, inner in HEADING.findall(content):
        if int(level) > depth:
            continue
        name = html.unescape(TAG.sub("", inner)).replace("¶", "").strip()
        token = {"level": int(level), "id": anchor, "name": name, "children": []}
        while stack and stack[-1]["level"] >= token["level"]:
            stack.pop()
        (stack[-1]["children"] if stack else root).append(token)
        stack.append(token)
    return root


# --- 5. run each page in a fresh directory ----------------------------------------------

_nb2html = unpatched(mkdocs_jupyter.convert.nb2html)


@functools.wraps(_nb2html)
def nb2html_in_temp_dir(nb_path, *args, **kwargs):
    nb_path = os.path.abspath(nb_path)
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="page-") as scratch:
        os.chdir(scratch)
        try:
            content = _nb2html(nb_path, *args, **kwargs)
        finally:
            os.chdir(here)
    # nbconvert gives each cell id="cell-id=<random>": Material makes that an invalid
    # CSS selector for the copy button, and the HTML would change on every build.
    content = CELL_ID.sub("", content)
    # Material draws ``pre.mermaid`` blocks (overrides/main.html loads mermaid).
    content = content.replace('<pre><code class="language-mermaid">', '<pre class="mermaid"><code>')
    # Material styles (and the search index skips) permalinks of class "headerlink".
    return content.replace('class="anchor-link"', 'class="headerlink"')


# --- 6. code cells in Material's markup -------------------------------------------------

def material_highlight_code(extra_css_classes: str = ""):
    """Stands in for mkdocs-jupyter's highlighter: Material's markup, as for shown source."""

    def highlight_code(source, language=None, metadata=None):
        return highlight_html(source, language or "python")

    return highlight_code


def install_patches() -> None:
    settings.templates_dir = str(TEMPLATES)
    mkdocs_static_i18n.folder.create_i18n_file = create_i18n_file_keeping_notebooks
    mkdocs_jupyter.nbconvert2.get_nbconvert_app = get_nbconvert_app_with_timeout
    mkdocs_jupyter.convert.slugify = heading_slug
    nbconvert.filters.strings._convert_header_id = keep_header_id
    mkdocs_jupyter.convert.nb2html = nb2html_in_temp_dir
    mkdocs_jupyter.nbconvert2.mk_custom_highlight_code = material_highlight_code
    # The TOC is read from the rendered HTML (on_page_content): skip the second
    # conversion, to Markdown, that mkdocs-jupyter makes for it.
    mkdocs_jupyter.plugin._get_nb_toc_tokens = lambda path, depth: ([], None)


install_patches()


# --- page furniture: TOC, title, downloads, Colab ---------------------------------------

def github_repo(repo_url: str | None) -> str | None:
    """``owner/name`` of a GitHub ``repo_url``, else None."""
    url = urlparse(repo_url or "")
    return url.path.strip("/") if url.netloc == "github.com" else None


def on_page_content(content, page, config, files):
    if not isinstance(page.file, NotebookFile):
        return content
    tokens = toc_tokens_from_html(content)
    page.toc = get_toc(tokens)
    if tokens and tokens[0]["level"] == 1:
        page.title = tokens[0]["name"]
    stem = Path(page.file.src_uri).stem
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


def notebook_for_download(py_path: str, repo_url: str | None) -> str:
    """The page as ``.ipynb``, with a first cell that installs ``tutorials_pkg`` if missing."""
    notebook = jupytext.read(py_path)
    if repo_url:
        install = (
            f"# In Colab (or anywhere tutorials_pkg is missing) this installs it from {repo_url}\n"
            "import importlib.util, subprocess, sys\n"
            "if importlib.util.find_spec('tutorials_pkg') is None:\n"
            f"    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', "
            f"'git+{repo_url}'])\n"
        )
        notebook.cells.insert(0, jupytext.reads(install, fmt="py:percent").cells[0])
    return jupytext.writes(notebook, fmt="ipynb")


ALTERNATE_LINK = re.compile(r'\s*<link rel="alternate" href="[^"]*" hreflang="[^"]*">')


def on_post_page(output, page, config):
    # Material fetches "sitemap.xml" next to every <link rel="alternate">, which it
    # expects to be a language's root; i18n points them at the page itself, so each
    # load made two requests that 404. The language menu keeps its per-page links,
    # and sitemap.xml keeps the hreflang alternates for search engines.
    output = ALTERNATE_LINK.sub("", output)
    if isinstance(page.file, NotebookFile):
        target = Path(page.file.abs_dest_path).parent / f"{Path(page.file.src_uri).stem}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(notebook_for_download(page.file.abs_src_path, config.repo_url),
                          encoding="utf-8")
    return output
