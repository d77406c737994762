"""MkDocs hook: the tutorial pages, executed once for both languages, as Markdown pages.

A tutorial page is a jupytext percent-format ``.py`` at the same path under each
language's folder (``docs/zh/``, ``docs/en/``); their code cells are identical.
How a build goes:

1. ``on_config``: the settings under ``extra.handbook`` in mkdocs.yml (cache,
   cache_dir, workers, cell_timeout). The first language of a build executes every
   page's code once, or takes it from the cache (``hooks/page_execution.py``: a
   failing cell not tagged ``raises-exception``, a DeprecationWarning not tagged
   ``shows-warning``, ... fail the build); the other languages reuse those outputs.
2. ``on_files``, after mkdocs-static-i18n has chosen this language's files
   (``event_priority(-200)``; i18n's is -100): i18n keeps each ``.py`` page as a
   static file where the language puts it (zh at ``/``, en at ``/en/``); each
   becomes a ``NotebookPage`` in its place: a Markdown page made from the page's
   Markdown cells and the shared outputs (``hooks/notebook_markdown.py``), with its
   language alternates (the language menu opens the same page). MkDocs renders it
   as every Markdown page: headings, table of contents, search, code in the prose.
   The page's downloads, ``<name>.py`` and ``<name>.ipynb``, are generated files.
3. ``on_post_page``: i18n's ``<link rel="alternate">`` tags go (the one regular
   expression over HTML); ``on_post_template``: the site's 404 page in the default
   language; ``on_post_build``: one search index per language (English queries are
   stemmed by ``hooks/stemmed_search.js``).

Nothing is replaced in another package, no environment variable is set, and no
attribute of another plugin's objects is written.
"""

import importlib.util
import json
import logging
import os
import posixpath
import re
import subprocess
import sys
import weakref
from pathlib import Path
from urllib.parse import urljoin, urlparse

import jupytext
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority, get_plugin_logger
from mkdocs.structure.files import File

HOOKS = Path(__file__).resolve().parent
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
notebook_markdown = load_sibling("notebook_markdown")


# --- settings -----------------------------------------------------------------------------

class Settings:
    """``extra.handbook`` in mkdocs.yml."""

    def __init__(self, config):
        given = dict(config.extra.get("handbook") or {})
        unknown = sorted(set(given) - {"cache", "cache_dir", "workers", "cell_timeout"})
        if unknown:
            raise PluginError(f"mkdocs.yml: extra.handbook has unknown settings {unknown}; "
                              "known: cache, cache_dir, workers, cell_timeout")
        self.cache = bool(given.get("cache", True))
        self.cache_dir = site_root(config) / str(given.get("cache_dir", ".cache/handbook"))
        self.workers = int(given.get("workers", 0))  # 0: one kernel per core
        self.cell_timeout = int(given.get("cell_timeout", 600))


# --- execution, once per build ----------------------------------------------------------

class BuildState:
    """What the first language's ``on_config`` found, for the other languages of the build."""

    def __init__(self, config):
        self.config = weakref.ref(config)
        self.settings = Settings(config)
        self.repository = repository(site_root(config))
        self.outcome = None


_state: BuildState | None = None


def build_state(config) -> BuildState:
    """The state of this build: i18n builds each language with the same config object."""
    global _state
    if _state is None or _state.config() is not config:
        _state = BuildState(config)
    return _state


def site_root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def language_settings(config) -> tuple[list[str], str]:
    """The languages (i18n's ``languages`` option) and the default one."""
    languages = config.plugins["i18n"].config.languages
    default = next(language.locale for language in languages if language.default)
    return [language.locale for language in languages], default


def tutorial_page_ids(docs_dir: Path, language: str) -> list[str]:
    folder = docs_dir / language
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.py")
                  if "assets" not in p.relative_to(folder).parts)


def memo_dir(state: BuildState) -> Path | None:
    """Pages as jupytext reads them, their Markdown, their downloads: by their bytes."""
    return state.settings.cache_dir / "parsed" if state.settings.cache else None


# --- the repository the site is built from -----------------------------------------------

GITHUB_REMOTE = re.compile(r"github\.com[:/]([\w.-]+/[\w.-]+?)(?:\.git)?/?$")


def repository(root: Path, environ=os.environ) -> tuple[str, str] | None:
    """``(owner/name, commit)`` of the GitHub repository this build is made from: GitHub
    Actions' ``GITHUB_REPOSITORY`` and ``GITHUB_SHA``, else the clone's ``origin`` remote
    and ``HEAD``; None where neither tells (a local build, a fork without a remote)."""
    if environ.get("GITHUB_REPOSITORY") and environ.get("GITHUB_SHA"):
        return environ["GITHUB_REPOSITORY"], environ["GITHUB_SHA"]

    def git(*args) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    found = GITHUB_REMOTE.search(git("remote", "get-url", "origin"))
    commit = git("rev-parse", "HEAD")
    return (found.group(1), commit) if found and commit else None


@event_priority(-200)  # after i18n (-100)
def on_config(config):
    jieba = sys.modules.get("jieba")  # Material's search segments Chinese with it
    if jieba:
        jieba.setLogLevel(logging.INFO)  # its own setter: no "Building prefix dict" lines
    state = build_state(config)
    if state.repository:
        # The repository link, "Edit on GitHub" and the downloads' install line name the
        # repository this build was made from (none where it cannot tell).
        config.repo_url = f"https://github.com/{state.repository[0]}"
        config.edit_uri = "edit/main/docs/"
    if state.outcome is not None:
        return config
    settings, root, docs_dir = state.settings, site_root(config), Path(config.docs_dir)
    languages, _ = language_settings(config)
    try:
        execution.forget_old_memos(memo_dir(state))
        page_ids = sorted(set().union(*(tutorial_page_ids(docs_dir, l) for l in languages)))
        pages = execution.read_pages(docs_dir, languages, page_ids, memo_dir(state))
        state.outcome = execution.execute_pages(
            pages, root, settings.cache_dir / "executed" if settings.cache else None,
            workers=settings.workers, cell_timeout=settings.cell_timeout, report=log.info)
    except execution.PageError as error:
        raise PluginError(f"\n{error}") from None
    log.info("Pages executed: %s; from cache: %s (%.1f s)", ", ".join(state.outcome.ran) or "none",
             ", ".join(state.outcome.cached) or "none", state.outcome.seconds)
    return config


# --- the pages, as Markdown ---------------------------------------------------------------

class NotebookPage(File):
    """A tutorial page, where i18n placed its ``.py``, as a Markdown page of the site."""

    def is_documentation_page(self) -> bool:
        return True


def page_dest_uri(placed_uri: str) -> str:
    """``en/save_load/checkpoints.py`` -> ``en/save_load/checkpoints/index.html``
    (``index.py`` -> ``index.html``), as MkDocs places a Markdown page."""
    parent, name = posixpath.split(posixpath.splitext(placed_uri)[0])
    return posixpath.join(parent, "index.html" if name == "index" else f"{name}/index.html")


def source_url(state: BuildState) -> str | None:
    """Where a shown recipe's file is: the repository at the commit the site is built from."""
    if not state.repository:
        return None
    name, commit = state.repository
    return f"https://github.com/{name}/blob/{commit}/"


def diagram_drawer(docs_dir: Path, language: str):
    def draw(source: str) -> str | None:
        return diagrams.figure(source, docs_dir, language)
    return draw


def page_markdown(state: BuildState, config, source: Path, page_id: str, language: str) -> str:
    """The Markdown of one language's page with the shared outputs, remembered by what
    makes it."""
    executed = state.outcome.executed[page_id]
    docs_dir = Path(config.docs_dir)
    link = source_url(state)
    run = executed.metadata["handbook"]
    stamp = notebook_markdown.stamp(language, run.get("date", "?"), run["seconds"],
                                    cached=page_id in state.outcome.cached)
    key = execution.bytes_key(source, "markdown", run["key"], json.dumps(run["modules"]), stamp,
                              link or "", notebook_markdown.renderer_code(), language)

    def render() -> str:
        problems = execution.shows_warning_prose_problems(source, executed, memo_dir(state))
        if problems:
            raise PluginError("\n".join(problems))
        notebook = execution.with_outputs(source, executed, memo_dir(state))
        text, missing = notebook_markdown.page_markdown(
            notebook, link, diagram_drawer(docs_dir, language), diagrams.FENCE, stamp)
        if missing:
            # A warning: the strict build fails, naming the command that draws them.
            log.warning(diagrams.missing_message(f"{language}/{page_id}", missing, docs_dir))
            return text + "\n<!-- diagrams missing -->\n"
        return text

    text = execution.remembered(key, render, memo_dir(state))
    if text.endswith("<!-- diagrams missing -->\n"):
        execution.forget(key, memo_dir(state))  # warn again next time
    return text


def download_stem(page_id: str) -> str:
    """The name of a page's downloads: ``save_load/index.py`` -> ``save_load``,
    ``save_load/checkpoints.py`` -> ``save_load-checkpoints``."""
    parts = Path(page_id).with_suffix("").parts
    return "-".join(p for p in parts if p != "index") or "index"


@event_priority(-200)  # after i18n (-100) has chosen this language's files
def on_files(files, config):
    add_stemmed_search_workers(files, config)
    state = build_state(config)
    if state.outcome is None:
        return files
    languages, default = language_settings(config)
    docs_dir = Path(config.docs_dir)
    repo = state.repository
    for placed in list(files):
        language, _, page_id = placed.src_uri.partition("/")
        if language not in languages or page_id not in state.outcome.executed:
            continue
        source = docs_dir / placed.src_uri
        page = NotebookPage(placed.src_uri, None, config.site_dir, config.use_directory_urls,
                            dest_uri=page_dest_uri(placed.dest_uri), inclusion=placed.inclusion)
        page.content_string = page_markdown(state, config, source, page_id, language)
        # What mkdocs-static-i18n reads of its pages: the language, and the page in each
        # language (its language menu links there).
        page.locale = page.locale_alternate_of = page.localization = language
        page.norm_src_uri = page_id
        page.alternates = {
            other: page if other == language else NotebookPage(
                f"{other}/{page_id}", None, config.site_dir, config.use_directory_urls,
                dest_uri=page_dest_uri(page_id if other == default else f"{other}/{page_id}"))
            for other in languages}
        files.remove(placed)
        files.append(page)
        folder = posixpath.dirname(page.dest_uri)
        stem = download_stem(page_id)
        page.downloads = {"py": f"{stem}.py", "ipynb": f"{stem}.ipynb"}
        if repo:
            # The Pages deploy (mkdocs gh-deploy) keeps the built site, .ipynb files
            # included, on the gh-pages branch, where Colab can open them.
            page.downloads["colab"] = ("https://colab.research.google.com/github/"
                                       f"{repo[0]}/blob/gh-pages/{posixpath.join(folder, stem)}.ipynb")
        published = urljoin(config.site_url or "", page.url)
        files.append(File.generated(config, posixpath.join(folder, f"{stem}.py"),
                                    content=script_for_download(source, published,
                                                                memo_dir(state))))
        files.append(File.generated(config, posixpath.join(folder, f"{stem}.ipynb"),
                                    content=notebook_for_download(source, repo, published,
                                                                  memo_dir(state))))
    return files


# --- downloads --------------------------------------------------------------------------

INSTALL_CELL = """\
# This notebook uses tutorials_pkg, the handbook's own code, installed here from the
# commit the site was built from if it is missing (in Colab, say).
import importlib.util, subprocess, sys
if importlib.util.find_spec("tutorials_pkg") is None:
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", {package!r}], check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit("tutorials_pkg is missing and could not be installed ({{}}); offline, "
                         "clone {repo_url} and run `pip install -e .` in it".format(error))
"""
NO_INSTALL_CELL = """\
# This notebook uses tutorials_pkg, the handbook's own code. This copy of the site was
# built without a repository to install it from: in a clone of the handbook, run
# `pip install -e .`, then start the notebook from there.
import importlib.util
if importlib.util.find_spec("tutorials_pkg") is None:
    raise SystemExit("tutorials_pkg is missing: in a clone of the handbook, run `pip install -e .`")
"""


def first_cell(repo: tuple[str, str] | None) -> str:
    """The downloaded notebook's first cell: install tutorials_pkg pinned to the commit the
    site was built from, or, without a repository, say how to install it."""
    if repo is None:
        return NO_INSTALL_CELL
    name, commit = repo
    return INSTALL_CELL.format(package=f"git+https://github.com/{name}@{commit}",
                               repo_url=f"https://github.com/{name}")


MARKDOWN_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:)([^)\s]+)\)")


def absolute_links(text: str, page_url: str) -> str:
    """Markdown links relative to the page (``](checkpoints/)``, ``](#a)``) made absolute,
    so that they lead somewhere from a notebook opened anywhere."""
    return MARKDOWN_LINK.sub(lambda m: f"]({urljoin(page_url, m.group(1))})", text)


def notebook_for_download(py_path: Path, repo: tuple[str, str] | None, page_url: str,
                          memo: Path | None = None) -> str:
    """The page as ``.ipynb``: the install cell first, links absolute (``page_url``: the
    page's address on the published site)."""
    install = first_cell(repo)

    def convert() -> str:
        notebook = execution.read_notebook(Path(py_path), memo)
        for cell in notebook.cells:
            if cell.cell_type == "markdown":
                cell.source = absolute_links(cell.source, page_url)
        notebook.cells.insert(0, jupytext.reads(install, fmt="py:percent").cells[0])
        return jupytext.writes(notebook, fmt="ipynb")

    key = execution.bytes_key(Path(py_path), "download", install, page_url)
    return execution.remembered(key, convert, memo)


def script_for_download(py_path: Path, page_url: str, memo: Path | None = None) -> str:
    """The page as a script that runs to its end: a cell that fails on purpose (tagged
    ``raises-exception``) prints the exception it raises and the script goes on; links
    absolute."""
    key = execution.bytes_key(Path(py_path), "script", page_url)
    return execution.remembered(key, lambda: _script(py_path, page_url, memo), memo)


def _script(py_path: Path, page_url: str, memo: Path | None) -> str:
    notebook = execution.read_notebook(Path(py_path), memo)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = absolute_links(cell.source, page_url)
        elif execution.RAISES_TAG in cell.metadata.get("tags", []):
            expected = cell.metadata.get("raises", "Exception")
            body = "\n".join("    " + line if line.strip() else "" for line in cell.source.splitlines())
            cell.source = (f"try:  # this cell fails on purpose: the page shows the error\n{body}\n"
                           f"except {expected} as error:\n"
                           '    print(f"{type(error).__name__}: {error}")')
    return jupytext.writes(notebook, fmt="py:percent")


# --- the finished pages -----------------------------------------------------------------

ALTERNATE_LINK = re.compile(r'\s*<link rel="alternate" href="[^"]*" hreflang="[^"]*">')


def on_post_page(output, page, config):
    # Material fetches "sitemap.xml" next to every <link rel="alternate">, which it
    # expects to be a language's root; i18n points them at the page itself, so each
    # load made two requests that 404. The language menu keeps its per-page links,
    # and sitemap.xml keeps the hreflang alternates for search engines.
    return ALTERNATE_LINK.sub("", output)


_not_found_page: dict[str, str] = {}  # the default language's 404 page, per site


def on_post_template(output, template_name, config):
    """The site's one 404.html in the default language: each language's build writes it,
    and the default language builds first."""
    if template_name != "404.html":
        return output
    _, default = language_settings(config)
    if config.theme["language"] == default:
        _not_found_page[config.site_dir] = output
    return _not_found_page.get(config.site_dir, output)


# --- search, one index per language ---------------------------------------------------

MATERIAL_WORKER = re.compile(r"assets/javascripts/workers/(search\.\w+\.min\.js)")


def add_stemmed_search_workers(files, config):
    """``stemmed-search.<hash>.min.js`` beside Material's search worker ``search.<hash>.min.js``:
    hooks/stemmed_search.js, which stems the words of a query as the index's words were
    stemmed, then runs Material's worker. overrides/main.html points the pages at it."""
    wrapper = (HOOKS / "stemmed_search.js").read_text(encoding="utf-8")
    for file in list(files):
        found = MATERIAL_WORKER.fullmatch(file.src_uri)
        if found:
            files.append(File.generated(
                config, f"assets/javascripts/workers/stemmed-{found[1]}",
                content=f"const MATERIAL_WORKER = {json.dumps(found[1])};\n{wrapper}"))


def split_search_index(site_dir: Path, languages: list[str], default: str):
    """One search index per language, each where that language's pages look for it.

    i18n merges every language's entries into ``search/search_index.json``; a reader of
    the English pages then got Chinese results, and Chinese word segmentation switched
    off English stemming. The default language keeps the root index and the search
    languages configured (Chinese pages hold English words too); ``<locale>/search/
    search_index.json`` holds that language's entries, their locations relative to
    ``<locale>/`` (overrides/main.html gives its pages that base), and searches with that
    language's stemmer alone. Written as UTF-8: Material escapes each Chinese character
    as six bytes."""
    index_path = site_dir / "search" / "search_index.json"
    if not index_path.is_file():
        return
    index = json.loads(index_path.read_text(encoding="utf-8"))
    entries = {language: [] for language in languages}
    for entry in index["docs"]:
        first, _, rest = entry["location"].partition("/")
        if first in entries and first != default:
            entries[first].append({**entry, "location": rest})
        else:
            entries[default].append(entry)
    for language, docs in entries.items():
        config = dict(index["config"])
        if language != default and language in config["lang"]:
            config["lang"] = [language]
        path = index_path if language == default else site_dir / language / index_path.relative_to(site_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**index, "config": config, "docs": docs},
                                   ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


@event_priority(-200)  # after i18n (-100) has merged the languages' search entries
def on_post_build(config):
    split_search_index(Path(config.site_dir), *language_settings(config))
