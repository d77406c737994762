"""Show the real source of what a page teaches, with the imports it needs.

``source_with_imports`` cuts an object's definition out of its module together
with the module's imports it uses and the module-level definitions it depends
on, so the block a reader copies runs on its own in a fresh interpreter.
``show_source`` wraps that text for display in a notebook or on the site.
"""

import ast
import html
import inspect


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


def source_with_imports(*objects) -> str:
    """Source of ``objects`` (all from one module) plus the imports and helpers they use."""
    if not objects:
        raise ValueError("source_with_imports() needs at least one class or function")
    modules = {inspect.getmodule(obj) for obj in objects}
    if len(modules) != 1 or None in modules:
        names = ", ".join(getattr(obj, "__qualname__", repr(obj)) for obj in objects)
        raise ValueError(f"objects must come from one module, got {names} from "
                         f"{sorted(getattr(m, '__name__', '?') for m in modules)}")
    module_source = inspect.getsource(modules.pop())
    lines = module_source.splitlines()
    tree = ast.parse(module_source)

    definitions = {name: node for node in tree.body for name in _definition_names(node)}
    wanted = []
    for obj in objects:
        name = getattr(obj, "__name__", None)
        if name not in definitions:
            raise ValueError(f"{obj!r} is not defined at the top level of its module; "
                             "pass a module-level class or function")
        wanted.append(name)

    # Close over module-level helpers the wanted definitions use.
    todo = list(wanted)
    while todo:
        for used in _names_used(definitions[todo.pop()]):
            if used in definitions and used not in wanted:
                wanted.append(used)
                todo.append(used)

    nodes = sorted({id(definitions[n]): definitions[n] for n in wanted}.values(),
                   key=lambda node: node.lineno)
    used = set().union(*(_names_used(node) for node in nodes))
    imports = [text for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
               if (text := _filtered_import(node, used))]

    blocks = []
    for node in nodes:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        blocks.append("\n".join(lines[first - 1:node.end_lineno]))
    head = "\n".join(imports)
    return (head + "\n\n\n" if head else "") + "\n\n\n".join(blocks) + "\n"


def highlight_html(code: str, language: str = "python") -> str:
    """``code`` highlighted in Material's code-block markup (``div.highlight > pre > code``).

    Material colours plain names like the text around them, so plain names and
    spaces get no ``<span>`` of their own: the same look in about 16% fewer bytes.
    Without Pygments the code is shown plain (still copyable).
    """
    try:
        from pygments import format as format_tokens
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_by_name
        from pygments.token import Name, Text, Whitespace
    except ImportError:
        return (f'<div class="language-{language} highlight"><pre><code>'
                f"{html.escape(code)}</code></pre></div>")

    tokens = get_lexer_by_name(language).get_tokens(code)
    plain = ((Text if token is Name or token is Whitespace else token, value)
             for token, value in tokens)
    formatter = HtmlFormatter(cssclass=f"language-{language} highlight", wrapcode=True)
    return format_tokens(plain, formatter)


class SourceBlock:
    """Python source that renders highlighted (HTML) and plain (text)."""

    def __init__(self, code: str):
        self.code = code

    def __repr__(self) -> str:
        return self.code

    def _repr_html_(self) -> str:
        return highlight_html(self.code)


def show_source(*objects) -> SourceBlock:
    """Display the source of ``objects`` with everything needed to run it."""
    return SourceBlock(source_with_imports(*objects))
