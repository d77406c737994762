"""Unit tests of the MkDocs hook and of the page executor it calls (no site build)."""

import importlib.metadata
import importlib.util
import inspect
import json
import re
import sys
import types

import nbformat
import pytest

from handbook_tools import ROOT


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


# --- rendered HTML ----------------------------------------------------------------------

def test_toc_is_read_from_the_rendered_headings(hook):
    html = ('<h1 id="t">Title<a class="headerlink" href="#t">¶</a></h1>'
            '<h2 id="a"><code>nn.Sequential</code>：一条直链</h2><h3 id="b">B &amp; C</h3>'
            '<h2 id="d">D</h2><h4 id="e">deep</h4>')
    tokens = hook.toc_tokens_from_html(html, depth=3)
    assert [t["name"] for t in tokens] == ["Title"]
    assert [(t["id"], t["name"]) for t in tokens[0]["children"]] == [
        ("a", "nn.Sequential：一条直链"), ("d", "D")]
    assert tokens[0]["children"][0]["children"][0]["name"] == "B & C"
    assert tokens[0]["children"][1]["children"] == []  # h4 is deeper than depth=3


def test_chinese_headings_get_unique_ids_and_materials_permalink(hook):
    assert hook.heading_slug("用 OrderedDict 给层命名") == "用-ordereddict-给层命名"
    # As mkdocs-jupyter renders them: Chinese dropped from the id, "anchor-link".
    rendered = ('<h2 id="">&#27169;&#22411; A<a class="anchor-link" href="#">¶</a></h2>'
                '<h2 id="-a">模型 A<a class="anchor-link" href="#-a">¶</a></h2>')
    fixed = hook.fix_headings(rendered)
    assert fixed == ('<h2 id="模型-a">&#27169;&#22411; A<a class="headerlink" href="#模型-a">¶</a></h2>'
                     '<h2 id="模型-a_1">模型 A<a class="headerlink" href="#模型-a_1">¶</a></h2>')


def test_code_cells_get_materials_markup_and_the_appended_css_goes(hook):
    rendered = ('<div class="jp-InputArea-editor"><pre><code class="language-python">'
                'x = {&#34;a&#34;: 1 &lt; 2}</code></pre></div>'
                '\n        <style>\n        [\'pre { line-height: 125%; }\']\n        </style>\n   ')
    content = hook.postprocess(rendered)
    assert content.startswith('<div class="jp-InputArea-editor"><div class="language-python highlight">')
    assert "<style" not in content
    text = hook.html.unescape(hook.TAG.sub("", content))
    assert text.strip() == 'x = {"a": 1 < 2}'


def test_site_template_is_found_before_mkdocs_jupyters(hook, tmp_path):
    """hooks/templates is first on JUPYTER_PATH: nbconvert uses our template, not the plugin's."""
    import mkdocs_jupyter.convert

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    notebook.cells[0].outputs = [nbformat.v4.new_output(
        "error", ename="KeyError", evalue="'k'", traceback=["KeyError: 'k'"])]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    path = tmp_path / "page.ipynb"
    path.write_text(nbformat.writes(notebook), encoding="utf-8")
    content = mkdocs_jupyter.convert.nb2html(str(path), execute=False, no_prompt=True)
    assert '<div class="jp-InputArea-editor"><pre><code class="language-python">print(1)' in content
    error = re.search(r'<div class="[^"]*jp-OutputArea-error"[^>]*>', content)
    assert error and 'data-ename="KeyError"' in error.group(0)
    assert "clipboard-copy" not in content  # mkdocs-jupyter's own template has it


def test_colab_needs_a_github_repo(hook):
    assert hook.github_repo("https://github.com/owner/name/") == "owner/name"
    assert hook.github_repo("https://gitlab.com/owner/name") is None
    assert hook.github_repo(None) is None


def test_downloaded_notebook_installs_the_package_first(hook, tmp_path):
    page = tmp_path / "p.py"
    page.write_text("# %% [markdown]\n# # T\n\n# %%\nprint(1)\n")
    notebook = json.loads(hook.notebook_for_download(str(page), "https://github.com/o/n"))
    install, markdown, code = notebook["cells"]
    assert "git+https://github.com/o/n" in "".join(install["source"])
    assert "".join(code["source"]) == "print(1)"
    assert len(json.loads(hook.notebook_for_download(str(page), None))["cells"]) == 2


# --- how many third-party names the hook replaces --------------------------------------

THIRD_PARTY = ("mkdocs", "mkdocs_jupyter", "mkdocs_static_i18n", "material", "nbconvert",
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


def test_the_hook_replaces_one_third_party_name_and_no_private_one(hook):
    before = third_party_names()
    load_hook()  # loading it again replaces what it replaces, with new objects
    after = third_party_names()
    replaced = sorted(name for name in before if after.get(name) != before[name])
    assert replaced == ["mkdocs_static_i18n.folder.create_i18n_file"]


def test_reloading_the_hook_does_not_stack_wrappers(hook):
    import mkdocs_static_i18n.folder

    load_hook()
    load_hook()
    factory = mkdocs_static_i18n.folder.create_i18n_file
    assert not hasattr(factory.__wrapped__, "__wrapped__")


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
    text = execution.render_notebook(source, executed, {"template": "t"})
    rendered = nbformat.reads(text, as_version=4)
    assert [c.source for c in rendered.cells] == ["# Titre", "print(1)"]
    assert rendered.cells[1].outputs == [stream("stdout", "1\n")]
    assert execution.render_notebook(source, executed, {"template": "t"}) == text  # same bytes
    source.write_text("# %% [markdown]\n# # Titre\n\n# %%\nprint(2)\n", encoding="utf-8")
    with pytest.raises(execution.PageError, match="code cells are not those that were executed"):
        execution.render_notebook(source, executed, {"template": "t"})
