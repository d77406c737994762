"""Unit tests of the MkDocs hook and of the page executor it calls (no site build)."""

import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import sys
import types

import nbformat
import pytest

from handbook_tools import ROOT, code_cells_in_html


def load_hook():
    spec = importlib.util.spec_from_file_location("notebook_pages", ROOT / "hooks" / "notebook_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hook():
    return load_hook()


@pytest.fixture(scope="module")
def execution(hook):
    return hook.execution


# --- a page as Markdown -----------------------------------------------------------------

def render(hook, page, source_url="https://github.com/o/n/blob/main/", drawn=None):
    drawings = drawn or {}
    return hook.notebook_markdown.page_markdown(
        page, source_url, lambda source: drawings.get(hook.diagrams.normalized(source)),
        hook.diagrams.FENCE)


def test_markdown_cells_stay_markdown_and_code_cells_become_one_html_block(hook):
    page = notebook(("markdown", "# Title\n\nSome `code` in prose.\n\n```python\nx = 1\n```"),
                    ("code", 'x = {"a": 1 < 2}  # `tick`', {"tags": ["measured"]}))
    page.cells[1].outputs = [stream("stdout", "a < b\n\nafter a blank line\n")]
    text, missing = render(hook, page)
    markdown, block = text.split("\n\n<div", 1)
    assert markdown == page.cells[0].source and missing == []
    assert block.startswith(' class="jp-Cell jp-CodeCell celltag_measured"><nb-cell data-search-exclude>')
    assert '<div class="language-python highlight">' in block  # Material's code markup
    assert "`" not in block  # a backtick would start a fence for Python-Markdown
    assert "<pre>a &lt; b\n\nafter a blank line\n</pre>" in block


def test_the_markdown_renders_as_mkdocs_renders_a_page(hook):
    """Through Python-Markdown with the site's extensions: the prose is rendered, the
    cell passes through as it was written."""
    import markdown

    page = notebook(("markdown", "## Über *x*\n\n```python\ny = 2\n```"), ("code", "print('```')"))
    page.cells[1].outputs = [stream("stdout", "```\nnot a fence\n```\n")]
    text, _ = render(hook, page)
    html_text = markdown.markdown(text, extensions=["toc", "pymdownx.superfences",
                                                    "pymdownx.highlight"])
    assert '<h2 id="uber-x">Über <em>x</em></h2>' in html_text
    assert "<pre>&#96;&#96;&#96;\nnot a fence\n&#96;&#96;&#96;\n</pre>" in html_text
    assert html_text.count("highlight\"><pre>") == 2  # the prose's fence and the cell's code


def test_printed_text_wraps_and_a_printed_table_keeps_its_lines(hook):
    table = "Layer (type)    Param #\n" + "=" * 30 + "\n" + "conv1 (Conv2d)  " + "9" * 40 + "\n"
    prose = "a printed line long enough to wrap on a phone's narrow column\nshort\n"
    page = notebook(("code", "print(table)"), ("code", "print(prose)"))
    page.cells[0].outputs = [stream("stdout", table)]
    page.cells[1].outputs = [stream("stdout", prose)]
    text, _ = render(hook, page)
    assert f'<pre class="printed-table">{table}</pre>' in text  # whole lines: it scrolls
    assert ('<pre><span class="line">a printed line long enough to wrap on a phone&#x27;s '
            'narrow column</span>\nshort\n</pre>') in text


def test_an_error_is_one_block_naming_its_exception(hook):
    page = notebook(("code", "1 / 0", {"tags": ["raises-exception"], "raises": "ZeroDivisionError"}))
    page.cells[0].outputs = [nbformat.v4.new_output(
        "error", ename="ZeroDivisionError", evalue="division by zero",
        traceback=["\x1b[31mZeroDivisionError\x1b[0m: division by zero"])]
    text, _ = render(hook, page)
    (cell,) = code_cells_in_html(text)
    assert cell.tags == ["raises-exception"]
    (error,) = cell.errors
    assert error.attrs["data-ename"] == "ZeroDivisionError"
    assert error.text.strip() == "ZeroDivisionError: division by zero"


def test_a_cell_that_only_shows_a_recipe_shows_the_recipe_with_a_linked_caption(hook):
    page = notebook(("code", "from m import f\n\nshow_source(f)"))
    page.cells[0].outputs = [nbformat.v4.new_output("display_data", data={
        "text/plain": "def f(): ...", "text/html": "<p>old</p>",
        hook.notebook_markdown.SOURCE_MIME: {"code": "def f(): ...", "paths": ["tutorials_pkg/m.py"]}})]
    text, _ = render(hook, page)
    assert "jp-InputArea-editor" not in text  # no code of its own
    assert ('<figcaption><a href="https://github.com/o/n/blob/main/tutorials_pkg/m.py">'
            "<code>tutorials_pkg/m.py</code></a></figcaption>") in text
    assert "<p>old</p>" not in text
    without_repo, _ = render(hook, page, source_url=None)
    assert "<figcaption><code>tutorials_pkg/m.py</code></figcaption>" in without_repo


def test_a_diagram_is_its_drawing_and_one_not_drawn_is_reported(hook):
    page = notebook(("markdown", "Before.\n\n```mermaid\ngraph LR\n  a --> b\n```\n\nAfter."),
                    ("code", "graph"))
    page.cells[1].outputs = [nbformat.v4.new_output("execute_result", data={
        "text/vnd.mermaid": "graph LR\n  c --> d", "text/plain": "graph"})]
    text, missing = render(hook, page, drawn={"graph LR\n  a --> b": "<figure>ab</figure>"})
    assert "Before.\n\n<figure>ab</figure>\n\nAfter." in text
    assert missing == ["graph LR\n  c --> d"]
    assert "<pre>graph LR\n  c --&gt; d</pre>" in text  # shown as its source meanwhile


def test_a_page_is_placed_where_mkdocs_places_a_markdown_page(hook):
    assert hook.page_dest_uri("en/save_load/checkpoints.py") == "en/save_load/checkpoints/index.html"
    assert hook.page_dest_uri("save_load/index.py") == "save_load/index.html"
    assert hook.download_stem("save_load/index.py") == "save_load"
    assert hook.download_stem("save_load/checkpoints.py") == "save_load-checkpoints"


def test_the_repository_comes_from_the_build(hook, tmp_path):
    import subprocess

    given = {"GITHUB_REPOSITORY": "owner/name", "GITHUB_SHA": "c0ffee"}
    assert hook.repository(tmp_path, given) == ("owner/name", "c0ffee")
    assert hook.repository(tmp_path, {}) is None  # not a clone
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q",
                    "--allow-empty", "-m", "x"], cwd=tmp_path, check=True)
    assert hook.repository(tmp_path, {}) is None  # no origin
    subprocess.run(["git", "remote", "add", "origin", "git@github.com:someone/fork.git"],
                   cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()
    assert hook.repository(tmp_path, {}) == ("someone/fork", head)


PAGE = ("# %% [markdown]\n# # T\n#\n# See [the next page](checkpoints/) and [this](#a).\n\n"
        '# %%\nprint(1)\n\n# %% tags=["raises-exception"] raises="KeyError"\n{}["k"]\n\n'
        "# %%\nprint('after')\n")


def test_the_downloaded_notebook_installs_from_the_commit_or_says_how(hook, tmp_path):
    page = tmp_path / "p.py"
    page.write_text(PAGE)
    url = "https://example.org/site/save_load/"
    notebook = json.loads(hook.notebook_for_download(page, ("o/n", "c0ffee"), url))
    install, markdown, *code = notebook["cells"]
    assert "git+https://github.com/o/n@c0ffee" in "".join(install["source"])
    assert "[the next page](https://example.org/site/save_load/checkpoints/)" in "".join(
        markdown["source"])
    assert "(https://example.org/site/save_load/#a)" in "".join(markdown["source"])
    assert "".join(code[0]["source"]) == "print(1)"
    assert code[1]["metadata"]["tags"] == ["raises-exception"]  # Jupyter honours it as it is
    unpinned = json.loads(hook.notebook_for_download(page, None, url))["cells"][0]
    assert "pip install -e ." in "".join(unpinned["source"])
    assert "git+" not in "".join(unpinned["source"])


def test_the_downloaded_script_runs_to_its_end(hook, tmp_path):
    page = tmp_path / "p.py"
    page.write_text(PAGE)
    script = tmp_path / "script.py"
    script.write_text(hook.script_for_download(page, "https://example.org/site/x/"))
    assert "(https://example.org/site/x/checkpoints/)" in script.read_text()
    import subprocess

    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\nKeyError: 'k'\nafter\n"


@pytest.mark.parametrize("extra, problem", [
    ({"handbook": {"workers": 2, "cache_dir": "c"}}, None),
    ({"handbook": {"worker": 2}}, "unknown settings ['worker']"),
    ({}, None),
])
def test_settings_come_from_mkdocs_yml(hook, tmp_path, extra, problem):
    config = types.SimpleNamespace(extra=extra, config_file_path=str(tmp_path / "mkdocs.yml"))
    if problem:
        with pytest.raises(hook.PluginError, match=re.escape(problem)):
            hook.Settings(config)
        return
    settings = hook.Settings(config)
    given = extra.get("handbook", {})
    assert settings.workers == given.get("workers", 0) and settings.cell_timeout == 600
    assert settings.cache_dir == tmp_path / given.get("cache_dir", ".cache/handbook")


# --- the hook works with the plugins as they are ----------------------------------------

THIRD_PARTY = ("mkdocs", "mkdocs_static_i18n", "material", "nbconvert",
               "nbclient", "jupytext", "pymdownx", "markdown")


def third_party_names() -> dict[str, int]:
    """id() of every module-level name, class attribute and module-level object's attribute
    of the third-party modules loaded now."""
    found = {}
    for module_name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType) or module_name.split(".")[0] not in THIRD_PARTY:
            continue
        for name, value in list(vars(module).items()):
            found[f"{module_name}.{name}"] = id(value)
            owned = inspect.isclass(value) and getattr(value, "__module__", None) == module_name
            plain = (not inspect.isclass(value) and not inspect.ismodule(value)
                     and not callable(value) and hasattr(value, "__dict__")
                     and type(value).__module__ == module_name)
            if owned or plain:
                for attribute, inner in list(vars(value).items()):
                    found[f"{module_name}.{name}.{attribute}"] = id(inner)
    return found


def test_loading_the_hook_replaces_no_third_party_name_and_sets_no_variable(hook):
    import mkdocs_static_i18n.folder  # noqa: F401  (loaded, so its names are compared)

    before, environment = third_party_names(), dict(os.environ)
    load_hook()
    after = third_party_names()
    assert sorted(name for name in before if after.get(name) != before[name]) == []
    assert dict(os.environ) == environment


# --- the page executor: key, cache, outputs, checks -------------------------------------

def notebook(*cells):
    nb = nbformat.v4.new_notebook()
    for kind, source, *metadata in cells:
        cell = (nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell)(source)
        cell.metadata.update(*metadata)
        nb.cells.append(cell)
    return nb


def test_key_follows_code_tags_and_versions_not_prose(execution):
    versions = {"torch": "2.14.1", "python": "3.11.7"}
    page = notebook(("markdown", "# Title"), ("code", "print(1)"))
    key = execution.page_key("p.py", page, versions)
    prose = notebook(("markdown", "# Another title\n\nMore words."), ("code", "print(1)"))
    assert execution.page_key("p.py", prose, versions) == key
    code = notebook(("markdown", "# Title"), ("code", "print(2)"))
    assert execution.page_key("p.py", code, versions) != key
    tagged = notebook(("markdown", "# Title"), ("code", "print(1)", {"tags": ["raises-exception"]}))
    assert execution.page_key("p.py", tagged, versions) != key
    assert execution.page_key("p.py", page, {**versions, "torch": "2.15.0"}) != key


def test_versions_cover_what_pages_run_and_print(execution):
    found = execution.versions()
    for name in ("torch", "torchvision", "torchinfo", "torchsummary", "scikit-learn", "nbconvert"):
        assert found[name] == importlib.metadata.version(name), name
    assert found["python"].endswith(sys.version.split()[0])
    assert "device" in found


def test_a_cache_entry_lasts_while_the_files_it_imported_are_unchanged(execution, tmp_path):
    package = tmp_path / "tutorials_pkg"
    package.mkdir()
    (package / "a.py").write_text("A = 1\n")
    (package / "b.py").write_text("B = 1\n")
    page = execution.Page("p.py", {}, notebook(("code", "from tutorials_pkg.a import A")), key="k" * 64)
    executed = notebook(("code", "from tutorials_pkg.a import A"))
    cache = execution.ExecutionCache(tmp_path / "cache", tmp_path)
    executed.metadata["handbook"] = {"key": page.key,
                                     "modules": {"tutorials_pkg/a.py": cache.hashes["tutorials_pkg/a.py"]}}
    cache.put(page, executed)
    assert execution.ExecutionCache(tmp_path / "cache", tmp_path).get(page) is not None
    (package / "b.py").write_text("B = 2\n")  # not imported by the page
    assert execution.ExecutionCache(tmp_path / "cache", tmp_path).get(page) is not None
    (package / "a.py").write_text("A = 2\n")
    assert execution.ExecutionCache(tmp_path / "cache", tmp_path).get(page) is None
    assert execution.ExecutionCache(None, tmp_path).get(page) is None  # cache off


def stream(name, text):
    return nbformat.v4.new_output("stream", name=name, text=text)


def test_a_cells_stream_chunks_become_one_block_per_stream(execution):
    cell = nbformat.v4.new_code_cell("...")
    shown = nbformat.v4.new_output("display_data", data={"text/plain": "shown"})
    bookkeeping = nbformat.v4.new_output("display_data", data={
        execution.WARNING_MIME: {"category": "UserWarning", "message": "m", "deprecation": False}})
    cell.outputs = [stream("stdout", "a"), stream("stderr", "w\n"), stream("stdout", "b\n"),
                    bookkeeping, stream("stdout", "c\n"), shown, stream("stdout", "d\rD\n")]
    warnings = execution.clean_outputs(cell)
    assert [(o.output_type, o.get("name"), o.get("text")) for o in cell.outputs] == [
        ("stream", "stdout", "ab\nc\n"), ("stream", "stderr", "w\n"),
        ("display_data", None, None), ("stream", "stdout", "D\n")]
    assert warnings == [{"category": "UserWarning", "message": "m", "deprecation": False}]


def warned(category):
    return nbformat.v4.new_output("display_data", data={execution_mime(): {
        "category": category, "message": "old", "deprecation": category.endswith(
            ("DeprecationWarning", "FutureWarning"))}})


def execution_mime():
    return "application/vnd.handbook.warning+json"


@pytest.mark.parametrize("cell_tags, outputs, problem", [
    ([], [warned("FutureWarning")], "warns FutureWarning: old"),
    ([], [warned("UserWarning")], None),
    ([], [stream("stderr", "/x/y.py:3: DeprecationWarning: old\n")], "warns DeprecationWarning"),
    (["shows-warning"], [warned("DeprecationWarning")], None),
    (["shows-warning"], [], "warned no DeprecationWarning or FutureWarning"),
    (["raises-exception"], [], "names no exception"),
])
def test_warnings_and_tags_are_checked(execution, cell_tags, outputs, problem):
    page = notebook(("code", "x", {"tags": cell_tags}))
    page.cells[0].outputs = outputs
    problems = execution.check_and_clean("p.py", page)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0] and "p.py, cell 0" in problems[0]


@pytest.mark.parametrize("outputs, problem", [
    ([], "should raise KeyError (raises=\"KeyError\") and raised nothing"),
    ([nbformat.v4.new_output("error", ename="ValueError", evalue="v", traceback=[])],
     "should raise KeyError and raised ValueError: v"),
    ([nbformat.v4.new_output("error", ename="KeyError", evalue="k", traceback=[])], None),
])
def test_a_cell_tagged_raises_exception_raises_what_it_names(execution, outputs, problem):
    page = notebook(("code", "x", {"tags": ["raises-exception"], "raises": "KeyError"}))
    page.cells[0].outputs = outputs
    problems = execution.check_and_clean("p.py", page)
    assert problems == ([] if problem is None else [f"p.py, cell 0 {problem}"])


def test_each_language_gets_its_prose_and_the_shared_outputs(execution, tmp_path):
    source = tmp_path / "p.py"
    source.write_text("# %% [markdown]\n# # Titre\n\n# %%\nprint(1)\n", encoding="utf-8")
    executed = notebook(("markdown", "# Title"), ("code", "print(1)"))
    executed.cells[1].outputs = [stream("stdout", "1\n")]
    rendered = execution.with_outputs(source, executed)
    assert [c.source for c in rendered.cells] == ["# Titre", "print(1)"]
    assert rendered.cells[1].outputs == [stream("stdout", "1\n")]
    source.write_text("# %% [markdown]\n# # Titre\n\n# %%\nprint(2)\n", encoding="utf-8")
    with pytest.raises(execution.PageError, match="code cells are not those that were executed"):
        execution.with_outputs(source, executed)


def test_a_page_is_stamped_with_when_its_outputs_were_made(hook):
    page = notebook(("markdown", "# T\n\nIntro."), ("code", "x"), ("markdown", "More."))
    stamp = hook.notebook_markdown.stamp("en", "2026-12-07", 12.34, cached=True)
    assert stamp == ("The outputs on this page were made by running its code on 2026-12-07, when "
                     "the site was built; the page ran in 12.3 s (this build took them from the cache).")
    text, _ = hook.notebook_markdown.page_markdown(page, None, lambda s: None, hook.diagrams.FENCE,
                                                   stamp)
    assert text.startswith(f'# T\n\nIntro.\n\n<p class="page-stamp">{stamp}</p>\n\n<div')
    assert text.count("page-stamp") == 1
    assert "2026-12-07" in hook.notebook_markdown.stamp("zh", "2026-12-07", 1, cached=False)
