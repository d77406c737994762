"""Tracing a model's structure through ``grad_fn``.

``record_grad_fn`` runs the model once with a forward hook on each layer of
interest and maps the autograd node behind the layer's output to the layer;
``trace_grad_fn`` wraps it into a tool that takes any model (frozen, in train
mode, compiled, under ``no_grad``) and keeps the whole trace. Walking
``next_functions`` from node to node then gives the model's graph
(``module_graph``); ``tutorials_pkg.grad_fn.pruning`` reads the same trace for
the channels that must be pruned together.

``GRAD_FN_TYPES``, the layers traced by default, are the layers whose channels
the pruning tools can cut, each class named: the private base classes
(``_ConvNd``, ``_BatchNorm``) would also match layers no rule was written for.
"""

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

from tutorials_pkg.summary import eval_mode
from tutorials_pkg.unwrap import map_tensors, tensors_in, unwrap_model

__all__ = [
    "GRAD_FN_TYPES", "MermaidDiagram", "ModuleGraph", "SavedTensors", "Trace",
    "check_autograd_is_on", "grad_fn_modules", "grad_fn_modules_keeping_only_the_last_hook",
    "grad_fn_modules_without_checks", "layer_edges", "module_graph", "nodes_in_order",
    "output_nodes", "record_grad_fn", "trace_grad_fn",
]

GRAD_FN_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                 nn.GroupNorm, nn.LayerNorm, nn.PReLU)  # each named: see the module's docstring


def uncompiled(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` / DDP wrappers; refuses compiled submodules."""
    model = unwrap_model(model)
    compiled = [name for name, m in model.named_modules()
                if isinstance(getattr(m, "_orig_mod", None), nn.Module)]
    if compiled:
        raise TypeError(f"submodule {compiled[0]!r} was compiled with torch.compile, and hooks "
                        "added after its first call do not fire inside compiled code: pass the "
                        f"model built before compiling it, or uncompiled(model.{compiled[0]}) "
                        "on its own")
    return model


def record_grad_fn(model: nn.Module, args: tuple, types) -> tuple[dict, dict, object]:
    """Run ``model(*args)`` with a forward hook on each ``types`` layer.

    Returns ``{grad_fn of the layer's output: layer}``, ``{that grad_fn: the
    (grad_fn, output_nr) of each tensor the layer read}``, and the model's output.
    """
    nodes, inputs = {}, {}

    def record(module, module_args, output):
        for tensor in tensors_in(output):
            node = tensor.grad_fn
            if node is None:  # autograd recorded nothing: no_grad, or an integer output
                continue
            if nodes.setdefault(node, module) is not module:  # an Identity passes its input on
                raise ValueError(f"{module} returned the grad_fn of {nodes[node]}, its input's: "
                                 f"leave {type(module).__name__} out of types")
            inputs[node] = [(t.grad_fn, t.output_nr) for t in tensors_in(module_args)]

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, types)]
    try:
        output = model(*args)
    finally:  # every hook goes, also when forward fails
        for handle in handles:
            handle.remove()
    return nodes, inputs, output


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
    layer_inputs: dict            # grad_fn node of a layer's output -> (node, output_nr) it read


def trace_grad_fn(model: nn.Module, x, types=GRAD_FN_TYPES) -> Trace:
    """Run ``model`` on a copy of ``x``; map the output node of each ``types`` layer to the layer.

    ``x`` is what the model takes: a tensor, a list or dict of tensors (one
    argument), or a tuple of positional arguments. Each floating-point tensor
    is copied to a leaf that requires grad (``Trace.input``, where the walk
    ends) and the model runs on a copy of that leaf, in eval mode, with every
    parameter requiring grad; modes and flags are given back afterwards.
    """
    check_autograd_is_on()
    model, types = uncompiled(model), type_tuple(types)
    args = x if isinstance(x, tuple) else (x,)
    leaves = map_tensors(lambda t: t.detach().clone().requires_grad_(t.is_floating_point()), args)
    with eval_mode(model), grad_enabled_parameters(model):
        copies = map_tensors(torch.Tensor.clone, leaves)
        nodes, inputs, output = record_grad_fn(model, copies, types)
    names = {module: name for name, module in model.named_modules()}
    return Trace(nodes, names, output, leaves if isinstance(x, tuple) else leaves[0], inputs)


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


def nodes_in_order(roots) -> list:
    """Every node reachable from ``roots``, each one after all of its inputs."""
    order, seen, stack = [], set(), [(root, False) for root in roots]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
        elif node not in seen:
            seen.add(node)
            stack += [(node, True)] + [(p, False) for p, _ in node.next_functions if p is not None]
    return order


def output_nodes(output) -> list:
    """The ``grad_fn`` of each tensor in a model's output (tensors, lists, tuples, dicts)."""
    return list(dict.fromkeys(t.grad_fn for t in tensors_in(output) if t.grad_fn is not None))


MERGES = {"AddBackward0": "+", "MulBackward0": "*", "CatBackward0": "cat"}


def layer_edges(trace) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The traced layers (name -> type) and the adds, multiplies and cats joining branches."""
    outputs, nodes, edges = output_nodes(trace.output), {"input": "input"}, []
    came_from = {get_gradient_edge(t).node: ["input"]  # the input's leaves: where the walk ends
                 for t in tensors_in(trace.input) if t.requires_grad}
    for node in nodes_in_order(outputs):
        sources = list(dict.fromkeys(s for p, _ in node.next_functions if p for s in came_from[p]))
        if node in trace.nodes:
            name = trace.names[trace.nodes[node]]
            nodes[name] = type(trace.nodes[node]).__name__
        elif node.name() in MERGES and len(sources) > 1:  # an add, multiply or cat of branches
            name = MERGES[node.name()] + str(sum(t in MERGES.values() for t in nodes.values()) + 1)
            nodes[name] = MERGES[node.name()]
        else:  # any other node is walked through
            came_from.setdefault(node, sources)
            continue
        edges += [(source, name) for source in sources if (source, name) not in edges]
        came_from[node] = [name]
    return {**nodes, "output": "output"}, edges + [(s, "output") for n in outputs for s in came_from[n]]


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
            elif label in MERGES.values():
                lines.append(f'    {ids[name]}(("{label}"))')
            else:
                lines.append(f'    {ids[name]}["{name}: {label}"]')
        lines += [f"    {ids[a]} --> {ids[b]}" for a, b in self.edges]
        return MermaidDiagram("\n".join(lines))


def module_graph(trace: Trace) -> ModuleGraph:
    """The graph of the traced layers and the adds, multiplies and cats that merge branches."""
    return ModuleGraph(*layer_edges(trace))


# --- Wrong: the mapping without checks ----------------------------------------------------

def grad_fn_modules_without_checks(model: nn.Module, x: torch.Tensor,
                                   types=(nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.PReLU)) -> dict:
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


def grad_fn_modules_keeping_only_the_last_hook(
        model: nn.Module, x: torch.Tensor, types=(nn.Conv2d, nn.BatchNorm2d, nn.Linear)) -> dict:
    """Wrong: ``hooks = [m.register_forward_hook(...)]``, re-bound in a loop, keeps one handle."""
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
