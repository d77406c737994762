"""Unit tests of the MkDocs hook's own functions."""

import importlib.util
import json
import shutil

import pytest

from handbook_tools import ROOT


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("notebook_pages", ROOT / "hooks" / "notebook_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_chinese_headings_get_ids(hook):
    assert hook.heading_slug("用 OrderedDict 给层命名") == "用-ordereddict-给层命名"
    assert hook.keep_header_id("模型-a") == "模型-a"


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


def test_fingerprint_follows_the_package_source(hook, tmp_path, monkeypatch):
    shutil.copytree(ROOT / "tutorials_pkg", tmp_path / "tutorials_pkg")
    shutil.copytree(ROOT / "hooks", tmp_path / "hooks")
    monkeypatch.setattr(hook, "ROOT", tmp_path)
    monkeypatch.setattr(hook, "TEMPLATES", tmp_path / "hooks" / "templates")
    before = hook.fingerprint()
    assert hook.fingerprint() == before
    with open(tmp_path / "tutorials_pkg" / "definition.py", "a") as f:
        f.write("\n# changed\n")
    assert hook.fingerprint() != before
