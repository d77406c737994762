"""Chapter: model summaries.

``summary`` runs one forward pass with hooks and prints a table: each module
once, its shapes, its parameters, the modules called more than once marked.
"""

import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["Summary", "SummaryRow", "eval_mode", "input_problem", "make_inputs", "shape_of",
           "summary", "summary_rows", "tensor_bytes", "uncompiled"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode for the block, then give each its own mode back."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def uncompiled(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (``_orig_mod``), or ``model``; refuses compiled submodules."""
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    compiled = [name for name, m in model.named_modules()
                if isinstance(getattr(m, "_orig_mod", None), nn.Module)]
    if compiled:
        raise TypeError(f"submodule {compiled[0]!r} was compiled with torch.compile, and hooks "
                        "do not see inside compiled code: pass the model built before "
                        f"compiling it, or uncompiled(model.{compiled[0]}) on its own")
    return model


def shape_of(value):
    """The shape of a tensor, or of each tensor in a tuple, list or dict; None for others."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (list, tuple)):
        return [shape_of(item) for item in value]
    if isinstance(value, dict):
        return {key: shape_of(item) for key, item in value.items()}
    return None


def call_shape(args: tuple, kwargs: dict):
    """The shapes of one call's inputs: one argument's shape, or a list; keywords as a dict."""
    shapes = [shape_of(arg) for arg in args]
    keywords = {key: shape for key, value in kwargs.items()
                if (shape := shape_of(value)) is not None}
    if not keywords:
        return shapes[0] if len(shapes) == 1 else shapes
    return [*shapes, keywords] if shapes else keywords


def tensor_bytes(value) -> int:
    """Bytes held by the tensors in ``value`` (a tensor, or tuples, lists, dicts of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(item) for item in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(item) for item in value.values())
    return 0


@dataclass
class SummaryRow:
    """One module of a summary; ``params`` counts only parameters no earlier row counted."""

    name: str                  # first name it is registered under; "" for the model itself
    type: str
    depth: int
    params: int = 0
    trainable_params: int = 0
    calls: int = 0             # times forward called it
    input_shape: object = None   # shapes on its first call
    output_shape: object = None
    aliases: list[str] = field(default_factory=list)        # other names it is registered under
    shared_params: list[str] = field(default_factory=list)  # "weight = embed.weight"

    @property
    def reused(self) -> bool:
        return self.calls > 1


def _cell(shape, width: int = 44) -> str:
    text = "--" if shape is None else str(shape)
    return text if len(text) <= width else text[:width - 3] + "..."


def _megabytes(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


@dataclass
class Summary:
    """What ``summary`` found. ``str()`` is the printed table; ``table(max_depth)`` a shorter one.

    The memory estimate: the input, the output of every call of a leaf module
    (a module without children; roughly what training keeps for backward at
    this batch size), and the parameters and buffers.
    """

    rows: list[SummaryRow]
    input_shape: object
    input_bytes: int
    output_bytes: int
    param_bytes: int
    buffer_bytes: int
    compiled: bool = False     # the model was torch.compile'd: the rows are its _orig_mod's

    @property
    def total_params(self) -> int:
        return sum(row.params for row in self.rows)

    @property
    def trainable_params(self) -> int:
        return sum(row.trainable_params for row in self.rows)

    @property
    def total_bytes(self) -> int:
        return self.input_bytes + self.output_bytes + self.param_bytes + self.buffer_bytes

    def table(self, max_depth: int | None = None) -> str:
        """The table down to ``max_depth``; a row then counts the parameters of the rows it hides."""
        if max_depth is not None and (not isinstance(max_depth, int) or max_depth < 0):
            raise ValueError(f"max_depth must be None or an int >= 0, got {max_depth!r}")
        header = ("Layer (type)", "Input shape", "Output shape", "Param #", "Notes")
        lines = []
        for index, row in enumerate(self.rows):
            if max_depth is not None and row.depth > max_depth:
                continue
            params = row.params
            if max_depth is not None and row.depth == max_depth:
                for below in self.rows[index + 1:]:
                    if below.depth <= row.depth:
                        break
                    params += below.params
            notes = [f"called {row.calls}x"] if row.reused else []
            notes += [f"also {alias}" for alias in row.aliases]
            notes += [f"{shared} (shared)" for shared in row.shared_params]
            if row.calls == 0:
                notes.append("not called")
            label = "  " * row.depth + (f"{row.name} ({row.type})" if row.name else row.type)
            lines.append((label, _cell(row.input_shape), _cell(row.output_shape),
                          f"{params:,}" if params else "--", "; ".join(notes)))
        widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(5)]

        def fmt(cells):
            return "  ".join(cell.ljust(width) if i in (0, 4) else cell.rjust(width)
                             for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

        rule = "=" * len(fmt(header))
        compiled = ["Compiled with torch.compile: these are its _orig_mod's modules, run eagerly"]
        return "\n".join([
            *(compiled if self.compiled else []),
            fmt(header), rule, *map(fmt, lines), rule,
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.total_params - self.trainable_params:,}",
            f"Input size: {_megabytes(self.input_bytes)}",
            f"Leaf-module outputs (forward): {_megabytes(self.output_bytes)}",
            f"Params + buffers size: {_megabytes(self.param_bytes + self.buffer_bytes)}",
            f"Estimated total size: {_megabytes(self.total_bytes)}",
        ])

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return str(self)


def _is_shape(value) -> bool:
    return isinstance(value, (tuple, list, torch.Size)) and all(isinstance(d, int) for d in value)


def _a(name: str) -> str:
    return f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"


def _not_a_tensor(value, where: str) -> str | None:
    """Where in ``value`` something other than a tensor (or a list, tuple, dict of them) is."""
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, (list, tuple, dict)) and value:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return next((found for key, item in items
                     if (found := _not_a_tensor(item, f"{where}[{key!r}]")) is not None), None)
    name = type(value).__name__
    if isinstance(value, (list, tuple, dict)):
        return f"{where} is an empty {name}"
    return f"{where} is {_a(name)}"


def input_problem(args: tuple) -> str | None:
    """What keeps ``args`` from being positional arguments made of tensors, or None if nothing."""
    for index, arg in enumerate(args):
        found = _not_a_tensor(arg, f"argument {index}")
        if found is not None:
            return found
    return None


def make_inputs(model: nn.Module, input_size=None, input_data=None) -> tuple:
    """The positional arguments for ``model``: random ones of ``input_size`` or ``input_data``."""
    if (input_size is None) == (input_data is None):
        raise ValueError("pass exactly one of input_size (a shape with the batch dimension, "
                         "e.g. (1, 3, 224, 224)) or input_data (a tensor or a tuple of the "
                         "model's positional arguments)")
    if input_data is not None:
        args = (input_data,) if isinstance(input_data, torch.Tensor) else input_data
        takes = ("input_data takes a tensor, or a tuple of the model's positional arguments, "
                 "each a tensor or a list, tuple or dict of tensors")
        if isinstance(args, (list, dict)) and _not_a_tensor(args, "") is None:
            raise TypeError(f"{takes}; got a {type(args).__name__} of tensors: to pass it as the "
                            "model's one argument (a detection model's images), write (images,)")
        if not isinstance(args, tuple) or not args:
            got = "an empty tuple" if isinstance(args, tuple) else _a(type(args).__name__)
            raise TypeError(f"{takes}; got {got}")
        if (problem := input_problem(args)) is not None:
            raise TypeError(f"{takes}; {problem}")
        return args
    shapes = [input_size] if _is_shape(input_size) else input_size
    shapes = list(shapes) if isinstance(shapes, (list, tuple)) else []
    if not shapes or not all(_is_shape(s) and s and min(s) > 0 for s in shapes):
        raise ValueError(f"input_size must be a shape of positive sizes with the batch "
                         f"dimension, e.g. (1, 3, 224, 224), or a list of shapes; got {input_size!r}")
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    return tuple(torch.randn(*shape, device=device, dtype=dtype) for shape in shapes)


def summary_rows(model: nn.Module) -> list[SummaryRow]:
    """One row per module (by identity), with the parameters it adds to the count."""
    aliases = defaultdict(list)
    for name, module in model.named_modules(remove_duplicate=False):
        aliases[id(module)].append(name)
    counted = {}  # id(parameter) -> the name it was counted under
    rows = []
    for name, module in model.named_modules():  # each module once, under its first name
        row = SummaryRow(name, type(module).__name__, name.count(".") + 1 if name else 0,
                         aliases=aliases[id(module)][1:])
        for param_name, param in module.named_parameters(recurse=False):
            full_name = f"{name}.{param_name}" if name else param_name
            if id(param) in counted:  # tied: already counted in an earlier row
                row.shared_params.append(f"{param_name} = {counted[id(param)]}")
                continue
            counted[id(param)] = full_name
            row.params += param.numel()
            row.trainable_params += param.numel() if param.requires_grad else 0
        rows.append(row)
    return rows


TOO_SMALL = re.compile(r"Output size is too small|Kernel size can't be greater than actual "
                       r"input size|smaller than kernel size|Padding size should be less than "
                       r"the corresponding input")


def summary(model: nn.Module, input_size=None, input_data=None) -> Summary:
    """Run one forward pass with hooks and tabulate every module once.

    An error in the forward pass comes back as it was raised, with a note that
    names the innermost module it happened in and the input shape.
    """
    original = model
    model = uncompiled(model)
    inputs = make_inputs(model, input_size, input_data)
    rows = summary_rows(model)
    row_of = {id(module): row for (_, module), row in zip(model.named_modules(), rows)}
    running = []  # modules entered and not yet left: the innermost one is where an error is
    output_bytes = 0

    def before(module, args, kwargs):
        running.append(row_of[id(module)])

    def after(module, args, kwargs, output):
        nonlocal output_bytes
        running.pop()
        row = row_of[id(module)]
        row.calls += 1
        if row.calls == 1:
            row.input_shape, row.output_shape = call_shape(args, kwargs), shape_of(output)
        if not any(True for _ in module.children()):
            output_bytes += tensor_bytes(output)

    handles = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(module.register_forward_hook(after, with_kwargs=True))
        with eval_mode(model), torch.no_grad():
            model(*inputs)
    except Exception as error:
        inner = running[-1] if running else None
        where = f" in {inner.name!r} ({inner.type})" if inner and inner.name else ""
        error.add_note(f"summary: the model failed{where} on input of shape "
                       f"{call_shape(inputs, {})}")
        if TOO_SMALL.search(str(error)):
            error.add_note("summary: the input is too small for the model; try a larger input_size")
        raise
    finally:
        for handle in handles:
            handle.remove()
    params = {id(p): p for p in model.parameters()}.values()
    return Summary(rows, call_shape(inputs, {}), tensor_bytes(inputs), output_bytes,
                   sum(tensor_bytes(p) for p in params),
                   sum(tensor_bytes(b) for b in model.buffers()), compiled=model is not original)
