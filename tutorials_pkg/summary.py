"""Chapter: model summaries.

``hooked_forward`` is the core the page shows: one forward pass with a hook on
every module, each module once, and each parameter counted in the first module
that owns it. ``summary`` calls it and takes the models readers bring: inputs
made from a shape or passed as they are (any arguments, keywords too), eval mode
and ``no_grad`` with each module's mode given back, lazy, compiled and
``DataParallel`` models; it refuses TorchScript, notes the layer an error came
from, tells unused weights from weights read without their module being called,
and prints the table.
"""

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tutorials_pkg.unwrap import map_tensors, tensors_in, unwrap_model

__all__ = ["Summary", "SummaryRow", "call_shape", "eval_mode", "hooked_forward",
           "make_inputs", "summary"]


def call_shape(args, kwargs=None):
    """A call's inputs with each tensor replaced by its shape: one argument's, or a list."""
    shown = [*args, kwargs] if kwargs else list(args)
    return map_tensors(lambda t: list(t.shape), shown[0] if len(shown) == 1 else shown)


def hooked_forward(model: nn.Module, *args, **kwargs) -> dict[nn.Module, dict]:
    """Run ``model(*args, **kwargs)`` once with a forward hook on every module.

    For each module: its first name, its calls, the shapes of its first call, and
    the parameters no earlier module owns (found after the call: lazy modules
    make theirs in it).
    """
    # named_modules() gives each module once; model.apply() visits it once per parent
    records = {module: {"name": name, "calls": 0, "input": None, "output": None}
               for name, module in model.named_modules()}

    def hook(module, args, kwargs, output):
        record = records[module]
        record["calls"] += 1
        if record["calls"] == 1:
            record["input"], record["output"] = call_shape(args, kwargs), call_shape([output])

    handles = [module.register_forward_hook(hook, with_kwargs=True) for module in records]
    try:
        model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    counted = set()  # a tied weight counts in the first module that has it
    for module, record in records.items():
        own = dict(module.named_parameters(recurse=False))
        record["params"] = {n: p for n, p in own.items() if id(p) not in counted}
        counted.update(id(p) for p in own.values())
    return records


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


class _ParameterReads(TorchDispatchMode):
    """Which parameters the operations of a forward pass read, by identity.

    A module can use a child's weight without calling the child: attention passes
    ``out_proj.weight`` to one fused function. Watching the operations, not the
    calls, sees that; it does not change which path the model takes.
    """

    def __init__(self, params):
        super().__init__()
        self.params, self.read = {id(p) for p in params}, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.read.update(id(t) for t in tensors_in((args, kwargs)) if id(t) in self.params)
        return func(*args, **(kwargs or {}))


@dataclass
class SummaryRow:
    """One module of a summary; ``params`` counts only parameters no earlier row counted."""

    name: str                  # first name it is registered under; "" for the model itself
    type: str
    depth: int
    params: int = 0
    trainable_params: int = 0
    unused_params: int = 0     # of ``params``, those no operation of the forward pass read
    calls: int = 0             # times forward called it
    input_shape: object = None   # shapes on its first call
    output_shape: object = None
    aliases: list[str] = field(default_factory=list)        # other names it is registered under
    shared_params: list[str] = field(default_factory=list)  # "weight = embed.weight"
    note: str = ""             # for a module not called: whether its weights were used

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
    def unused_params(self) -> int:
        """Parameters no operation of the forward pass read: dead weight for this input and mode."""
        return sum(row.unused_params for row in self.rows)

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
            notes += [row.note] if row.note else []
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
            f"Unused params (no operation read them): {self.unused_params:,}",
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
    return (isinstance(value, (tuple, list, torch.Size)) and len(value) > 0
            and all(isinstance(d, int) and d > 0 for d in value))


def make_inputs(model: nn.Module, input_size=None, input_data=None, input_kwargs=None):
    """``(args, kwargs)`` for ``model``: random tensors of ``input_size``, or ``input_data``
    (a tensor, or a tuple of positional arguments of any kind) and ``input_kwargs``."""
    if input_size is not None and input_data is not None:  # one of them would be ignored
        raise ValueError("pass input_size or input_data, not both")
    if input_size is None and input_data is None and input_kwargs is None:
        raise ValueError("pass input_size (a shape with the batch dimension, e.g. (1, 3, 224, "
                         "224)), input_data (the model's positional arguments) or input_kwargs")
    kwargs = dict(input_kwargs or {})
    if input_data is not None:
        if isinstance(input_data, torch.Tensor):
            return (input_data,), kwargs
        if isinstance(input_data, tuple):
            return input_data, kwargs
        # a list could be the arguments or one argument (a detection model's images)
        hint = "; pass keyword arguments as input_kwargs" if isinstance(input_data, dict) else ""
        raise TypeError(f"input_data takes a tensor, or a tuple of the model's positional "
                        f"arguments; got a {type(input_data).__name__}: to pass it as the "
                        f"model's one argument, wrap it in a tuple, input_data=(x,){hint}")
    if input_size is None:
        return (), kwargs
    sizes = [input_size] if _is_shape(input_size) else input_size
    if not isinstance(sizes, (list, tuple)) or not sizes or not all(map(_is_shape, sizes)):
        raise ValueError(f"input_size must be a shape of positive sizes with the batch dimension, "
                         f"e.g. (1, 3, 224, 224), or a list of shapes; got {input_size!r}")
    first = next(model.parameters(), None)  # lazy parameters have a device and dtype, too
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    return tuple(torch.randn(*size, device=device, dtype=dtype) for size in sizes), kwargs


def _failed_in(error: BaseException, names: dict) -> str:
    """Where ``error`` was raised: `` in 'name' (Type)`` for the innermost of the model's
    modules running then (read from the traceback), or "" for the model itself."""
    where, frame = None, error.__traceback__
    while frame is not None:
        module = frame.tb_frame.f_locals.get("self")
        if isinstance(module, nn.Module) and module in names:
            where = module
        frame = frame.tb_next
    if where is None or not names[where]:
        return ""
    return f" in {names[where]!r} ({type(where).__name__})"


def _not_called_note(module: nn.Module, read: set) -> str:
    """Whether the weights of a module that was not called were used all the same."""
    params = list(module.parameters())
    unused = sum(p.numel() for p in params if id(p) not in read)
    total = sum(p.numel() for p in params)
    if not params:
        return "not called"
    if unused == 0:
        return "not called, weights used"  # by its parent, or through another name
    if unused == total:
        return "not called, weights unused"
    return f"not called, {unused:,} of {total:,} params unused"


def summary(model: nn.Module, input_size=None, input_data=None, input_kwargs=None) -> Summary:
    """Run one forward pass with hooks and tabulate every module once.

    ``input_kwargs``: keyword arguments for the forward pass (with either input, or alone).
    An error in the forward pass comes back as it was raised, with a note that
    names the innermost module it happened in and the input shape.
    """
    original, model = model, unwrap_model(model)
    scripted = [name for name, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
    if scripted:  # hooks cannot be registered on TorchScript modules
        what = f"submodule {scripted[0]!r} is" if scripted[0] else "the model is"
        raise TypeError(f"{what} TorchScript (torch.jit.script or torch.jit.trace), which takes "
                        "no forward hooks: summarise the nn.Module before scripting or tracing it")
    args, kwargs = make_inputs(model, input_size, input_data, input_kwargs)
    names = {module: name for name, module in model.named_modules()}
    leaves = [m for m in names if next(m.children(), None) is None]
    output_bytes = 0

    def count_output(module, args, output):
        nonlocal output_bytes
        output_bytes += sum(t.nbytes for t in tensors_in(output))

    handles = [leaf.register_forward_hook(count_output) for leaf in leaves]
    reads = _ParameterReads(model.parameters())
    try:  # force_eager: compiled submodules run their Python, so the hooks fire inside them
        with eval_mode(model), torch.no_grad(), torch.compiler.set_stance("force_eager"), reads:
            records = hooked_forward(model, *args, **kwargs)
    except Exception as error:
        error.add_note(f"summary: the model failed{_failed_in(error, names)} on input of shape "
                       f"{call_shape(args, kwargs)}")
        raise
    finally:
        for handle in handles:
            handle.remove()

    aliases = defaultdict(list)
    for name, module in model.named_modules(remove_duplicate=False):
        aliases[module].append(name)
    counted_as = {}  # id(parameter) -> the name it was counted under
    rows = []
    for module, record in records.items():
        name = record["name"]
        row = SummaryRow(name, type(module).__name__, name.count(".") + 1 if name else 0,
                         calls=record["calls"], input_shape=record["input"],
                         output_shape=record["output"], aliases=aliases[module][1:])
        for param_name, param in module.named_parameters(recurse=False):
            if param_name not in record["params"]:  # tied: counted in an earlier row
                row.shared_params.append(f"{param_name} = {counted_as[id(param)]}")
                continue
            counted_as[id(param)] = f"{name}.{param_name}" if name else param_name
            row.params += param.numel()
            row.trainable_params += param.numel() if param.requires_grad else 0
            row.unused_params += param.numel() if id(param) not in reads.read else 0
        if row.calls == 0:
            row.note = _not_called_note(module, reads.read)
        rows.append(row)
    params = {id(p): p for p in model.parameters()}.values()
    input_bytes = sum(t.nbytes for t in tensors_in((args, kwargs)))
    return Summary(rows, call_shape(args, kwargs), input_bytes, output_bytes,
                   sum(p.nbytes for p in params), sum(b.nbytes for b in model.buffers()),
                   compiled=_compiled(original))


def _compiled(model: nn.Module) -> bool:
    """Whether ``model`` is torch.compile's wrapper, possibly inside DataParallel / DDP."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return isinstance(getattr(model, "_orig_mod", None), nn.Module)
