"""Chapter: four ways to get intermediate outputs, and the inputs and gradients of layers.

The four ways take ``(model, x, names)`` and return ``{name: tensor}`` in the order
the names were asked for:

- ``by_children``: run the top-level children in order yourself;
- ``by_layer_getter``: torchvision's ``IntermediateLayerGetter`` does the same;
- ``by_fx``: trace the model with torch.fx (``create_feature_extractor``) and
  return any node of the graph;
- ``by_hooks``: run the model as it is and record outputs with forward hooks.

``by_pre_hooks`` records the inputs of modules, ``grads_by_hooks`` the gradients
with respect to their outputs. A ``torch.compile``'d model is run as its original
module (``_orig_mod``), under the original module's names.
"""

import inspect
import io
import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx.proxy import TraceError
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from tutorials_pkg.measure import median_seconds_each, peak_memory_bytes

__all__ = [
    "EXTRACTORS", "KeywordAttentionNet", "NoisyGatedNet", "SignGate", "build_fx_extractor",
    "by_children", "by_fx", "by_hooks",
    "by_hooks_without_clone_or_removal", "by_layer_getter", "by_pre_hooks", "clone_graph_outputs",
    "extraction_costs", "format_cost_table", "grads_by_hooks", "plot_feature_maps", "svg_figure",
]


def _uncompiled(model: nn.Module) -> nn.Module:
    """The module to run: a ``torch.compile``'d model's original (hooks in compiled code never fire)."""
    original = getattr(model, "_orig_mod", None)
    return original if isinstance(original, nn.Module) else model


def _name_list(names: Iterable[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)  # one name may be a string


def _modules_named(model: nn.Module, names: list[str], method: str) -> dict[str, nn.Module]:
    """The modules ``names``, or a ValueError listing the names there are.

    Modules inside a nested ``torch.compile``'d part are not listed: their hooks never fire.
    """
    modules = {name: module for name, module in model.named_modules()
               if name and "_orig_mod" not in name.split(".")}
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"{method}: unknown names {unknown}; it can reach: {', '.join(modules)}")
    return {name: modules[name] for name in names}


_NEVER_CALLED = ("forward never called them for this input (a module kept only as an attribute, "
                 "one behind a branch such as `if self.training:`, or one whose other methods "
                 "forward calls instead of the module itself)")


def _check_recorded(method: str, names: list[str], recorded: dict, what: str, why: str) -> None:
    missing = [name for name in dict.fromkeys(names) if name not in recorded]
    if missing:
        raise ValueError(f"{method}: no {what} recorded for {missing}: {why}")


def _copy(value: Any) -> Any:
    """``value`` with every tensor in it cloned: a tensor, or a dict, list or tuple of them."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, dict):
        return type(value)((key, _copy(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        items = [_copy(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def _run_then_remove(model: nn.Module, x: Any, handles: list) -> None:
    """Call ``model`` on ``x`` (a tuple: its positional arguments); remove the hooks even if it raises."""
    try:
        model(*x) if isinstance(x, tuple) else model(x)
    finally:
        for handle in handles:
            handle.remove()


def _running_module(model: nn.Module, error: BaseException) -> tuple[str, nn.Module, str] | None:
    """The deepest module of ``model`` whose code raised ``error``: ``(name, module, function)``."""
    names = {id(module): name for name, module in model.named_modules()}
    found = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        module = frame.f_locals.get("self")
        if isinstance(module, nn.Module) and id(module) in names:
            found = (names[id(module)], module, frame.f_code.co_name)
    return found


def by_children(model: nn.Module, x: Tensor, names: Iterable[str]) -> dict[str, Tensor]:
    """Run the model's top-level children in order, keeping the outputs of ``names``."""
    model, names = _uncompiled(model), _name_list(names)
    children = dict(model.named_children())
    unknown = [name for name in names if name not in children]
    if unknown:
        raise ValueError(f"by_children: unknown names {unknown}; it can reach: {', '.join(children)}")
    last = max((list(children).index(name) for name in names), default=-1)
    outputs = {}
    for index, (name, child) in enumerate(list(children.items())[:last + 1]):
        if isinstance(child, nn.Linear) and x.dim() > 2:
            x = torch.flatten(x, 1)
        x = child(x)
        if name in names:
            # a later child may change x in place (resnet's ReLU after bn1): keep a copy
            outputs[name] = x if index == last else x.clone()
    return {name: outputs[name] for name in names}


def by_layer_getter(model: nn.Module, x: Tensor, names: Iterable[str]) -> dict[str, Tensor]:
    """torchvision's ``IntermediateLayerGetter``: top-level children in order, up to the last name."""
    model, names = _uncompiled(model), _name_list(names)
    children = [name for name, _ in model.named_children()]
    unknown = [name for name in names if name not in children]
    if unknown:
        raise ValueError(f"by_layer_getter: unknown names {unknown}; it can reach: {', '.join(children)}")
    getter = IntermediateLayerGetter(model, return_layers={name: name for name in names})
    outputs = getter(x)
    return {name: outputs[name] for name in names}


def clone_graph_outputs(extractor: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Copy each output that a later op also reads, where it is made: an in-place op could change it."""
    graph = extractor.graph
    output = next(node for node in graph.nodes if node.op == "output")
    returned = dict(output.args[0])
    for key, node in returned.items():
        if len(node.users) > 1:  # read by a later op, not only returned
            with graph.inserting_after(node):
                returned[key] = graph.call_function(torch.clone, (node,))
    output.args = (returned,)
    extractor.recompile()
    return extractor


def _cannot_trace(model: nn.Module, stopped: tuple[str, nn.Module, str], error: Exception) -> str:
    """by_fx's message when torch.fx cannot trace ``model``: where it stopped, what works instead."""
    name, module, function = stopped
    where = f"{type(module).__name__}.{function}"
    if name:
        where = (f"'{name}' ({where}); leaf_modules=[{type(module).__name__}] records that module "
                 "as one call, without looking inside")
    else:
        where += ", the model's own code"
    return (f"by_fx: torch.fx cannot trace {type(model).__name__}: tracing stopped in {where}. "
            "by_hooks(model, x, names) runs forward as it is, with no tracing.\n"
            f"FX's message: {type(error).__name__}: {error}")


def build_fx_extractor(model: nn.Module, names: Iterable[str], *, leaf_modules: Sequence[type] = (),
                       concrete_args: dict[str, Any] | None = None) -> torch.fx.GraphModule:
    """A module that computes only what ``names`` need and returns ``{name: tensor}``.

    ``leaf_modules`` are traced as one call (their ``forward`` may branch on data);
    ``concrete_args`` fixes arguments of ``forward`` that steer control flow
    (``{"flag": False}``).
    """
    model, names = _uncompiled(model), _name_list(names)
    training = model.training
    try:
        extractor = create_feature_extractor(
            model, return_nodes=names, tracer_kwargs={"leaf_modules": list(leaf_modules)},
            suppress_diff_warning=True, concrete_args=concrete_args)
    except Exception as error:
        stopped = _running_module(model, error)
        if stopped is not None:  # raised in the model's own code while tracing
            raise TraceError(_cannot_trace(model, stopped, error)) from error
        if not isinstance(error, ValueError):
            raise
        # a name is not a node: list the nodes of the caller's mode
        train_nodes, eval_nodes = get_graph_node_names(
            model, tracer_kwargs={"leaf_modules": list(leaf_modules)},
            suppress_diff_warning=True, concrete_args=concrete_args)
        nodes = train_nodes if training else eval_nodes
        # a prefix of nodes is a name too ("layer1": the last node in layer1)
        prefixes = {".".join(n.split(".")[:i]) for n in nodes for i in range(1, n.count(".") + 1)}
        unknown = [name for name in names if name not in nodes and name not in prefixes]
        if unknown:
            raise ValueError(f"by_fx: unknown names {unknown}; it can reach: {', '.join(nodes)}") from None
        raise  # in this mode's graph, not in the other: torchvision's message says so
    finally:
        model.train(training)  # create_feature_extractor leaves the mode it failed in
    return clone_graph_outputs(extractor)


def by_fx(model: nn.Module, x: Tensor, names: Iterable[str], *, leaf_modules: Sequence[type] = (),
          concrete_args: dict[str, Any] | None = None) -> dict[str, Tensor]:
    """Trace the model with torch.fx and return the nodes ``names`` (see ``get_graph_node_names``)."""
    names = _name_list(names)
    extractor = build_fx_extractor(model, names, leaf_modules=leaf_modules, concrete_args=concrete_args)
    outputs = extractor(*x) if isinstance(x, tuple) else extractor(x)  # a tuple: the arguments
    return {name: outputs[name] for name in names}  # the graph returns them in its own order


def by_hooks(model: nn.Module, x: Any, names: Iterable[str]) -> dict[str, Any]:
    """Run the whole model and record the outputs of the modules ``names`` with forward hooks.

    ``x`` is the model's argument (a tensor; a detector's list of images), or a
    tuple of its positional arguments. A module called twice in ``forward``
    keeps its last output.
    """
    model, names = _uncompiled(model), _name_list(names)
    modules = _modules_named(model, names, "by_hooks")
    outputs = {}

    def keep_output(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            outputs[name] = _copy(output)  # a copy: later in-place ops cannot change it
        return hook

    handles = [module.register_forward_hook(keep_output(name)) for name, module in modules.items()]
    _run_then_remove(model, x, handles)
    _check_recorded("by_hooks", names, outputs, "output", _NEVER_CALLED)
    return {name: outputs[name] for name in names}


def by_pre_hooks(model: nn.Module, x: Any, names: Iterable[str]) -> dict[str, Any]:
    """Run the whole model and record the first input of the modules ``names`` with forward pre-hooks.

    ``x`` as for ``by_hooks``. A module called twice in ``forward`` keeps its last input.
    """
    model, names = _uncompiled(model), _name_list(names)
    modules = _modules_named(model, names, "by_pre_hooks")
    inputs = {}

    def keep_input(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if args:
                inputs[name] = _copy(args[0])
            else:  # called with keyword arguments only: take forward's first parameter
                first = next(iter(inspect.signature(module.forward).parameters))
                inputs[name] = _copy(kwargs[first])
        return hook

    handles = [module.register_forward_pre_hook(keep_input(name), with_kwargs=True)
               for name, module in modules.items()]
    _run_then_remove(model, x, handles)
    _check_recorded("by_pre_hooks", names, inputs, "input", _NEVER_CALLED)
    return {name: inputs[name] for name in names}


def grads_by_hooks(model: nn.Module, x: Tensor, names: Iterable[str],
                   loss_fn: Callable[[Any], Tensor]) -> dict[str, Tensor]:
    """The gradient of ``loss_fn(model(x))`` with respect to the output of each module ``names``.

    A module called twice in ``forward`` gives the gradient for its last call.
    """
    model, names = _uncompiled(model), _name_list(names)
    modules = _modules_named(model, names, "grads_by_hooks")
    if not (isinstance(x, Tensor) and x.is_floating_point()):
        raise TypeError(f"grads_by_hooks: x must be a floating-point tensor, got "
                        f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    grads = {}

    def keep_grad(name: str) -> Callable:
        def hook(module: nn.Module, grad_input: tuple, grad_output: tuple) -> None:
            grads.setdefault(name, grad_output[0])  # backward meets the last call first
        return hook

    # Differentiate with respect to a copy of x: autograd.grad fills no parameter's .grad.
    leaf = x.detach().requires_grad_()
    handles = [module.register_full_backward_hook(keep_grad(name)) for name, module in modules.items()]
    try:
        loss = loss_fn(model(leaf.clone()))  # forward may change its input in place
        torch.autograd.grad(loss, leaf, allow_unused=True)
    except RuntimeError as error:
        if "BackwardHookFunction" not in str(error):
            raise
        name, module, _ = _running_module(model, error) or ("", model, "")
        raise RuntimeError(
            f"grads_by_hooks: {f'{name!r} ({type(module).__name__})' if name else 'forward'} changed "
            f"the input or output of a module among {list(modules)} in place, which "
            "register_full_backward_hook cannot follow. Ask for a module whose output nothing "
            "changes in place (resnet: the block 'layer1.0', not 'layer1.0.bn1' before an "
            "in-place ReLU), or hook the tensor itself with Tensor.register_hook") from error
    finally:
        for handle in handles:
            handle.remove()
    _check_recorded("grads_by_hooks", names, grads, "gradient", "forward never called them, or "
                    "their output does not reach the loss or is not a tensor")
    return {name: grads[name] for name in names}


EXTRACTORS = {
    "by_children": by_children,
    "by_layer_getter": by_layer_getter,
    "by_fx": by_fx,
    "by_hooks": by_hooks,
}


class SignGate(nn.Module):
    """Flips the sign when the mean is negative: control flow that depends on the data."""

    def forward(self, x: Tensor) -> Tensor:
        if x.mean() < 0:  # FX cannot trace this: the answer is only known at run time
            return -x
        return x


class NoisyGatedNet(nn.Module):
    """A small net FX finds hard: a data-dependent gate, and noise added in training only."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.gate = SignGate()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.gate(self.conv(x))
        if self.training:  # a Python bool: FX follows it, so train and eval graphs differ
            x = x + 0.1 * torch.randn_like(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class KeywordAttentionNet(nn.Module):
    """Self-attention over tokens, its layer called with keyword arguments only."""

    def __init__(self, dim: int = 16, num_heads: int = 2, num_classes: int = 10):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        mixed, _ = self.attn(query=tokens, key=tokens, value=tokens, need_weights=False)
        return self.fc(mixed.mean(dim=1))


def plot_feature_maps(image: Tensor, maps: dict[str, Tensor], columns: int = 8,
                      width_px: int = 760):
    """One figure ``width_px`` CSS pixels wide: the input image, then each layer's channels.

    ``image`` is one ``(1, H, W)`` input; each map is ``(C, H, W)`` for that image.
    """
    import matplotlib.pyplot as plt

    rows = 1 + sum(-(-len(m) // columns) for m in maps.values())
    width = width_px / 96  # inches: CSS has 96 px to the inch
    figure, axes = plt.subplots(rows, columns, figsize=(width, rows * width / columns * 1.2),
                                squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(image[0].detach().cpu().numpy(), cmap="gray_r", interpolation="none")
    axes[0, 0].set_title("x", fontsize=11, loc="left")  # labels in no language: code names, sizes
    row = 1
    for name, channels in maps.items():
        for index, channel in enumerate(channels.detach().cpu()):
            ax = axes[row + index // columns, index % columns]
            ax.imshow(channel.numpy(), cmap="viridis", interpolation="none")
        height, width_maps = channels.shape[1:]
        axes[row, 0].set_title(f"{name}: {len(channels)} × {height}×{width_maps}", fontsize=11,
                               loc="left")
        row += -(-len(channels) // columns)
    figure.tight_layout()
    return figure


def svg_figure(figure, labelled_by: str):
    """A matplotlib figure as inline SVG for a page, named by the element with id ``labelled_by``.

    SVG stays sharp at any zoom; the text stays text. Closes the figure.
    """
    import matplotlib.pyplot as plt
    from IPython.display import HTML

    buffer = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": labelled_by}):  # same ids each run
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(figure)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # no XML prolog inside an HTML page
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
    this = f'svg[aria-labelledby="{labelled_by}"]'
    svg = svg.replace("*{", f"{this} *{{", 1)  # its style sheet would apply to the whole page
    return HTML(svg.replace("<svg ", f'<svg role="img" aria-labelledby="{labelled_by}" '
                            'style="max-width: 100%; height: auto" ', 1))


def extraction_costs(model: nn.Module, x: Tensor, requests: Sequence[str] = ("layer2", "layer4"),
                     methods: dict[str, Callable] | None = None, repeats: int = 3) -> list[dict]:
    """Time and peak memory of each method for each request, and of a plain forward pass.

    Runs under ``torch.no_grad()`` (inference: no activations kept for backward).
    Each row: ``method``, ``request`` (``"-"`` for the forward pass), ``seconds``
    (median of ``repeats``, all jobs timed in turns) and ``peak_bytes``.
    """
    methods = EXTRACTORS if methods is None else methods
    jobs = [("forward", "-", lambda: model(x))]
    for request in requests:
        for method, fn in methods.items():
            jobs.append((method, request, lambda fn=fn, request=request: fn(model, x, [request])))
    with torch.no_grad():
        seconds = median_seconds_each([job for _, _, job in jobs], repeats, x.device)
        return [{"method": method, "request": request, "seconds": time_taken,
                 "peak_bytes": peak_memory_bytes(job, x.device)}
                for (method, request, job), time_taken in zip(jobs, seconds)]


def format_cost_table(rows: list[dict], baseline: str = "forward") -> str:
    """A text table of ``extraction_costs`` rows, with time and memory relative to ``baseline``.

    The baseline is the row of method ``baseline`` for the same request, or else
    the plain forward pass.
    """
    by_key = {(row["method"], row["request"]): row for row in rows}
    width = max(len("method"), *(len(row["method"]) for row in rows))
    lines = [f"{'method':<{width}} {'request':<8} {'time ms':>9} {'x ' + baseline:>10} "
             f"{'peak MiB':>9} {'x ' + baseline:>10}"]
    for row in rows:
        base = by_key.get((baseline, row["request"])) or by_key[("forward", "-")]
        lines.append(f"{row['method']:<{width}} {row['request']:<8} {row['seconds'] * 1e3:>9.1f} "
                     f"{row['seconds'] / base['seconds']:>10.2f} {row['peak_bytes'] / 2**20:>9.1f} "
                     f"{row['peak_bytes'] / max(base['peak_bytes'], 1):>10.2f}")
    return "\n".join(lines)


# --- Wrong: the hook most people write first ---------------------------------------------

def by_hooks_without_clone_or_removal(model: nn.Module, x: Tensor,
                                      names: Iterable[str]) -> dict[str, Tensor]:
    """Wrong: no ``clone()`` and no ``remove()``; use ``by_hooks``.

    It stores each output without ``clone()`` (a later in-place op changes what
    it returns) and never removes its hooks (each call adds more, and they keep
    every output they see alive).
    """
    modules = dict(model.named_modules())
    outputs = {}
    for name in names:
        modules[name].register_forward_hook(
            lambda module, args, output, name=name: outputs.__setitem__(name, output))
    model(x)
    return outputs

