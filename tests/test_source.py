"""What a page shows with show_source runs on its own in a fresh interpreter."""

import importlib
import importlib.util
import inspect
import json
import pkgutil
import subprocess
import sys

import pytest

from handbook_tools import run_copied_code
from tutorials_pkg import definition
from tutorials_pkg.source import show_source, source_with_imports


def chapter_modules() -> list[str]:
    """Every module of tutorials_pkg but the two that serve the pages."""
    import tutorials_pkg

    found = pkgutil.walk_packages(tutorials_pkg.__path__, prefix="tutorials_pkg.")
    return sorted(m.name for m in found if not m.ispkg
                  and m.name not in {"tutorials_pkg.runtime", "tutorials_pkg.source"})


CHAPTER_MODULES = chapter_modules()


def public_objects(module_name):
    module = importlib.import_module(module_name)
    return [obj for name, obj in vars(module).items()
            if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
            and obj.__module__ == module_name]


RUN_BLOCKS = """
import builtins, json, symtable, sys


def names_looked_up_when_called(code):
    \"\"\"Global names that the functions (and methods) of ``code`` read when they run.\"\"\"
    found = set()

    def walk(table):
        if table.get_type() == "function":
            found.update(s.get_name() for s in table.get_symbols()
                         if s.is_global() and s.is_referenced())
        for child in table.get_children():
            walk(child)

    walk(symtable.symtable(code, "<block>", "exec"))
    return found


failed = []
for name, code in json.load(sys.stdin):
    namespace = {}
    exec(code, namespace)  # a fresh namespace for each block
    assert callable(namespace[name]), name
    missing = sorted(n for n in names_looked_up_when_called(code)
                     if n not in namespace and not hasattr(builtins, n))
    if missing:
        failed.append(f"{name}: the block does not define {', '.join(missing)} "
                      f"(NameError when called)")
assert not failed, "\\n".join(failed)
assert "tutorials_pkg" not in sys.modules, "a block imported tutorials_pkg"
"""


def run_blocks(blocks, where) -> subprocess.CompletedProcess:
    """Run ``[(name, code), ...]`` in a new isolated interpreter (``python -I``) in ``where``."""
    return subprocess.run([sys.executable, "-I", "-c", RUN_BLOCKS], input=json.dumps(blocks),
                          capture_output=True, text=True, timeout=600, cwd=where)


@pytest.mark.parametrize("module_name", CHAPTER_MODULES)
def test_every_module_shows_something(module_name):
    assert public_objects(module_name), (
        f"{module_name} shows nothing: it defines no public class or function "
        "(list it among the modules that serve the pages, or give it its API)")


def test_every_shown_block_runs_in_a_fresh_interpreter(tmp_path):
    """One new interpreter for every module's blocks (starting one costs seconds), one new
    namespace per block; every name a function reads when called is defined by the block
    or is a builtin, and no block imports tutorials_pkg."""
    blocks = [(obj.__name__, source_with_imports(obj)) for module_name in CHAPTER_MODULES
              for obj in public_objects(module_name)]
    result = run_blocks(blocks, tmp_path)
    assert result.returncode == 0, result.stderr


def test_the_fresh_interpreter_check_catches_a_helper_left_out(tmp_path):
    """Planted fault: strip_wrapper_prefixes copied without the constant it reads."""
    from tutorials_pkg import save_load

    shown = source_with_imports(save_load.strip_wrapper_prefixes)
    helper = next(line for line in shown.splitlines() if line.startswith("WRAPPER_PREFIXES = "))
    alone = shown.replace(helper + "\n", "")
    exec(alone, {})  # defining it works: only calling it would fail
    result = run_blocks([("strip_wrapper_prefixes", alone)], tmp_path)
    assert result.returncode != 0
    assert "strip_wrapper_prefixes: the block does not define WRAPPER_PREFIXES" in result.stderr


def test_the_copied_code_check_catches_an_import_of_the_package(tmp_path):
    """Planted fault: a copied block that leans on tutorials_pkg instead of carrying its code."""
    result = run_copied_code("from tutorials_pkg.definition import mlp_sequential\n"
                             "print(mlp_sequential())\n", tmp_path)
    assert result.returncode != 0 and "imported tutorials_pkg" in result.stderr
    assert run_copied_code("print(len('copied'))\n", tmp_path).stdout == "6\n"


def test_imports_are_only_the_ones_used():
    code = source_with_imports(definition.mlp_named)
    assert "from collections import OrderedDict" in code
    assert "from torch import nn" in code
    assert "import torch\n" not in code  # the module imports torch, mlp_named does not use it


def test_a_guarded_import_comes_along_as_written(tmp_path):
    module = tmp_path / "guarded_demo.py"
    module.write_text("try:\n    import fcntl\nexcept ImportError:  # not on Windows\n"
                      "    fcntl = None\n\n\ndef has_locks():\n    return fcntl is not None\n")
    sys.path.insert(0, str(tmp_path))
    try:
        code = source_with_imports(importlib.import_module("guarded_demo").has_locks)
    finally:
        sys.path.remove(str(tmp_path))
    assert code.startswith("try:\n    import fcntl\nexcept ImportError:  # not on Windows\n")
    namespace = {}
    exec(code, namespace)
    assert namespace["has_locks"]() == (importlib.util.find_spec("fcntl") is not None)


def test_module_level_helpers_come_along(tmp_path):
    module = tmp_path / "helper_demo.py"
    module.write_text("import math\n\nSCALE = 2\n\n\ndef double(x):\n    return x * SCALE\n\n\n"
                      "def area(r):\n    return math.pi * double(r)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        demo = importlib.import_module("helper_demo")
        code = source_with_imports(demo.area)
    finally:
        sys.path.remove(str(tmp_path))
    namespace = {}
    exec(code, namespace)
    assert namespace["area"](1.0) == pytest.approx(2 * 3.141592653589793)
    assert code.index("SCALE = 2") < code.index("def double") < code.index("def area")


def test_helpers_from_other_modules_of_the_package_come_along_as_source():
    from tutorials_pkg import grad_fn, summary

    code = source_with_imports(grad_fn.trace_grad_fn)
    assert "tutorials_pkg" not in code
    assert code.index("def eval_mode") < code.index("def trace_grad_fn")  # summary's helper first
    namespace = {}
    exec(code, namespace)
    assert namespace["eval_mode"].__doc__ == summary.eval_mode.__doc__
    both = source_with_imports(definition.count_parameters, summary.eval_mode)
    assert both.index("def count_parameters") < both.index("def eval_mode")  # as asked


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="at least one"):
        source_with_imports()
    with pytest.raises(ValueError, match="top level"):
        source_with_imports(definition.MultiHeadNet.forward)


def test_source_block_renders_material_code_markup():
    block = show_source(definition.module_key)
    html = block._repr_html_()
    caption = ('<figure class="shown-source"><figcaption data-path="tutorials_pkg/definition.py">'
               "<code>tutorials_pkg/definition.py</code></figcaption>")
    assert html.startswith(caption + '<div class="language-python highlight"><pre><span></span><code>')
    assert repr(block) == block.code and "def module_key" in block.code


def test_highlighting_keeps_the_text_and_drops_spans_that_colour_nothing():
    import html as html_module
    import re

    code = source_with_imports(definition.ResidualMLP)
    highlighted = show_source(definition.ResidualMLP)._repr_html_()
    code_html = highlighted[highlighted.index('<div class="language-python'):]
    text = html_module.unescape(re.sub(r"<[^>]+>", "", code_html))
    assert text.rstrip("\n") == code.rstrip("\n")
    for unstyled in ("n", "w", "p", "o"):  # names, spaces, punctuation, operators
        assert f'class="{unstyled}"' not in highlighted
    assert '<span class="k">def</span>' in highlighted  # keywords keep their colour


def test_a_line_that_may_wrap_on_a_phone_hangs_under_its_start_and_the_text_is_unchanged():
    import html
    import re

    from tutorials_pkg.source import WRAPPING_LINE, highlight_html

    code = ("def f(x):\n"
            "    return some_function(argument_one, argument_two)  # a comment\n"
            "y = 1\n"
            f"z = {'1 + ' * 20}1\n")
    block = highlight_html(code)
    spans = re.findall(r'<span class="line"( style="--indent:(\d+)")?>', block)
    assert [indent for _, indent in spans] == ["4", ""]  # the two lines over WRAPPING_LINE
    assert all(len(line) <= WRAPPING_LINE for line in ("def f(x):", "y = 1"))
    shown = html.unescape(re.sub(r"<[^>]+>", "", block.split("<code>")[1].split("</code>")[0]))
    assert shown == code
