"""Chapter: four ways to get intermediate outputs, and the inputs and gradients of layers.

Each way comes twice. Its *core* is the short function a page shows, for a reader to
copy: ``chain_children``, ``layer_getter_outputs``, ``fx_extractor``, ``hook_outputs``,
``hook_inputs`` and ``hook_grads``. Its *tool* calls that core and takes every model
readers bring, with one signature, ``fn(model, x, names) -> {name: output}`` in the
order the names were asked for:

- ``by_children``: run the top-level children in order yourself;
- ``by_layer_getter``: torchvision's ``IntermediateLayerGetter`` does the same;
- ``by_fx``: trace the model with torch.fx (``create_feature_extractor``) and
  return any node of the graph;
- ``by_hooks``: run the model as it is and record outputs with forward hooks;

``by_pre_hooks`` records the inputs of modules, ``grads_by_hooks`` the gradients
with respect to their outputs. What the tools add to the cores:

- ``x`` is the model's one argument, or a tuple of its positional arguments, and
  ``input_kwargs`` its keyword arguments;
- a model inside ``DataParallel`` / DDP or ``torch.compile`` is run as the model
  inside (``tutorials_pkg.unwrap``), compiled parts of it run eagerly (compiled code
  may miss a hook added after it was compiled), and a name may be spelt with or
  without the wrappers' ``_orig_mod.`` / ``module.``;
- an unknown name gets a ``ValueError`` that lists the names there are, and a module
  forward never called one that says so;
- ``by_children`` and ``by_layer_getter`` check their chain against one pass of the
  model's own forward and refuse, with the reason, where it is not the model (children
  registered in another order than forward calls them, a ``ModuleList``, work that
  forward does between them); where the chain breaks, the error names the child;
- ``by_fx`` says where tracing stopped and what to do instead.
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
from tutorials_pkg.unwrap import map_tensors, tensors_in, unwrap_model

__all__ = [
    "EXTRACTORS", "KeywordAttentionNet", "NoisyGatedNet", "SignGate", "SwappedNet",
    "build_fx_extractor",
    "by_children", "by_fx", "by_hooks", "by_hooks_without_clone_or_removal", "by_layer_getter",
    "by_pre_hooks", "chain_children", "clone_graph_outputs", "extraction_costs",
    "format_cost_table", "fx_extractor", "grads_by_hooks", "hook_grads", "hook_inputs",
    "hook_outputs", "layer_getter_outputs", "plot_feature_maps", "svg_figure",
]


# --- The cores: what the pages show ------------------------------------------------------

def chain_children(model: nn.Module, x: Tensor, names: list[str]) -> dict[str, Tensor]:
    """Call the model's top-level children one after another, keeping the outputs of ``names``."""
    children = list(model.named_children())
    last = max(index for index, (name, _) in enumerate(children) if name in names)
    outputs = {}
    for index, (name, child) in enumerate(children[:last + 1]):
        if isinstance(child, nn.Linear) and x.dim() > 2:  # as resnet's forward does before fc
            x = torch.flatten(x, 1)
        x = child(x)
        if name in names:  # a copy: a later child may change x in place (resnet's ReLU after bn1)
            outputs[name] = x if index == last else x.clone()
    return {name: outputs[name] for name in names}


def layer_getter_outputs(model: nn.Module, x: Tensor, names: list[str]) -> dict[str, Tensor]:
    """torchvision's ``IntermediateLayerGetter``: the children up to the last name, chained."""
    # return_layers maps a child to the key of its output; here each keeps its own name
    getter = IntermediateLayerGetter(model, return_layers={name: name for name in names})
    outputs = getter(x)
    return {name: outputs[name] for name in names}


def clone_graph_outputs(extractor: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Copy each output that a later op also reads, where it is made: an in-place op may change it."""
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


def fx_extractor(model: nn.Module, names: list[str], **kwargs) -> torch.fx.GraphModule:
    """A module that computes only what the nodes ``names`` need and returns ``{name: tensor}``.

    ``kwargs`` go to ``create_feature_extractor`` (``tracer_kwargs``, ``concrete_args``).
    """
    training = model.training
    try:
        extractor = create_feature_extractor(model, return_nodes=names, **kwargs)
    finally:  # on an error it leaves the model in train mode: BatchNorm would then move, silently
        model.train(training)
    return clone_graph_outputs(extractor)


def _run_then_remove(handles: list, model: nn.Module, /, *args, **kwargs) -> Any:
    """``model(*args, **kwargs)``, then remove the hooks, even when forward raises."""
    try:
        return model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()


def hook_outputs(model: nn.Module, names: list[str], /, *args, **kwargs) -> dict[str, Any]:
    """Run ``model(*args, **kwargs)`` once and return the output of each module ``names``.

    A module called twice keeps its last output; one that forward never calls is missing.
    """
    outputs = {}

    def keep(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            # a copy of every tensor in it: a later in-place op (ReLU(inplace=True)) would change it
            outputs[name] = map_tensors(torch.clone, output)
        return hook

    handles = [model.get_submodule(name).register_forward_hook(keep(name)) for name in names]
    _run_then_remove(handles, model, *args, **kwargs)
    return outputs


def hook_inputs(model: nn.Module, names: list[str], /, *args, **kwargs) -> dict[str, Any]:
    """Run ``model(*args, **kwargs)`` once and return the first input of each module ``names``."""
    inputs = {}

    def keep(name: str) -> Callable:
        def hook(module: nn.Module, module_args: tuple, module_kwargs: dict) -> None:
            # the first argument, also when it is passed by keyword (attn(query=..., key=...))
            first = next(iter(inspect.signature(module.forward).parameters))
            value = module_args[0] if module_args else module_kwargs[first]
            inputs[name] = map_tensors(torch.clone, value)  # the module may change it in place
        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(keep(name), with_kwargs=True)
               for name in names]
    _run_then_remove(handles, model, *args, **kwargs)
    return inputs


def hook_grads(model: nn.Module, names: list[str], loss_fn: Callable, /, *args,
               **kwargs) -> dict[str, Tensor | None]:
    """d ``loss_fn(model(*args, **kwargs))`` / d the output of each module ``names`` (last call).

    No parameter's ``.grad`` changes; an output the loss does not use gets ``None``.
    """
    outputs, versions = {}, {}

    def keep(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> Tensor | None:
            if not isinstance(output, Tensor):  # a tuple or a dict: hook a module inside
                return None
            if not output.requires_grad:  # nothing before it needs a gradient (token ids, frozen)
                output = output.detach().requires_grad_()
            elif any(output is arg for arg in inputs):  # nn.Identity: else the input's gradient
                output = output.view_as(output)
            outputs[name], versions[name] = output, output._version
            return output
        return hook

    handles = [model.get_submodule(name).register_forward_hook(keep(name)) for name in names]
    with torch.enable_grad():
        loss = loss_fn(_run_then_remove(handles, model, *args, **kwargs))
    # changed in place later (a ReLU(inplace=True)): autograd would give the changed value's grad
    changed = [name for name, output in outputs.items() if output._version != versions[name]]
    if changed:
        raise RuntimeError(f"the outputs of {changed} were changed in place after they were made: "
                           "ask for a module whose output nothing changes in place")
    grads = torch.autograd.grad(loss, list(outputs.values()), allow_unused=True) if outputs else ()
    return dict(zip(outputs, grads))


# --- The tools: every model readers bring ------------------------------------------------

_NEVER_CALLED = ("forward never called them for this input (a module kept only as an attribute, "
                 "one behind a branch such as `if self.training:`, or one whose other methods "
                 "forward calls instead of the module itself)")


def _name_list(names: Iterable[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)  # one name may be a string


def _call_args(x: Any, input_kwargs: dict | None) -> tuple[tuple, dict]:
    """The model's positional and keyword arguments: ``x`` is one argument, or a tuple of them."""
    return (x if isinstance(x, tuple) else (x,)), dict(input_kwargs or {})


def _inside(model: nn.Module) -> tuple[nn.Module, str]:
    """The model inside DDP / ``torch.compile``, and its path in the wrappers (``"_orig_mod."``)."""
    inner = unwrap_model(model)
    path = next(name for name, module in model.named_modules() if module is inner)
    return inner, (path + "." if path else "")


def _short(name: str) -> str:
    """``name`` without the ``_orig_mod`` of compiled parts: the module's path as written."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def _resolve(method: str, model: nn.Module, names: Iterable[str],
             top_level: bool = False) -> tuple[nn.Module, dict[str, str]]:
    """The model to run (inside DDP / torch.compile) and ``{name asked: its name there}``.

    A name may be spelt as the wrapper's ``named_modules()`` gives it (``_orig_mod.fc1``,
    ``module.fc1``) or as the model inside gives it, with or without ``_orig_mod.``.
    """
    inner, prefix = _inside(model)
    found = inner.named_children() if top_level else inner.named_modules()
    spellings, listed = {}, []
    for name, _ in found:
        if name:
            for spelling in (name, _short(name), prefix + name, prefix + _short(name)):
                spellings.setdefault(spelling, name)
            listed.append(_short(name))
    names = _name_list(names)
    unknown = [name for name in names if name not in spellings]
    if unknown:
        raise ValueError(f"{method}: unknown names {unknown}; it can reach: "
                         f"{', '.join(dict.fromkeys(listed))}")
    return inner, {name: spellings[name] for name in names}


def _missing(method: str, asked: dict[str, str], got: dict, what: str, why: str) -> dict[str, Any]:
    """``got`` keyed by the names asked, in their order; a ValueError for the ones not there."""
    missing = [name for name, found in asked.items()  # a gradient of None: the loss never used it
               if found not in got or what == "gradient" and got[found] is None]
    if missing:
        raise ValueError(f"{method}: no {what} recorded for {missing}: {why}")
    return {name: got[found] for name, found in asked.items()}


class _Enough(BaseException):
    """Ends a check pass of forward early (not an Exception: no model's ``except`` catches it)."""


def _forward_children(model: nn.Module, args: tuple, kwargs: dict, upto: list[str],
                      wanted: list[str]) -> tuple[list[str], dict[str, Any]]:
    """One pass of ``model``'s forward: the top-level children in the order it first calls
    them, and the first output of each of ``wanted``. It stops after ``upto[-1]`` or at a
    child out of ``upto``'s order; BatchNorm's statistics and the random state are put back.
    """
    called, outputs = [], {}

    def before(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple) -> None:
            if name not in called:
                called.append(name)
                if called != upto[:len(called)]:
                    raise _Enough
        return hook

    def after(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if name in wanted and name not in outputs:
                outputs[name] = map_tensors(torch.clone, output)
            if name == upto[-1]:
                raise _Enough
        return hook

    handles = [hook for name, child in model.named_children()
               for hook in (child.register_forward_pre_hook(before(name)),
                            child.register_forward_hook(after(name)))]
    training = any(module.training for module in model.modules())
    buffers = [buffer.clone() for buffer in model.buffers()] if training else []
    devices = list(dict.fromkeys(t.device.index for t in [*model.parameters(), *tensors_in(args)]
                                 if t.is_cuda))
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            _run_then_remove(handles, model, *args, **kwargs)
    except _Enough:
        pass
    finally:
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
    return called, outputs


def _same(a: Any, b: Any) -> bool:
    """The same tensors in ``a`` and ``b``, up to rounding (two runs of a kernel may differ)."""
    first, second = tensors_in(a), tensors_in(b)
    return len(first) == len(second) and all(
        p.shape == q.shape and (torch.equal(p, q) or p.is_floating_point() and q.is_floating_point()
                                and torch.allclose(p, q, rtol=1e-4, atol=1e-5, equal_nan=True))
        for p, q in zip(first, second))


def _checked_chain(method: str, chain: Callable, model: nn.Module, x: Any, names: Iterable[str],
                   input_kwargs: dict | None) -> dict[str, Any]:
    """``chain(model, x, names)``, refused where it is not what the model's forward computes."""
    inner, asked = _resolve(method, model, names, top_level=True)
    if not asked:
        return {}
    children = dict(inner.named_children())
    wanted = list(dict.fromkeys(asked.values()))
    upto = list(children)[:max(list(children).index(name) for name in wanted) + 1]
    called, expected = _forward_children(inner, *_call_args(x, input_kwargs), upto, wanted)
    if called[:len(upto)] != upto:
        raise RuntimeError(_not_a_chain(method, called, upto, children))
    done = {}  # the children that returned: the type of what they returned, its tensors' versions

    def returned(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            done.setdefault(name, (type(output).__name__, [t._version for t in tensors_in(output)]))
        return hook

    handles = [children[name].register_forward_hook(returned(name)) for name in upto]
    try:
        chained = _run_then_remove(handles, chain, inner, x, wanted)
    except Exception as error:
        raise RuntimeError(_chain_broke(method, upto, done, x, error)) from error
    differ = [name for name in wanted if not _same(chained[name], expected[name])]
    overwritten = [name for name in differ
                   if [t._version for t in tensors_in(chained[name])] != done[name][1]]
    if overwritten:  # IntermediateLayerGetter returns the tensors as they are at the end
        raise RuntimeError(
            f"{method}: a later child changed the outputs of {overwritten} in place (an "
            "nn.ReLU(inplace=True)), and the chain keeps no copy: ask for them without a later "
            "child, or use by_children, by_fx or by_hooks, which copy them")
    if differ:
        raise RuntimeError(
            f"{method}: the chain gives {differ} other values than the model's forward does: forward "
            "does more between the top-level children than call them in turn (an operation, a "
            "residual connection). by_hooks and by_fx run forward itself")
    return {name: chained[found] for name, found in asked.items()}


def _not_a_chain(method: str, called: list[str], upto: list[str], children: dict) -> str:
    at = next(i for i, name in enumerate(upto) if i >= len(called) or called[i] != name)
    child = upto[at]
    if isinstance(children[child], (nn.ModuleList, nn.ModuleDict)):
        why = (f"{child!r} is a {type(children[child]).__name__}: forward calls the modules it "
               "holds, and the container itself has no forward to call")
    elif at < len(called):
        why = (f"forward calls {called[at]!r} where the chain would call {child!r}: the children "
               "are registered in another order than forward calls them")
    else:
        why = f"forward never calls {child!r} for this input"
    return (f"{method}: the top-level children up to {upto[-1]!r} are not a chain: {why}. "
            f"{method} calls them in the order they were registered and skips forward; by_hooks "
            "and by_fx run forward itself")


def _chain_broke(method: str, upto: list[str], done: dict[str, str], x: Any,
                 error: Exception) -> str:
    at = next((i for i, name in enumerate(upto) if name not in done), len(upto) - 1)
    given = (f"x as it is (a {type(x).__name__})" if at == 0 else
             f"what {upto[at - 1]!r} returned (a {done[upto[at - 1]][0]})")
    return (f"{method}: the chain broke at {upto[at]!r}: it was given {given}, not what the "
            f"model's forward gives it. {method} calls the "
            "top-level children one after another and skips forward; by_hooks and by_fx run "
            f"forward itself.\n{type(error).__name__}: {error}")


def by_children(model: nn.Module, x: Any, names: Iterable[str], *,
                input_kwargs: dict | None = None) -> dict[str, Tensor]:
    """The outputs of the top-level children ``names``, from ``chain_children``.

    One pass of the model's own forward (with ``input_kwargs``), up to the last name,
    checks the chain: forward must call the children in the order they were registered,
    and the chain must give what forward gives them.
    """
    return _checked_chain("by_children", chain_children, model, x, names, input_kwargs)


def by_layer_getter(model: nn.Module, x: Any, names: Iterable[str], *,
                    input_kwargs: dict | None = None) -> dict[str, Tensor]:
    """torchvision's ``IntermediateLayerGetter`` (``layer_getter_outputs``), checked as by_children."""
    return _checked_chain("by_layer_getter", layer_getter_outputs, model, x, names, input_kwargs)


def _running_module(model: nn.Module, error: BaseException) -> tuple[str, nn.Module, str] | None:
    """The deepest module of ``model`` whose code raised ``error``: ``(name, module, function)``."""
    names = {id(module): name for name, module in model.named_modules()}
    found = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        module = frame.f_locals.get("self")
        if isinstance(module, nn.Module) and id(module) in names:
            found = (names[id(module)], module, frame.f_code.co_name)
    return found


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
    """``fx_extractor`` for the model inside DDP / ``torch.compile``, with errors that say what to do.

    ``leaf_modules`` are traced as one call (their ``forward`` may branch on data);
    ``concrete_args`` fixes arguments of ``forward`` that steer control flow
    (``{"flag": False}``). Names may carry the wrappers' ``_orig_mod.`` / ``module.``.
    """
    inner, prefix = _inside(model)
    names = [name.removeprefix(prefix) for name in _name_list(names)]
    tracing = {"tracer_kwargs": {"leaf_modules": list(leaf_modules)},
               "suppress_diff_warning": True, "concrete_args": concrete_args}
    training = inner.training
    try:
        return fx_extractor(inner, names, **tracing)
    except Exception as error:
        stopped = _running_module(inner, error)
        if stopped is not None:  # raised in the model's own code while tracing
            raise TraceError(_cannot_trace(inner, stopped, error)) from error
        if not isinstance(error, ValueError):
            raise
        # a name is not a node: list the nodes of the caller's mode
        train_nodes, eval_nodes = get_graph_node_names(inner, **tracing)
        nodes = train_nodes if training else eval_nodes
        # a prefix of nodes is a name too ("layer1": the last node in layer1)
        prefixes = {".".join(n.split(".")[:i]) for n in nodes for i in range(1, n.count(".") + 1)}
        unknown = [name for name in names if name not in nodes and name not in prefixes]
        if unknown:
            raise ValueError(f"by_fx: unknown names {unknown}; it can reach: {', '.join(nodes)}") from None
        raise  # in this mode's graph, not in the other: torchvision's message says so
    finally:
        inner.train(training)  # get_graph_node_names switches modes too


def by_fx(model: nn.Module, x: Any, names: Iterable[str], *, leaf_modules: Sequence[type] = (),
          concrete_args: dict[str, Any] | None = None,
          input_kwargs: dict | None = None) -> dict[str, Tensor]:
    """Trace the model with torch.fx and return the nodes ``names`` (see ``get_graph_node_names``)."""
    names = _name_list(names)
    extractor = build_fx_extractor(model, names, leaf_modules=leaf_modules, concrete_args=concrete_args)
    args, kwargs = _call_args(x, input_kwargs)
    outputs = extractor(*args, **kwargs)
    prefix = _inside(model)[1]
    return {name: outputs[name.removeprefix(prefix)] for name in names}  # in the order asked


def _eagerly(core: Callable, method: str, model: nn.Module, x: Any, names: Iterable[str],
             input_kwargs: dict | None, *core_args) -> tuple[dict[str, str], dict]:
    """``core(model, names, *core_args, *args, **kwargs)`` on the model inside the wrappers."""
    inner, asked = _resolve(method, model, names)
    args, kwargs = _call_args(x, input_kwargs)
    # compiled parts run as written: compiled code may miss hooks added after it was compiled
    with torch.compiler.set_stance("force_eager"):
        return asked, core(inner, list(dict.fromkeys(asked.values())), *core_args, *args, **kwargs)


def by_hooks(model: nn.Module, x: Any, names: Iterable[str], *,
             input_kwargs: dict | None = None) -> dict[str, Any]:
    """Run the whole model and record the outputs of the modules ``names`` (``hook_outputs``).

    ``x`` is the model's argument (a tensor; a detector's list of images), or a tuple of
    its positional arguments; ``input_kwargs`` its keyword arguments. A module called
    twice in ``forward`` keeps its last output.
    """
    asked, outputs = _eagerly(hook_outputs, "by_hooks", model, x, names, input_kwargs)
    return _missing("by_hooks", asked, outputs, "output", _NEVER_CALLED)


def by_pre_hooks(model: nn.Module, x: Any, names: Iterable[str], *,
                 input_kwargs: dict | None = None) -> dict[str, Any]:
    """Run the whole model and record the first input of the modules ``names`` (``hook_inputs``).

    ``x`` and ``input_kwargs`` as for ``by_hooks``. A module called twice keeps its last input.
    """
    asked, inputs = _eagerly(hook_inputs, "by_pre_hooks", model, x, names, input_kwargs)
    return _missing("by_pre_hooks", asked, inputs, "input", _NEVER_CALLED)


def grads_by_hooks(model: nn.Module, x: Any, names: Iterable[str], loss_fn: Callable[[Any], Tensor],
                   *, input_kwargs: dict | None = None) -> dict[str, Tensor]:
    """The gradient of ``loss_fn(model(x))`` with respect to the output of each module ``names``.

    ``x`` and ``input_kwargs`` as for ``by_hooks``; token ids are fine (no gradient with
    respect to ``x`` is needed). No parameter's ``.grad`` changes. A module called twice
    in ``forward`` gives the gradient for its last call.
    """
    asked, grads = _eagerly(hook_grads, "grads_by_hooks", model, x, names, input_kwargs, loss_fn)
    return _missing("grads_by_hooks", asked, grads, "gradient", "forward never called them, or "
                    "their output is not a tensor or does not reach the loss")


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


class SwappedNet(nn.Module):
    """Two layers registered in another order than forward calls them: the head first."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.head = nn.Linear(dim, dim)  # registered first, called last
        self.body = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.body(x)))


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

