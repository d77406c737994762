"""Show the real source of what a page teaches, with the imports it needs.

``source_with_imports`` cuts an object's definition out of its module together
with the module's imports it uses and the module-level definitions it depends
on, so the block a reader copies runs on its own in a fresh interpreter.
``show_source`` wraps that text for display in a notebook or on the site.
Helpers imported from another module of the package are cut out the same way.
"""

import ast
import functools
import html
import importlib
import inspect
import re


def _definition_names(node: ast.stmt) -> list[str]:
    """Names a top-level statement defines (def, class, or a simple assignment)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _filtered_import(node: ast.Import | ast.ImportFrom, used: set[str]) -> str | None:
    """The import statement reduced to the names in ``used``, or None."""
    if isinstance(node, ast.ImportFrom) and node.module == "__future__":
        return ast.unparse(node)
    keep = [a for a in node.names if (a.asname or a.name.split(".")[0]) in used]
    if not keep:
        return None
    if isinstance(node, ast.Import):
        return ast.unparse(ast.Import(names=keep))
    return ast.unparse(ast.ImportFrom(module=node.module, names=keep, level=node.level))


def _guarded_import(node: ast.stmt, used: set[str], lines: list[str]) -> str | None:
    """A top-level ``try: import x / except ImportError: x = None``, as written, if ``x`` is used."""
    if not (isinstance(node, ast.Try) and node.body
            and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in node.body)):
        return None
    names = {a.asname or a.name.split(".")[0] for n in node.body for a in n.names}
    return "\n".join(lines[node.lineno - 1:node.end_lineno]) if names & used else None


PACKAGE = __name__.partition(".")[0]  # "tutorials_pkg"


@functools.cache
def _module_parts(module_name: str):
    """A module's source lines, syntax tree, top-level definitions, and the names it imports
    from other modules of this package (``name -> (module, name)``)."""
    source = inspect.getsource(importlib.import_module(module_name))
    tree = ast.parse(source)
    definitions = {name: node for node in tree.body for name in _definition_names(node)}
    from_package = {alias.asname or alias.name: (node.module, alias.name)
                    for node in tree.body if isinstance(node, ast.ImportFrom)
                    and (node.module or "").split(".")[0] == PACKAGE for alias in node.names}
    return source.splitlines(), tree, definitions, from_package


def source_with_imports(*objects) -> str:
    """Source of module-level ``objects`` plus the imports and helpers they use.

    Helpers imported from another module of this package come along as source,
    before the code that uses them, so the block needs no ``tutorials_pkg``.
    """
    if not objects:
        raise ValueError("source_with_imports() needs at least one class or function")
    wanted = []  # (module, name), in the order found
    for obj in objects:
        module, name = getattr(inspect.getmodule(obj), "__name__", None), getattr(obj, "__name__", None)
        if module is None or name not in _module_parts(module)[2]:
            raise ValueError(f"{obj!r} is not defined at the top level of its module; "
                             "pass a module-level class or function")
        wanted.append((module, name))
    requested = list(dict.fromkeys(module for module, _ in wanted))

    # Close over the module-level helpers they use, in this module or imported from another.
    todo = list(wanted)
    while todo:
        module, name = todo.pop()
        _, _, definitions, from_package = _module_parts(module)
        for used in _names_used(definitions[name]):
            helper = (module, used) if used in definitions else from_package.get(used)
            if helper and helper not in wanted:
                wanted.append(helper)
                todo.append(helper)

    # Modules that only lend helpers first (in the reverse of the order they were found),
    # then the modules asked for; each module's definitions in source order.
    found = list(dict.fromkeys(module for module, _ in wanted))
    imports, blocks = [], []
    for module in [*reversed([m for m in found if m not in requested]), *requested]:
        lines, tree, definitions, _ = _module_parts(module)
        nodes = sorted({id(definitions[n]): definitions[n] for m, n in wanted if m == module}.values(),
                       key=lambda node: node.lineno)
        used = set().union(*(_names_used(node) for node in nodes))
        imports += [text for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                    and not (isinstance(node, ast.ImportFrom)
                             and (node.module or "").split(".")[0] == PACKAGE)
                    if (text := _filtered_import(node, used))]
        imports += [text for node in tree.body if (text := _guarded_import(node, used, lines))]
        for node in nodes:
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            blocks.append("\n".join(lines[first - 1:node.end_lineno]))
    head = "\n".join(dict.fromkeys(imports))
    return (head + "\n\n\n" if head else "") + "\n\n\n".join(blocks) + "\n"


def highlight_html(code: str, language: str = "python") -> str:
    """``code`` highlighted in Material's code-block markup (``div.highlight > pre > code``).

    Plain names, builtins, exceptions, module names, numbers, constants (``None``),
    spaces, punctuation and operators (``in``, ``not``) get no ``<span>`` of their own
    (they take the colour of the text around them), and the parts of a string
    (prefix, quotes, ``{}`` of an f-string) one class, so that they merge into one
    span: about half the bytes. Without Pygments the code is shown plain (still
    copyable).
    """
    try:
        from pygments import format as format_tokens
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_by_name
        from pygments.token import (
            Keyword, Name, Number, Operator, Punctuation, String, Text, Whitespace,
        )
    except ImportError:
        return (f'<div class="language-{language} highlight"><pre><code>'
                f"{html.escape(code)}</code></pre></div>")

    tokens = get_lexer_by_name(language).get_tokens(code)
    unstyled = (Name, Name.Builtin, Name.Exception, Name.Namespace, Whitespace, Punctuation,
                Operator, Operator.Word, Keyword.Constant)
    plain = ((Text if any(token is t for t in unstyled) or token in Number
              else String if token in String and token is not String.Doc else token, value)
             for token, value in tokens)  # one class for every string part: fewer spans
    formatter = HtmlFormatter(cssclass=f"language-{language} highlight", wrapcode=True)
    block = format_tokens(plain, formatter)  # Pygments closes its spans at each line's end
    start, end = block.index("<code>") + len("<code>"), block.rindex("</code>")
    return block[:start] + hanging_indents(block[start:end]) + block[end:]


WRAPPING_LINE = 36  # characters: a longer line may wrap in a phone's column (390 px)


def hanging_indents(lines_html: str) -> str:
    """Each line of a block (HTML, one line per line) that may wrap at a phone's width,
    in a ``<span class="line" style="--indent:N">``: the site's CSS continues it 4
    columns further in than the line starts. The newlines stay outside the spans, so the
    text (and what a copy button copies) is the code as written."""
    lines = lines_html.split("\n")
    for number, markup in enumerate(lines):
        text = html.unescape(re.sub(r"<[^>]*>", "", markup))
        if len(text) > WRAPPING_LINE:
            indent = len(text) - len(text.lstrip(" "))
            style = f' style="--indent:{indent}"' if indent else ""
            lines[number] = f'<span class="line"{style}>{markup}</span>'
    return "\n".join(lines)


SOURCE_MIME = "application/vnd.handbook.source+json"


class SourceBlock:
    """Python source that renders highlighted (HTML) and plain (text).

    The HTML names the files the objects were cut from (``paths``, relative to
    the repository), above the code; the site links each to the repository.
    """

    def __init__(self, code: str, paths: tuple[str, ...] = ()):
        self.code = code
        self.paths = paths

    def __repr__(self) -> str:
        return self.code

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """Plain text, HTML, and the code with its files as data: the site's build draws
        the block from the data, linking each file to the repository."""
        return {"text/plain": self.code, "text/html": self._repr_html_(),
                SOURCE_MIME: {"code": self.code, "paths": list(self.paths)}}

    def _repr_html_(self) -> str:
        caption = "".join(f'<figcaption data-path="{html.escape(path)}"><code>{html.escape(path)}'
                          "</code></figcaption>" for path in self.paths)
        return highlight_html(self.code) if not caption else (
            f'<figure class="shown-source">{caption}{highlight_html(self.code)}</figure>')


def _repository_path(obj) -> str | None:
    """``tutorials_pkg/x.py``: the file ``obj`` is defined in, relative to the repository."""
    module = inspect.getmodule(obj)
    file = getattr(module, "__file__", None)
    if not file or not module.__name__.startswith(PACKAGE):
        return None
    parts = module.__name__.split(".")
    tail = "__init__.py" if file.endswith("__init__.py") else parts.pop() + ".py"
    return "/".join([*parts, tail])


def show_source(*objects) -> SourceBlock:
    """Display the source of ``objects`` with everything needed to run it."""
    paths = tuple(dict.fromkeys(filter(None, map(_repository_path, objects))))
    return SourceBlock(source_with_imports(*objects), paths)
