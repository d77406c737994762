"""Chapter: tracing a model's structure through ``grad_fn``.

``grad_fn_modules`` maps the autograd node behind each layer's output to that
layer (``trace_grad_fn`` keeps the whole trace); walking ``next_functions``
from node to node then gives the model's graph (``module_graph``) and the
layers whose channels a residual add ties together
(``coupled_channel_groups``): the groups structured pruning must cut as one
(``prune_channel_group``).
"""

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from tutorials_pkg.summary import eval_mode, input_problem, uncompiled

__all__ = [
    "GRAD_FN_TYPES", "ChannelGroup", "MermaidDiagram", "ModuleGraph", "SavedTensors", "Trace",
    "check_autograd_is_on", "coupled_channel_groups", "grad_fn_modules",
    "grad_fn_modules_keeping_only_the_last_hook", "grad_fn_modules_without_checks",
    "keep_input_channels", "keep_output_channels", "module_graph", "nodes_in_order",
    "prune_channel_group", "trace_grad_fn",
]

GRAD_FN_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.PReLU)


def check_autograd_is_on() -> None:
    """Raise a RuntimeError that says what to do when autograd records nothing."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("tracing grad_fn needs autograd to record the graph, but "
                           "torch.inference_mode() is on and nothing gets a grad_fn inside it; "
                           "call it outside inference_mode (enable_grad does not undo it)")
    if not torch.is_grad_enabled():
        raise RuntimeError("tracing grad_fn needs autograd to record the graph, but gradients are "
                           "off (torch.no_grad() or set_grad_enabled(False)), so every grad_fn "
                           "would be None; call it outside no_grad or inside torch.enable_grad()")


@contextmanager
def grad_enabled_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Make every parameter require grad for the block, then give each its own flag back."""
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        for param, _ in flags:
            param.requires_grad_(True)
        yield model
    finally:
        for param, requires_grad in flags:
            param.requires_grad_(requires_grad)


def tensors_in(value) -> list[torch.Tensor]:
    """The tensors in ``value``: a tensor, or lists, tuples and dicts of them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
    return []


def map_tensors(fn, value):
    """``value`` with ``fn`` applied to each tensor in it, lists, tuples and dicts kept."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(fn, item) for item in value)
    if isinstance(value, dict):
        return type(value)((key, map_tensors(fn, item)) for key, item in value.items())
    return value


def type_tuple(types) -> tuple:
    """``types`` (one module class, or a list, tuple or set of them) as a tuple for isinstance."""
    found = (types,) if isinstance(types, type) else (
        tuple(types) if isinstance(types, (list, tuple, set, frozenset)) else None)
    if not found or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in found):
        raise TypeError("types must be a module class or a list or tuple of them, "
                        f"e.g. (nn.Conv2d, nn.Linear); got {types!r}")
    return found


@dataclass
class Trace:
    """One traced forward pass: the layer behind each node, and where the graph starts and ends."""

    nodes: dict                   # grad_fn node -> the module whose output it is
    names: dict[nn.Module, str]   # module -> its name in the model
    output: object                # the model's output
    input: object                 # the leaves the model's input was copied from, as x was given


def trace_grad_fn(model: nn.Module, x, types=GRAD_FN_TYPES) -> Trace:
    """Run ``model`` on a copy of ``x``; map the output node of each ``types`` layer to the layer.

    Each floating-point tensor of ``x`` is copied to a leaf that requires grad
    (``Trace.input``, where the walk ends); the model gets a copy of that leaf.
    """
    check_autograd_is_on()
    model = uncompiled(model)
    types = type_tuple(types)
    args = x if isinstance(x, tuple) else (x,)
    problem = input_problem(args) if args else "got an empty tuple"
    if problem is not None:
        raise TypeError("x must be what the model takes: a tensor, a list or dict of tensors "
                        "(one argument, e.g. a detection model's list of images), or a tuple of "
                        f"positional arguments; {problem}")
    names = {module: name for name, module in model.named_modules()}
    nodes, collisions = {}, []

    def record(module, args, output):
        for tensor in tensors_in(output):
            node = tensor.grad_fn
            if node is None:
                continue
            if node in nodes and nodes[node] is not module:
                collisions.append((nodes[node], module, node))
            else:
                nodes[node] = module

    leaves = map_tensors(lambda t: t.detach().clone().requires_grad_(t.is_floating_point()), args)
    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, types)]
    try:
        with eval_mode(model), grad_enabled_parameters(model):
            output = model(*map_tensors(torch.Tensor.clone, leaves))
    finally:
        for handle in handles:
            handle.remove()
    if collisions:
        first, second, node = collisions[0]
        raise ValueError(
            f"{names[second]!r} ({type(second).__name__}) returned a tensor whose grad_fn "
            f"{node.name()} already belongs to {names[first]!r} ({type(first).__name__}): "
            "it passed its input through unchanged, as nn.Identity does, so grad_fn cannot tell "
            f"the two apart; leave {type(second).__name__} out of types")
    return Trace(nodes, names, output, leaves if isinstance(x, tuple) else leaves[0])


def grad_fn_modules(model: nn.Module, x, types=GRAD_FN_TYPES) -> dict:
    """Map the autograd node (``grad_fn``) of each output of a ``types`` layer to that layer.

    The nodes hold the graph, and the activations it saved for backward,
    until the dict is released.
    """
    return trace_grad_fn(model, x, types).nodes


class _Box:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class SavedTensors:
    """What autograd saves for backward in ``with SavedTensors() as saved:``, and what stays held.

    Each saved tensor goes into a small box; a weak reference to the box says
    whether a graph still holds it.
    """

    def __init__(self):
        self._saved = []  # (weak reference to the box, bytes, an activation: made by autograd)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> _Box:
        box = _Box(tensor.detach())
        self._saved.append((weakref.ref(box), tensor.numel() * tensor.element_size(),
                            tensor.grad_fn is not None))
        return box

    @staticmethod
    def _unpack(box: _Box) -> torch.Tensor:
        return box.tensor

    def __enter__(self) -> "SavedTensors":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._hooks.__exit__(*exc_info)

    def kept_bytes(self, activations_only: bool = True) -> int:
        """Bytes of saved tensors a graph still holds (activations: not parameters or inputs)."""
        return sum(size for ref, size, activation in self._saved
                   if ref() is not None and (activation or not activations_only))


def node_inputs(node) -> list:
    """The nodes ``node`` takes its inputs from (``None`` edges, inputs needing no grad, left out)."""
    return [parent for parent, _ in node.next_functions if parent is not None]


def is_leaf_node(node) -> bool:
    """An ``AccumulateGrad`` node: a leaf tensor (a parameter, or the traced input)."""
    return hasattr(node, "variable")


def nodes_in_order(roots) -> list:
    """Every node reachable from ``roots``, each one after all of its inputs."""
    order, seen = [], set()
    stack = [(root, False) for root in roots]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
        elif node not in seen:
            seen.add(node)
            stack.append((node, True))
            stack.extend((parent, False) for parent in node_inputs(node) if parent not in seen)
    return order


def output_nodes(output) -> list:
    """The ``grad_fn`` of each tensor in a model's output (tensors, lists, tuples, dicts)."""
    return list(dict.fromkeys(t.grad_fn for t in tensors_in(output) if t.grad_fn is not None))


class MermaidDiagram:
    """Mermaid source that Jupyter, and this site, draw as a diagram."""

    def __init__(self, source: str):
        self.source = source

    def __repr__(self) -> str:
        return self.source

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"text/vnd.mermaid": self.source, "text/plain": self.source}


@dataclass
class ModuleGraph:
    """Layers and the operations that merge branches, with edges from input to output."""

    nodes: dict[str, str]          # name -> label: the layer's type, or "+" for an add
    edges: list[tuple[str, str]]   # (from, to)

    def mermaid(self, direction: str = "TD") -> MermaidDiagram:
        ids = {name: f"n{i}" for i, name in enumerate(self.nodes)}
        lines = [f"flowchart {direction}"]
        for name, label in self.nodes.items():
            if name in ("input", "output"):
                lines.append(f'    {ids[name]}(["{name}"])')
            elif label in ("+", "*", "cat"):
                lines.append(f'    {ids[name]}(("{label}"))')
            else:
                lines.append(f'    {ids[name]}["{name}: {label}"]')
        lines += [f"    {ids[a]} --> {ids[b]}" for a, b in self.edges]
        return MermaidDiagram("\n".join(lines))


MERGE_LABELS = {"AddBackward0": "+", "MulBackward0": "*", "CatBackward0": "cat"}


def module_graph(trace: Trace) -> ModuleGraph:
    """The graph of the traced layers, found by walking ``next_functions`` back from the output.

    Autograd nodes that are no traced layer are walked through, except the
    ones that merge two branches (add, multiply, concatenate), which stay in
    the graph as nodes: they are where a residual connection joins.
    """
    order = nodes_in_order(output_nodes(trace.output))
    inputs = {id(t) for t in tensors_in(trace.input)}
    graph = ModuleGraph({"input": "input"}, [])
    kept = {}  # node -> the graph names its value comes from
    merges = 0
    for node in order:
        if is_leaf_node(node):
            kept[node] = ["input"] if id(node.variable) in inputs else []
            continue
        sources = list(dict.fromkeys(s for parent in node_inputs(node) for s in kept[parent]))
        label = MERGE_LABELS.get(node.name())
        if node in trace.nodes:
            module = trace.nodes[node]
            name = trace.names[module]
            graph.nodes[name] = type(module).__name__
        elif label is not None and len(sources) > 1:
            merges += 1
            name = f"{label}{merges}"
            graph.nodes[name] = label
        else:
            kept[node] = sources  # walked through
            continue
        graph.edges += [(source, name) for source in sources if (source, name) not in graph.edges]
        kept[node] = [name]
    graph.nodes["output"] = "output"
    for node in output_nodes(trace.output):
        graph.edges += [(source, "output") for source in kept[node]]
    return graph



# --- pruning: channels that must be cut together ------------------------------------------

@dataclass
class ChannelGroup:
    """Channels that must be pruned together.

    ``layers`` make or carry these channels (a conv's output channels, the
    BatchNorm on them, everything a residual add joins to them);
    ``consumers`` read them as their input channels.
    """

    layers: list[str]
    consumers: list[str]


def makes_new_channels(module: nn.Module) -> bool:
    """A conv or linear layer makes new channels; BatchNorm, PReLU, a depthwise conv keep them."""
    if isinstance(module, nn.Conv2d):
        return not (module.groups == module.in_channels == module.out_channels)
    return isinstance(module, nn.Linear)


def coupled_channel_groups(trace: Trace) -> list[ChannelGroup]:
    """Group the traced layers whose output channels are tied, from the autograd graph.

    Walking from the input to the output: a conv or linear layer starts new
    channels; an element-wise operation (add, activation, pooling, BatchNorm,
    a depthwise conv) joins the channels of all its inputs into one group; a
    concatenation starts new channels (it places channel ranges side by side).
    A simple rule for conv nets: attention's matrix products are not handled.
    """
    parent = []  # union-find over channel spaces

    def find(space):
        while parent[space] != space:
            parent[space] = parent[parent[space]]
            space = parent[space]
        return space

    def new_space():
        parent.append(len(parent))
        return len(parent) - 1

    space_of, layers, consumers = {}, [], []  # layers / consumers: (space, name)
    for node in nodes_in_order(output_nodes(trace.output)):
        inputs = [space_of[p] for p in node_inputs(node) if not is_leaf_node(p)]
        module = trace.nodes.get(node)
        if module is not None and makes_new_channels(module):
            space = new_space()
            consumers += [(s, trace.names[module]) for s in inputs]
        elif not inputs or node.name() == "CatBackward0":
            space = new_space()
        else:
            space = find(inputs[0])
            for other in inputs[1:]:
                parent[find(other)] = space
        if module is not None:
            layers.append((space, trace.names[module]))
        space_of[node] = space

    first_space = {}  # a layer called twice writes the same channels both times
    for space, name in layers:
        parent[find(space)] = find(first_space.setdefault(name, space))

    groups = {}
    for space, name in layers:
        groups.setdefault(find(space), ChannelGroup([], []))
        if name not in groups[find(space)].layers:
            groups[find(space)].layers.append(name)
    for space, name in consumers:
        if find(space) in groups and name not in groups[find(space)].consumers:
            groups[find(space)].consumers.append(name)
    order = {name: i for i, name in enumerate(trace.names.values())}
    for group in groups.values():
        group.layers.sort(key=order.get)
        group.consumers.sort(key=order.get)
    return sorted(groups.values(), key=lambda group: order[group.layers[0]])


def kept_parameter(param: nn.Parameter, dim: int, keep: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(param.detach().index_select(dim, keep), requires_grad=param.requires_grad)


def keep_output_channels(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep only output channels ``keep`` of a conv, linear, BatchNorm or PReLU layer."""
    if isinstance(module, nn.PReLU):
        if module.num_parameters > 1:  # one slope per channel; a single slope stays
            module.num_parameters = len(keep)
            module.weight = kept_parameter(module.weight, 0, keep)
        return
    if isinstance(module, nn.BatchNorm2d):
        module.running_mean = module.running_mean[keep]
        module.running_var = module.running_var[keep]
        module.num_features = len(keep)
    elif isinstance(module, nn.Conv2d):
        if module.groups == module.in_channels == module.out_channels:  # depthwise
            module.groups = module.in_channels = len(keep)
        module.out_channels = len(keep)
    elif isinstance(module, nn.Linear):
        module.out_features = len(keep)
    else:
        raise TypeError(f"cannot prune the output channels of {type(module).__name__}")
    if module.weight is not None:
        module.weight = kept_parameter(module.weight, 0, keep)
    if module.bias is not None:
        module.bias = kept_parameter(module.bias, 0, keep)


def output_channels(module: nn.Module) -> int | None:
    """How many channels a conv, BatchNorm or linear layer puts out; None for others."""
    for attribute in ("out_channels", "num_features", "out_features"):
        if hasattr(module, attribute):
            return getattr(module, attribute)
    return None


def keep_input_channels(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep only input channels ``keep`` of a (non-grouped) conv or of a linear layer."""
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        module.in_channels = len(keep)
    elif isinstance(module, nn.Linear):
        module.in_features = len(keep)
    else:
        raise TypeError(f"cannot prune the input channels of {type(module).__name__} "
                        "(a grouped conv, or not a conv or linear layer)")
    module.weight = kept_parameter(module.weight, 1, keep)


def prune_channel_group(model: nn.Module, group: ChannelGroup, drop: Sequence[int]) -> None:
    """Remove channels ``drop`` from every layer of ``group`` and from its consumers, in place.

    A linear consumer must read the channels directly (after global pooling):
    its ``in_features`` must equal the number of channels.
    """
    modules = [model.get_submodule(name) for name in group.layers]
    channels = next((n for n in map(output_channels, modules) if n is not None), None)
    if channels is None:
        raise ValueError(f"group {group.layers} has no conv, linear or BatchNorm layer "
                         "that says how many channels it has")
    if not drop or not all(0 <= c < channels for c in drop) or len(set(drop)) >= channels:
        raise ValueError(f"drop must name some but not all of the {channels} channels of "
                         f"{group.layers[0]!r} (0 to {channels - 1}); got {list(drop)}")
    device = next(model.parameters()).device
    keep = torch.tensor([c for c in range(channels) if c not in set(drop)], device=device)
    for name in group.consumers:
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear) and module.in_features != channels:
            raise ValueError(f"{name!r} reads {module.in_features} features, not the {channels} "
                             "channels of its group: pool the channels before it")
    for module in modules:
        keep_output_channels(module, keep)
    for name in group.consumers:
        keep_input_channels(model.get_submodule(name), keep)


# --- Wrong: the mapping without checks ----------------------------------------------------

def grad_fn_modules_without_checks(model: nn.Module, x: torch.Tensor, types=GRAD_FN_TYPES) -> dict:
    """Wrong: ``{output.grad_fn: module}`` from a hook, with no checks.

    Under ``torch.no_grad()``, or with frozen parameters and an input that
    needs no grad, every key is ``None`` and the dict holds one module; an
    ``nn.Identity`` overwrites the layer before it. Use ``grad_fn_modules``.
    """
    nodes = {}

    def record(module, args, output):
        nodes[output.grad_fn] = module  # None under no_grad; Identity overwrites

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, types)]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return nodes


def grad_fn_modules_keeping_only_the_last_hook(model: nn.Module, x: torch.Tensor,
                                               types=GRAD_FN_TYPES) -> dict:
    """Wrong: ``hooks = [m.register_forward_hook(...)]`` re-bound in a loop keeps the last handle."""
    nodes = {}

    def record(module, args, output):
        nodes[output.grad_fn] = module

    for module in model.modules():
        if isinstance(module, types):
            hooks = [module.register_forward_hook(record)]  # re-bound: the earlier handles are lost
    model(x)
    for handle in hooks:
        handle.remove()
    return nodes
