"""Chapter: four ways to get intermediate outputs.

All four take ``(model, x, names)`` and return ``{name: tensor}`` in the order
the names were asked for:

- ``by_children``: run the top-level children in order yourself;
- ``by_layer_getter``: torchvision's ``IntermediateLayerGetter`` does the same;
- ``by_fx``: trace the model with torch.fx (``create_feature_extractor``) and
  return any node of the graph;
- ``by_hooks``: run the model as it is and record outputs with forward hooks.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from tutorials_pkg.measure import median_seconds_each, peak_memory_bytes

__all__ = [
    "EXTRACTORS", "NoisyGatedNet", "SignGate", "build_fx_extractor", "by_children", "by_fx",
    "by_hooks", "by_hooks_without_clone_or_removal", "by_layer_getter", "clone_graph_outputs",
    "extraction_costs", "format_cost_table", "plot_feature_maps",
]


def by_children(model: nn.Module, x: Tensor, names: Iterable[str]) -> dict[str, Tensor]:
    """Run the model's top-level children in order, keeping the outputs of ``names``.

    Flattens before an ``nn.Linear`` child, as resnet's ``forward`` does before
    ``fc``; anything else the model's ``forward`` does (a residual add, a
    functional pooling) is skipped, and nested names (``layer1.0.conv2``) are
    out of reach. Stops after the last requested child.
    """
    children = dict(model.named_children())
    names = [names] if isinstance(names, str) else list(names)
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
    """torchvision's ``IntermediateLayerGetter``: top-level children in order, up to the last name.

    It ignores the model's ``forward`` entirely (no flatten before ``fc``), and
    returns the tensors as they are when it finishes: one that a later child
    changed in place (resnet's ``bn1``, then ``relu(inplace=True)``) comes back changed.
    """
    children = [name for name, _ in model.named_children()]
    names = [names] if isinstance(names, str) else list(names)
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


def build_fx_extractor(model: nn.Module, names: Iterable[str], *, leaf_modules: Sequence[type] = (),
                       concrete_args: dict[str, Any] | None = None) -> torch.fx.GraphModule:
    """A module that computes only what ``names`` need and returns ``{name: tensor}``.

    Build it once and call it many times: tracing costs about as much as a
    forward pass of a small input. ``leaf_modules`` are traced as one call
    (their ``forward`` may branch on data); ``concrete_args`` fixes arguments of
    ``forward`` that steer control flow (``{"flag": False}``).
    """
    names = [names] if isinstance(names, str) else list(names)
    training = model.training
    try:
        extractor = create_feature_extractor(
            model, return_nodes=names, tracer_kwargs={"leaf_modules": list(leaf_modules)},
            suppress_diff_warning=True, concrete_args=concrete_args)
    except ValueError:
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
    """Trace the model with torch.fx and return the nodes ``names`` (see ``get_graph_node_names``).

    Reaches every module and every op (``layer1.0.add``, ``flatten``), runs
    only what they need, and fails on control flow that depends on the data.
    """
    names = [names] if isinstance(names, str) else list(names)
    outputs = build_fx_extractor(model, names, leaf_modules=leaf_modules, concrete_args=concrete_args)(x)
    return {name: outputs[name] for name in names}  # the graph returns them in its own order


def by_hooks(model: nn.Module, x: Tensor, names: Iterable[str]) -> dict[str, Tensor]:
    """Run the whole model and record the outputs of the modules ``names`` with forward hooks.

    Reaches every module (not functional ops such as ``torch.flatten`` or ``+``).
    A module called twice in ``forward`` (resnet's ``relu``) keeps its last output.
    Each output is cloned when it is made, so later in-place ops cannot change
    it, and the hooks are removed even when ``forward`` raises.
    """
    modules = {name: module for name, module in model.named_modules() if name}
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"by_hooks: unknown names {unknown}; it can reach: {', '.join(modules)}")
    outputs = {}

    def keep_output(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            outputs[name] = output.clone() if isinstance(output, Tensor) else output
        return hook

    handles = [modules[name].register_forward_hook(keep_output(name)) for name in dict.fromkeys(names)]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: outputs[name] for name in names}


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



def plot_feature_maps(image: Tensor, maps: dict[str, Tensor], columns: int = 8,
                      dpi: int = 50):
    """One figure: the input image, then each layer's channels as small images, a layer per row.

    ``image`` is one ``(1, H, W)`` input; each map is ``(C, H, W)`` for that image.
    """
    import matplotlib.pyplot as plt

    rows = 1 + sum(-(-len(m) // columns) for m in maps.values())
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 0.6, rows * 0.7), dpi=dpi,
                                squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(image[0].detach().cpu().numpy(), cmap="gray_r", interpolation="nearest")
    axes[0, 0].set_title("input", fontsize=8)
    row = 1
    for name, channels in maps.items():
        for index, channel in enumerate(channels.detach().cpu()):
            ax = axes[row + index // columns, index % columns]
            ax.imshow(channel.numpy(), cmap="viridis", interpolation="nearest")
        axes[row, 0].set_title(f"{name}: {len(channels)} channels", fontsize=8, loc="left")
        row += -(-len(channels) // columns)
    figure.tight_layout()
    return figure



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
