"""Chapter: model summaries.

``summary`` runs one forward pass with hooks and prints a table: each module
once, its shapes, its parameters, the modules called more than once marked.
"""

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["Summary", "SummaryRow", "eval_mode", "make_inputs", "shape_of", "summary",
           "summary_rows", "tensor_bytes"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode for the block, then give each its own mode back.

    Restoring module by module (not ``model.train()``) keeps a BatchNorm that
    you froze in eval mode inside a training model frozen.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def shape_of(value):
    """The shape of a tensor, or of each tensor in a tuple, list or dict; None for others."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (list, tuple)):
        shapes = [shape_of(item) for item in value]
        return shapes[0] if len(shapes) == 1 else shapes
    if isinstance(value, dict):
        return {key: shape_of(item) for key, item in value.items()}
    return None


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


def _megabytes(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


@dataclass
class Summary:
    """What ``summary`` found. ``str()`` is the printed table.

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

    @property
    def total_params(self) -> int:
        return sum(row.params for row in self.rows)

    @property
    def trainable_params(self) -> int:
        return sum(row.trainable_params for row in self.rows)

    @property
    def total_bytes(self) -> int:
        return self.input_bytes + self.output_bytes + self.param_bytes + self.buffer_bytes

    def __str__(self) -> str:
        header = ("Layer (type)", "Input shape", "Output shape", "Param #", "Notes")
        lines = []
        for row in self.rows:
            notes = [f"called {row.calls}x"] if row.reused else []
            notes += [f"also {alias}" for alias in row.aliases]
            notes += [f"{shared} (shared)" for shared in row.shared_params]
            if row.calls == 0:
                notes.append("not called")
            label = "  " * row.depth + (f"{row.name} ({row.type})" if row.name else row.type)
            lines.append((label, "--" if row.input_shape is None else str(row.input_shape),
                          "--" if row.output_shape is None else str(row.output_shape),
                          f"{row.params:,}" if row.params else "--", "; ".join(notes)))
        widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(5)]

        def fmt(cells):
            return "  ".join(cell.ljust(width) if i in (0, 4) else cell.rjust(width)
                             for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

        rule = "=" * len(fmt(header))
        return "\n".join([
            fmt(header), rule, *map(fmt, lines), rule,
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.total_params - self.trainable_params:,}",
            f"Input size: {_megabytes(self.input_bytes)}",
            f"Leaf-module outputs (forward): {_megabytes(self.output_bytes)}",
            f"Params + buffers size: {_megabytes(self.param_bytes + self.buffer_bytes)}",
            f"Estimated total size: {_megabytes(self.total_bytes)}",
        ])

    def __repr__(self) -> str:
        return str(self)


def _is_shape(value) -> bool:
    return isinstance(value, (tuple, list, torch.Size)) and all(isinstance(d, int) for d in value)


def make_inputs(model: nn.Module, input_size=None, input_data=None) -> tuple:
    """The positional arguments for ``model``: random ones of ``input_size`` or ``input_data``."""
    if (input_size is None) == (input_data is None):
        raise ValueError("pass exactly one of input_size (a shape with the batch dimension, "
                         "e.g. (1, 3, 224, 224)) or input_data (a tensor or a tuple of tensors)")
    if input_data is not None:
        inputs = (input_data,) if isinstance(input_data, torch.Tensor) else tuple(input_data)
        if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
            raise TypeError(f"input_data must be a tensor or a tuple of tensors, "
                            f"got {type(input_data).__name__}")
        return inputs
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


def summary(model: nn.Module, input_size=None, input_data=None) -> Summary:
    """Run one forward pass with hooks and tabulate every module once.

    Give exactly one of ``input_size`` (a shape with the batch dimension, or a
    list of shapes; random inputs on the model's device) or ``input_data``.
    The pass runs in eval mode under ``torch.no_grad()``: training modes and
    BatchNorm statistics are as they were afterwards, and the hooks are
    removed even when the forward pass fails.
    """
    inputs = make_inputs(model, input_size, input_data)
    rows = summary_rows(model)
    row_of = {id(module): row for (_, module), row in zip(model.named_modules(), rows)}
    running = []  # modules entered and not yet left: the innermost one is where an error is
    output_bytes = 0

    def before(module, args):
        running.append(row_of[id(module)])

    def after(module, args, output):
        nonlocal output_bytes
        running.pop()
        row = row_of[id(module)]
        row.calls += 1
        if row.calls == 1:
            row.input_shape, row.output_shape = shape_of(args), shape_of(output)
        if not any(True for _ in module.children()):
            output_bytes += tensor_bytes(output)

    handles = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        with eval_mode(model), torch.no_grad():
            model(*inputs)
    except RuntimeError as error:
        inner = running[-1] if running else None
        where = f" in {inner.name!r} ({inner.type})" if inner and inner.name else ""
        raise ValueError(f"the model failed{where} on input of shape {shape_of(inputs)}: {error}. "
                         "Is the input too small for the model, or of the wrong shape?") from error
    finally:
        for handle in handles:
            handle.remove()
    params = {id(p): p for p in model.parameters()}.values()
    return Summary(rows, shape_of(inputs), tensor_bytes(inputs), output_bytes,
                   sum(tensor_bytes(p) for p in params),
                   sum(tensor_bytes(b) for b in model.buffers()))
