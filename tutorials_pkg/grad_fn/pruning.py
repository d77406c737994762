"""Structured pruning by dependency graph, read from the autograd trace.

``coupled_channel_groups(trace)`` labels every element of every tensor of the
traced forward pass with the channel it carries (an *atom*: channel k of a
layer's output, one element of a parameter, the model's input), walking the
graph from input to output:

- a layer that makes channels (convolution, transposed convolution, linear)
  gives its output new atoms and records which atoms it reads: its input
  channels (after ``flatten``, each channel is read at H*W features);
- a layer that carries channels (BatchNorm, GroupNorm, LayerNorm, PReLU)
  records its input's atoms as its own; a grouped or depthwise convolution
  ties each group of its input to the same group of its output;
- shape operations (cat, split/chunk, slicing, view, permute, pooling,
  upsampling) are replayed on the labels, so they move exactly as the
  values did: after ``torch.cat`` a channel sits at an offset;
- element-wise operations (add, multiply, activations) join the atoms they
  combine: those must be pruned together (``follow_channels``, a union-find);
- anything else (attention's matrix products, a layer of an untraced type,
  a slice at fixed positions of the channels) marks what it reads as not
  prunable, and says why.

A ``ChannelGroup`` is a set of channels whose atoms touch the same layers;
for each layer it lists where each channel of the group sits there.
``prune_channel_groups`` cuts channels of several groups at once, checking
everything before changing anything; ``zero_channel_groups`` makes the same
channels carry zeros instead, which is what a correct cut must equal.

Only what the traced forward pass ran is seen, and the trace runs in eval
mode: layers that run only in training (GoogLeNet's and Inception's auxiliary
heads) keep their input channels, so build those models without them
(``aux_logits=False``) to prune them. A split's sizes must come from the tensor
(``chunk``, ``x.shape[1] // 2``), not be written in the code as numbers.
"""

import operator
import re
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from tutorials_pkg.grad_fn.trace import Trace, nodes_in_order, output_nodes
from tutorials_pkg.unwrap import tensors_in, unwrap_model

__all__ = [
    "ChannelGroup", "Channels", "batchnorm_scale", "coupled_channel_groups",
    "coupled_channel_groups_where_cat_starts_new", "cut_conv", "cut_layer", "follow_channels",
    "prune_channel_group", "prune_channel_groups", "walk_channels", "zero_channel_groups",
]

OUTPUT = "its channels are the model's output"
INPUT = "its channels are the model's input"
PARAMETER_LIMIT = 2 ** 19  # a parameter used outside a layer gets one atom per element up to this


# --- the labels: which channel each element carries ---------------------------------------

class Channels:
    """Atoms, the atoms that must be pruned together (a union-find) and those that cannot be."""

    def __init__(self):
        self.count = 0
        self.pairs = []   # (k, 2) tensors of atoms joined
        self.flags = []   # (atoms, reason): cannot be pruned, and why
        self.checks = []  # (a, b, reason): must end up joined, else flagged

    def new(self, n: int) -> torch.Tensor:
        self.count += n
        return torch.arange(self.count - n, self.count)

    def join(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Atoms ``a`` and ``b`` (broadcast together) go together, element by element."""
        a, b = (t.reshape(-1) for t in compact(*torch.broadcast_tensors(a, b)))
        differ = a != b
        if differ.any():
            codes = (a[differ] << 32 | b[differ]).unique()
            self.pairs.append(torch.stack([codes >> 32, codes & 0xFFFFFFFF], 1))

    def flag(self, atoms: torch.Tensor, reason: str) -> None:
        self.flags.append((compact(atoms)[0].reshape(-1), reason))

    def fixed(self, shape, reason: str) -> torch.Tensor:
        """One new atom that cannot be pruned, as labels of ``shape``."""
        atom = self.new(1)
        self.flag(atom, reason)
        return atom.reshape([1] * len(shape)).expand(shape)

    def check_joined(self, labels: torch.Tensor, dims, reason: str) -> None:
        """Along ``dims``, ``labels`` must be one channel in the end (else: flagged)."""
        dims = [d for d in dims if labels.shape[d] > 1]
        first = labels
        for d in dims:
            first = first.narrow(d, 0, 1)
        if dims and not torch.equal(*torch.broadcast_tensors(labels, first)):
            self.checks.append((labels, first, reason))

    def roots(self) -> torch.Tensor:
        """The smallest atom of each atom's set: connected components by min-label hooking."""
        parent = torch.arange(self.count)
        if not self.pairs:
            return parent
        u, v = torch.cat(self.pairs).T
        while True:
            ru, rv = parent[u], parent[v]
            differ = ru != rv
            if not differ.any():
                return parent
            u, v, ru, rv = u[differ], v[differ], ru[differ], rv[differ]
            low = torch.minimum(ru, rv)
            parent.scatter_reduce_(0, ru, low, "amin")
            parent.scatter_reduce_(0, rv, low, "amin")
            while not torch.equal(parent[parent], parent):
                parent = parent[parent]


def compact(*labels: torch.Tensor) -> list[torch.Tensor]:
    """``labels`` without the repeats of broadcasting: a dim all of them expand is cut to size 1."""
    for d in range(labels[0].dim()):
        if labels[0].shape[d] > 1 and all(t.stride(d) == 0 for t in labels):
            labels = [t.narrow(d, 0, 1) for t in labels]
    return list(labels)


def varies(labels: torch.Tensor, dim: int) -> bool:
    """Whether ``labels`` hold more than one atom along ``dim`` (a channel dimension)."""
    if labels.shape[dim] < 2 or labels.stride(dim) == 0:
        return False
    return not torch.equal(*torch.broadcast_tensors(labels, labels.narrow(dim, 0, 1)))


def spread(atoms: torch.Tensor, dim: int, shape) -> torch.Tensor:
    """One atom per index of ``dim``, as labels of ``shape``."""
    view = [-1 if d == dim % len(shape) else 1 for d in range(len(shape))]
    return atoms.reshape(view).expand(shape)


def saved(node, name: str):
    """A value the node saved for backward; a negative dim may come back as 2**64 - k."""
    def signed(v):
        return v - 2 ** 64 if isinstance(v, int) and v >= 2 ** 63 else v

    value = getattr(node, f"_saved_{name}")
    return type(value)(map(signed, value)) if isinstance(value, (tuple, list)) else signed(value)


def output_shape(node, index: int = 0) -> tuple:
    return tuple(node._input_metadata[index].shape)  # autograd keeps it to check the gradient


class ChannelWalk:
    """The walk's state: the labels of each node's outputs, and the atoms each layer holds."""

    def __init__(self, trace: Trace):
        self.trace, self.channels = trace, Channels()
        self.labels = {}       # node -> labels of each of its outputs
        self.slots = {}        # (layer name, "out" / "in") -> atom at each index
        self.parameters = {}   # parameter name -> (parameter, atoms), one atom per element
        self.leaves = {}
        self.inputs = {id(t) for t in tensors_in(trace.input)}
        self.modules = {name: module for module, name in trace.names.items()}
        self.inside = internal_nodes(trace)
        self.parameter_names = {id(p): f"{name}.{p_name}".lstrip(".")
                                for module, name in trace.names.items()
                                for p_name, p in module.named_parameters(recurse=False)}

    def labels_of(self, edge) -> torch.Tensor | None:
        node, index = edge
        if node is None:
            return None  # a tensor that needs no grad: a constant
        if hasattr(node, "variable"):
            return self.leaf(node)
        if node not in self.labels:  # a step inside a layer, read from outside it
            return self.channels.fixed(output_shape(node, index), f"{node.name()} is read from "
                                       "inside a traced layer")
        return self.labels[node][index]

    def unknown(self, node, ins, shapes) -> list:
        return opaque(self, node, ins, shapes)

    def leaf(self, node) -> torch.Tensor:
        if node not in self.leaves:
            var = node.variable
            name = self.parameter_names.get(id(var), "a tensor")
            if id(var) in self.inputs:
                self.leaves[node] = self.channels.fixed(var.shape, INPUT)
            elif var.numel() > PARAMETER_LIMIT:
                self.leaves[node] = self.channels.fixed(
                    var.shape, f"parameter {name} ({var.numel():,} elements) is used outside a "
                               "traced layer, and too large to follow")
            else:
                self.leaves[node] = self.channels.new(var.numel()).reshape(var.shape)
                self.parameters[name] = (var, self.leaves[node])
        return self.leaves[node]

    def along(self, labels: torch.Tensor, dim: int) -> torch.Tensor:
        """The atom at each index of ``dim``: every element at one index is one channel."""
        flat = compact(labels.movedim(dim, 0))[0]
        flat = flat.reshape(flat.shape[0], -1)
        self.channels.join(flat, flat[:, :1])
        return flat[:, 0].contiguous()

    def slot(self, name: str, role: str, atoms: torch.Tensor) -> None:
        known = self.slots.setdefault((name, role), atoms)
        if known is not atoms:  # a layer called again reads and writes the same channels
            self.channels.join(known, atoms)

    def made(self, name: str, n: int) -> torch.Tensor:
        if (name, "out") not in self.slots:
            self.slots[(name, "out")] = self.channels.new(n)
        return self.slots[(name, "out")]


# --- rules: how each layer and each operation moves the labels ----------------------------

def layer_rule(walk: "ChannelWalk", node, module: nn.Module) -> list | None:
    """Labels of a traced layer's output, from those of its input (None: no rule for it)."""
    if not isinstance(module, LAYER_TYPES):
        return None
    edges = walk.trace.layer_inputs.get(node) or [(None, 0)]
    x = walk.labels_of(edges[0])
    name, shape = walk.trace.names[module], output_shape(node)
    if isinstance(module, _ConvNd):
        dim = len(shape) - len(module.kernel_size) - 1  # channels: 1, or 0 without a batch
        made = walk.made(name, module.out_channels)
        reads = walk.along(x, dim) if x is not None else walk.channels.new(module.in_channels)
        walk.slot(name, "in", reads)
        if module.groups > 1:  # group g reads input group g only: they go together, whole
            blocks = made.reshape(module.groups, -1)
            walk.channels.join(blocks, blocks[:, :1])
            walk.channels.join(reads.reshape(module.groups, -1), blocks[:, :1])
        return [spread(made, dim, shape)]
    if isinstance(module, nn.Linear):
        if x is not None:
            walk.slot(name, "in", walk.along(x, -1))
        return [spread(walk.made(name, module.out_features), -1, shape)]
    if x is None:
        return [walk.channels.fixed(shape, f"{name} reads a tensor that needs no grad")]
    if isinstance(module, nn.LayerNorm):
        reads = walk.along(x, -1)
        walk.slot(name, "out", reads)
        if len(module.normalized_shape) > 1 or reads.unique().numel() > 1:
            walk.channels.flag(x, f"LayerNorm {name} normalizes over these channels: removing "
                                  "one changes what every other channel puts out")
        return [x]
    if isinstance(module, (_BatchNorm, nn.GroupNorm, nn.PReLU)):
        if isinstance(module, nn.PReLU) and module.num_parameters == 1:
            return [x]  # one slope for every channel
        reads = walk.along(x, 1 if x.dim() > 1 else 0)
        if isinstance(module, nn.GroupNorm):  # statistics per group: whole groups go
            blocks = reads.reshape(module.num_groups, -1)
            walk.channels.join(blocks, blocks[:, :1])
        walk.slot(name, "out", reads)
        return [x]
    raise AssertionError(f"no rule for {type(module).__name__}")


LAYER_TYPES = (_ConvNd, nn.Linear, _BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.PReLU)


def elementwise(walk, node, ins, shapes) -> list:
    """Add, multiply, activations: the channels they combine go together."""
    shape, present = shapes[0], [x for x in ins if x is not None]
    if not present:
        return [walk.channels.fixed(shape, f"{node.name()} makes values from constants")]
    base = next((x for x in present if tuple(x.shape) == shape), present[0].expand(shape))
    for other in present:
        other = other.reshape((1,) * (len(shape) - other.dim()) + tuple(other.shape))
        shared = [d for d in range(len(shape)) if other.shape[d] == 1 < shape[d]]
        if not any(varies(base, d) for d in shared):  # one value for all channels is no channel
            walk.channels.join(base, other)
    return [base]


def reshaped(walk, node, ins, shapes) -> list:
    """view, reshape, flatten, squeeze: the labels take the new shape."""
    x, shape = ins[0], shapes[0]
    out = x.reshape(shape)
    for in_dims, out_dims in reshape_blocks(tuple(x.shape), shape):
        if not any(varies(x, d) for d in in_dims):
            continue
        out_dims = [d for d in out_dims if shape[d] > 1]
        if len(in_dims) > 1 and len(out_dims) > 1:
            walk.channels.flag(x, f"{node.name()} regroups these channels")
        for d in out_dims[:-1]:  # channels split into groups (a shuffle, heads): every group
            walk.channels.join(out, out.narrow(d, 0, 1))  # loses the same channels
    return [out]


def reshape_blocks(a: tuple, b: tuple) -> list[tuple[list[int], list[int]]]:
    """The dims of shape ``a`` and of shape ``b`` that hold the same elements, block by block."""
    blocks, i, j = [], 0, 0
    try:
        while i < len(a) and j < len(b):
            ins, outs, size_a, size_b = [i], [j], a[i], b[j]
            i, j = i + 1, j + 1
            while size_a != size_b:
                if size_a < size_b:
                    size_a, i = size_a * a[i], i + 1
                    ins.append(i - 1)
                else:
                    size_b, j = size_b * b[j], j + 1
                    outs.append(j - 1)
            blocks.append((ins, outs))
    except IndexError:  # empty tensors
        return []
    return blocks


def moved(fn):
    """A rule for an operation that only moves elements: replay it on the labels."""
    return lambda walk, node, ins, shapes: [fn(ins[0], node, shapes[0])]


def sliced(walk, node, ins, shapes) -> list:
    x, dim = ins[0], saved(node, "dim") % ins[0].dim()
    index = (slice(None),) * dim + (slice(saved(node, "start"), saved(node, "end"),
                                          saved(node, "step")),)
    if x[index].shape[dim] < x.shape[dim]:
        walk.channels.check_joined(x, [dim], f"{node.name()} slices these channels at fixed "
                                             "positions, which pruning would move")
    return [x[index]]


def selected(walk, node, ins, shapes) -> list:
    x, dim = ins[0], saved(node, "dim") % ins[0].dim()
    walk.channels.check_joined(x, [dim], f"{node.name()} picks one of these channels by index")
    return [x.select(dim, saved(node, "index"))]


def indexed(walk, node, ins, shapes) -> list:
    x, indices = ins[0], [i if i is None else i.cpu() for i in node._saved_indices]
    dims = [d for d, i in enumerate(indices) if i is not None]
    walk.channels.check_joined(x, dims, f"{node.name()} picks these channels by fixed indices")
    return [x[tuple(slice(None) if i is None else i for i in indices)]]


def concatenated(walk, node, ins, shapes) -> list:
    """cat: the labels side by side, so a channel of an input sits at its offset in the output."""
    shape, dim = shapes[0], saved(node, "dim") % len(shapes[0])
    missing = [i for i, x in enumerate(ins) if x is None]
    if missing:  # inputs that need no grad: constants, one of them at most (its size is the rest)
        if len(missing) > 1:
            return walk.unknown(node, ins, shapes)
        size = shape[dim] - sum(x.shape[dim] for x in ins if x is not None)
        ins = list(ins)
        ins[missing[0]] = walk.channels.fixed(shape[:dim] + (size,) + shape[dim + 1:],
                                              "concatenated with constants")
    return [torch.cat([x.expand(shape[:dim] + x.shape[dim:dim + 1] + shape[dim + 1:])
                       for x in ins], dim)]


def stacked(walk, node, ins, shapes) -> list:
    like = next(x for x in ins if x is not None)
    ins = [x if x is not None else walk.channels.fixed(like.shape, "stacked with constants")
           for x in ins]
    return [torch.stack(ins, saved(node, "dim") % len(shapes[0]))]


def split(walk, node, ins, shapes) -> list:
    """split / chunk: pieces of equal size lose the same channels, so the cut points stay."""
    x, dim = ins[0], saved(node, "dim") % ins[0].dim()
    sizes = [shape[dim] for shape in shapes]
    pieces = list(x.split(sizes, dim))
    if varies(x, dim):
        if hasattr(node, "_saved_split_sizes") or len(set(sizes)) > 1:  # sizes in the code
            walk.channels.flag(x, f"{node.name()} splits these channels at sizes {sizes} "
                                  "(unequal, or written in the code) that pruning would move")
        else:
            for piece in pieces[1:]:
                walk.channels.join(piece, pieces[0])
    return pieces


def unbound(walk, node, ins, shapes) -> list:
    x = ins[0]
    pieces = list(x.unbind(saved(node, "dim") % x.dim()))
    for piece in pieces[1:]:
        walk.channels.join(piece, pieces[0])
    return pieces


def padded(walk, node, ins, shapes) -> list:
    """Constant padding: the border of a channel is that channel (channels padded: constants)."""
    x, pad = ins[0], list(saved(node, "pad"))
    for k in range(len(pad) // 2):
        dim, before, after = x.dim() - 1 - k, pad[2 * k], pad[2 * k + 1]
        if varies(x, dim) and (before or after):
            walk.channels.flag(x, f"{node.name()} pads these channels with constant ones")
        index = torch.arange(-before, x.shape[dim] + after).clamp(0, x.shape[dim] - 1)
        x = x.index_select(dim, index)
    return [x]


def reduced(dims_of):
    """Pooling, mean, upsampling: each output element comes from one channel, or they mix."""
    def rule(walk, node, ins, shapes) -> list:
        x, shape = ins[0], shapes[0]
        dims = [d % x.dim() for d in dims_of(node, x)]
        walk.channels.check_joined(x, dims, f"{node.name()} mixes these channels")
        first = x
        for d in dims:
            first = first.narrow(d, 0, 1)
        kept = [d for d in range(x.dim()) if d not in dims]
        if len(shape) == x.dim():
            return [first.expand(shape)]
        if [x.shape[d] for d in kept] == list(shape):
            return [first.reshape(shape)]
        return opaque(walk, node, ins, shapes)
    return rule


def spatial_dims(node, x) -> list[int]:
    found = re.search(r"(\d)D", node.name())
    return list(range(x.dim() - int(found.group(1)), x.dim())) if found else []


def saved_dims(node, x) -> list[int]:
    dims = saved(node, "dim") if hasattr(node, "_saved_dim") else None
    if dims is None or dims == ():
        return list(range(x.dim()))
    return [dims] if isinstance(dims, int) else list(dims)


def strided(walk, node, ins, shapes) -> list:
    x = ins[0]  # as_strided to the same size: a new memory layout of the same values
    if tuple(x.shape) == shapes[0] and sum(s > 1 for s in shapes[0]) <= 1:
        return [x]
    return opaque(walk, node, ins, shapes)


def softmax(walk, node, ins, shapes) -> list:
    walk.channels.check_joined(ins[0], [saved(node, "dim") % ins[0].dim()],
                               f"{node.name()} mixes these channels")
    return [ins[0]]


MATRIX_PRODUCTS = ("MmBackward", "BmmBackward", "MatmulBackward", "AddmmBackward",
                   "BaddbmmBackward", "EinsumBackward")


def opaque(walk, node, ins, shapes) -> list:
    """Any other operation: what it reads cannot be pruned, and what it makes is new."""
    kind = node.name()
    parameters = [walk.parameter_names[id(leaf.variable)]
                  for leaf in nodes_near(node, walk.trace.nodes)
                  if hasattr(leaf, "variable") and id(leaf.variable) in walk.parameter_names]
    attention = any(isinstance(walk.modules.get(name.rpartition(".")[0]), nn.MultiheadAttention)
                    for name in parameters)
    after = layer_before(node, walk.trace)
    if "DotProduct" in kind or (kind.startswith(MATRIX_PRODUCTS) and not parameters):
        reason = f"attention: {kind} after {after} multiplies activations, mixing these channels"
    elif attention:
        reason = f"attention: {parameters[0]} projects these channels inside MultiheadAttention"
    elif parameters:
        reason = (f"{kind} uses {parameters[0]} outside a traced layer (a layer type not in "
                  "types, or attention's projections)")
    else:
        reason = f"{kind} after {after} mixes these channels (no pruning rule follows it)"
    for x in ins:
        if x is not None:
            walk.channels.flag(x, reason)
    return [walk.channels.fixed(shape, reason) for shape in shapes]


def layer_before(node, trace: Trace) -> str:
    """The name of the nearest traced layer whose output ``node`` reads, through other nodes."""
    seen, frontier = set(), [node]
    while frontier:
        frontier = [p for n in frontier for p, _ in n.next_functions
                    if p is not None and p not in seen and not seen.add(p)]
        layer = next((trace.nodes[p] for p in frontier if p in trace.nodes), None)
        if layer is not None:
            return repr(trace.names[layer])
    return "the input"


def nodes_near(node, layers: dict, depth: int = 2) -> list:
    """The nodes ``node`` reads, and theirs, up to ``depth`` steps back, not into ``layers``."""
    found, frontier = [], [node]
    for _ in range(depth):
        frontier = [p for n in frontier for p, _ in n.next_functions
                    if p is not None and p not in layers]
        found += frontier
    return found


ELEMENTWISE = (
    "Add Sub Mul Div Neg Relu Silu Gelu Sigmoid Tanh Hardswish Hardsigmoid Hardtanh LeakyRelu Elu "
    "Selu Celu Mish Softplus LogSigmoid Clamp ClampMin ClampMax Threshold Pow Sqrt Rsqrt Exp Log "
    "Abs Reciprocal Erf Sin Cos Maximum Minimum Where Lerp Addcmul Addcdiv NativeDropout Clone "
    "ToCopy Alias"
).split()

OPERATIONS = {
    **{f"{name}Backward": elementwise for name in ELEMENTWISE},
    **{f"{name}Backward": reshaped for name in
       ("View", "UnsafeView", "ReshapeAlias", "Squeeze", "Unsqueeze")},
    "PermuteBackward": moved(lambda x, node, shape: x.permute(saved(node, "dims"))),
    "TransposeBackward": moved(lambda x, node, shape: x.transpose(saved(node, "dim0"),
                                                                 saved(node, "dim1"))),
    "TBackward": moved(lambda x, node, shape: x.t() if x.dim() == 2 else x),
    "ExpandBackward": moved(lambda x, node, shape: x.expand(shape)),
    "RepeatBackward": moved(lambda x, node, shape: x.repeat(saved(node, "repeats"))),
    "FlipBackward": moved(lambda x, node, shape: x.flip(saved(node, "dims"))),
    "RollBackward": moved(lambda x, node, shape: x.roll(saved(node, "shifts"),
                                                       saved(node, "dims"))),
    "SliceBackward": sliced,
    "SelectBackward": selected,
    "IndexBackward": indexed,
    "CatBackward": concatenated,
    "StackBackward": stacked,
    "SplitBackward": split,
    "SplitWithSizesBackward": split,
    "UnbindBackward": unbound,
    "ConstantPadNdBackward": padded,
    "AsStridedBackward": strided,
    "SoftmaxBackward": softmax,
    "LogSoftmaxBackward": softmax,
    **{f"{name}Backward": reduced(spatial_dims) for name in (
        "MaxPool1DWithIndices", "MaxPool2DWithIndices", "MaxPool3DWithIndices", "AvgPool2D",
        "AvgPool3D", "AdaptiveAvgPool2D", "AdaptiveAvgPool3D", "AdaptiveMaxPool2D",
        "AdaptiveMaxPool3D", "UpsampleNearest1D", "UpsampleNearest2D", "UpsampleNearest3D",
        "UpsampleNearestExact2D", "UpsampleBilinear2D", "UpsampleBicubic2D",
        "UpsampleTrilinear3D", "ReflectionPad2D", "ReplicationPad2D")},
    **{f"{name}Backward": reduced(saved_dims) for name in (
        "Mean", "Sum", "Amax", "Amin", "Max", "Min", "LinalgVectorNorm", "Std", "Var")},
}


def internal_nodes(trace: Trace) -> set:
    """Nodes inside the traced layers that have a rule (the view and addmm inside a Linear)."""
    inside, outputs = set(), set(trace.nodes)
    for node, module in trace.nodes.items():
        if not isinstance(module, LAYER_TYPES):
            continue
        ends = {edge[0] for edge in trace.layer_inputs.get(node, [])}
        stack, found = [p for p, _ in node.next_functions if p is not None], set()
        while stack:
            parent = stack.pop()
            if parent in ends or parent in found or parent in outputs:
                continue
            if hasattr(parent, "variable"):  # a parameter
                continue
            found.add(parent)
            stack += [p for p, _ in parent.next_functions if p is not None]
        inside |= found
    return inside


# --- the walk, and the groups it gives ----------------------------------------------------

def walk_channels(trace, state, for_layer, for_kind: dict, otherwise) -> None:
    """Label the channels each tensor of ``trace`` carries, from the input to the output.

    A traced layer's output gets ``for_layer(state, node, layer)``; any other node's
    outputs (or a layer's, where that returns None) get ``for_kind[its kind]``
    (``otherwise`` for other kinds) of the labels of its inputs. Into ``state.labels``.
    """
    for node in nodes_in_order(output_nodes(trace.output)):
        if node in state.inside or hasattr(node, "variable"):
            continue  # a step inside a layer; a leaf (labelled when it is read)
        layer = trace.nodes.get(node)
        labels = for_layer(state, node, layer) if layer is not None else None
        if labels is None:
            inputs = [state.labels_of(edge) for edge in node.next_functions]
            shapes = [tuple(meta.shape) for meta in node._input_metadata]  # of its outputs
            kind = node.name().rstrip("0123456789")  # AddBackward0 -> AddBackward
            labels = for_kind.get(kind, otherwise)(state, node, inputs, shapes)
        state.labels[node] = labels


def follow_channels(trace: Trace) -> "ChannelWalk":
    """The labels of every traced tensor, and what the walk found (``walk_channels``)."""
    walk = ChannelWalk(trace)
    walk_channels(trace, walk, layer_rule, OPERATIONS, opaque)
    for tensor in tensors_in(trace.output):
        if tensor.grad_fn is not None:
            walk.channels.flag(walk.labels[tensor.grad_fn][tensor.output_nr], OUTPUT)
    return walk


@dataclass
class ChannelGroup:
    """Channels that must be pruned together.

    ``layers`` make or carry these channels (a conv's output channels, the
    BatchNorm on them, everything an add joins to them; a parameter used on
    them); ``consumers`` read them as their input channels. ``indices`` says,
    for each ``(name, "out" | "in" | "param<dim>")``, the size of that
    dimension when traced and where each channel of the group sits in it
    (a channel read after a concatenation sits at an offset, after flatten at
    H*W indices). ``refused`` says why the group cannot be pruned.
    A group made by hand (no ``indices``) cuts channel k of each layer and consumer.
    """

    layers: list[str]
    consumers: list[str]
    channels: int | None = None
    refused: str | None = None
    indices: dict = field(default_factory=dict, repr=False, compare=False)


PRIORITY = (OUTPUT, INPUT, "attention")


def priority(reason: str) -> int:
    return next((i for i, start in enumerate(PRIORITY) if reason.startswith(start)), len(PRIORITY))


def coupled_channel_groups(trace: Trace) -> list[ChannelGroup]:
    """Group the channels of the traced layers that must be pruned together."""
    walk = follow_channels(trace)
    channels, root = walk.channels, walk.channels.roots()
    for a, b, reason in channels.checks:  # what had to end up joined, and did not
        a, b = torch.broadcast_tensors(root[a], root[b])
        channels.flag(torch.cat([a[a != b], b[a != b]]), reason)
    slots = {**walk.slots, **parameter_slots(walk, root)}
    reason = first_reasons(channels, root)
    order = {name: i for i, name in enumerate(trace.names.values())}
    owner = lambda name: order.get(name, order.get(name.rpartition(".")[0], 0))  # noqa: E731
    keys = sorted(slots, key=lambda key: (owner(key[0]), key[1]))
    roots = [root[slots[key]] for key in keys]
    group_of, channel_of, sizes = number_channels(channels.count, keys, roots, reason)

    indices = [{} for _ in sizes]  # per group: slot -> (size, where each channel sits)
    for key, r in zip(keys, roots):
        inside = group_of[r] >= 0
        g, c, positions = group_of[r][inside], channel_of[r][inside], torch.arange(len(r))[inside]
        positions = positions[torch.argsort(g * (len(r) + 1) + c, stable=True)]
        for number, run in zip(*torch.unique_consecutive(g.sort().values, return_counts=True)):
            taken, positions = positions[:run], positions[run:]
            indices[number][key] = (len(r), taken.reshape(int(sizes[number]), -1).tolist())
    refused = torch.full((len(sizes),), -1)  # every channel of a group has the same reason
    refused[group_of[group_of >= 0]] = reason[group_of >= 0]
    groups = []
    for number, where in enumerate(indices):
        first = int(refused[number])
        grouped = {name for name, role in where  # a grouped conv reads and makes the group
                   if role == "out" and getattr(walk.modules.get(name), "groups", 1) > 1}
        groups.append(ChannelGroup(
            layers=list(dict.fromkeys(name for name, role in where if role != "in")),
            consumers=list(dict.fromkeys(name for name, role in where
                                         if role == "in" and name not in grouped)),
            channels=int(sizes[number]),
            refused=None if first < 0 else channels.flags[first][1], indices=where))
    return groups


def parameter_slots(walk: ChannelWalk, root: torch.Tensor) -> dict:
    """``{(name, "param<dim>"): atoms}`` for each parameter used on channels, one per channel
    along ``dim``; a parameter used on them otherwise makes them unprunable."""
    held = torch.zeros(walk.channels.count, dtype=torch.bool)
    for atoms in walk.slots.values():
        held[root[atoms]] = True
    slots = {}
    for name, (_, atoms) in walk.parameters.items():
        joined = root[atoms]
        if not held[joined].any():
            continue
        dim = next((d for d in range(joined.dim())
                    if torch.equal(joined, first_along(joined, d).expand_as(joined))), None)
        if dim is None:
            walk.channels.flag(atoms, f"parameter {name} is used on these channels but not as "
                                      "one value per channel")
        else:
            slots[(name, f"param{dim}")] = first_along(atoms, dim).reshape(-1)
    return slots


def first_reasons(channels: Channels, root: torch.Tensor) -> torch.Tensor:
    """Per root atom, the flag whose reason comes first (``PRIORITY``), or -1."""
    none = 2 ** 62
    first = torch.full((channels.count,), none)  # priority << 32 | flag number
    for i, (atoms, reason) in enumerate(channels.flags):
        index = root[atoms]
        first.scatter_reduce_(0, index, torch.full_like(index, priority(reason) << 32 | i), "amin")
    return torch.where(first == none, -1, first & 0xFFFFFFFF)


def number_channels(count: int, keys: list, roots: list, reason: torch.Tensor) -> tuple:
    """Number the groups and, in each, its channels: per root atom, its group (-1: none) and
    channel; and each group's size. Roots that reach the same slots as often, and are refused
    for the same reason, form a group (a random hash of their slots, for all at once); groups
    and channels are numbered in the order of the first slot and index that hold them."""
    signature = torch.zeros(count, dtype=torch.long)
    carried = torch.zeros(count, dtype=torch.bool)  # made or carried by a layer, not only read
    place = torch.full((count,), 2 ** 62)
    weights = torch.randint(1, 2 ** 62, (len(keys),), generator=torch.Generator().manual_seed(0))
    for i, (key, r) in enumerate(zip(keys, roots)):
        signature.index_add_(0, r, weights[i].expand_as(r))
        carried[r] |= key[1] != "in"
        place.scatter_reduce_(0, r, i << 32 | torch.arange(len(r)), "amin")
    members = carried.nonzero().reshape(-1)
    members = members[torch.argsort(place[members])]
    _, group = torch.unique(torch.stack([signature[members], reason[members]], 1), dim=0,
                            return_inverse=True)
    first_member = torch.full((int(group.max()) + 1 if len(group) else 0,), 2 ** 62)
    first_member.scatter_reduce_(0, group, torch.arange(len(group)), "amin")
    renumber = torch.empty_like(first_member)
    renumber[torch.argsort(first_member)] = torch.arange(len(first_member))
    group = renumber[group]
    by_group = torch.argsort(group, stable=True)
    members, group = members[by_group], group[by_group]
    sizes = torch.bincount(group, minlength=len(first_member))
    group_of, channel_of = torch.full((count,), -1), torch.zeros(count, dtype=torch.long)
    group_of[members] = group
    channel_of[members] = torch.arange(len(members)) - (torch.cumsum(sizes, 0) - sizes)[group]
    return group_of, channel_of, sizes


def first_along(labels: torch.Tensor, dim: int) -> torch.Tensor:
    """``labels`` at index 0 of every dim but ``dim``."""
    for d in range(labels.dim()):
        if d != dim:
            labels = labels.narrow(d, 0, 1)
    return labels


# --- cutting the channels -----------------------------------------------------------------

def prune_channel_group(model: nn.Module, group: ChannelGroup, drop) -> None:
    """Remove channels ``drop`` of ``group`` from every layer that holds them, in place."""
    prune_channel_groups(model, [(group, drop)])


def prune_channel_groups(model: nn.Module, drops) -> None:
    """Remove, for each ``(group, channels)`` of ``drops``, those channels, in place.

    Groups from one trace (``coupled_channel_groups``) can be pruned together;
    a group refused, a channel out of range, or a model changed since the
    trace raises a ValueError before any layer is changed.
    """
    model = unwrap_model(model)
    changes = []
    for name, roles in by_owner(plan(model, drops)).items():
        if any(role.startswith("param") for role in roles):
            owner_name, _, attribute = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            (role, (size, dropped)), = roles.items()
            dim = int(role[len("param"):])
            keep = kept(name, size, dropped, getattr(owner, attribute).shape[dim])
            changes += cut_parameter(owner, attribute, dim, keep)
        else:
            module = model.get_submodule(name)
            out, inp = roles.get("out"), roles.get("in")
            changes += cut_layer(module,
                                 out and kept(name, *out, channel_count(module, "out")),
                                 inp and kept(name, *inp, channel_count(module, "in")))
    for owner, attribute, value in changes:  # everything was checked: now change
        setattr(owner, attribute, value)


def plan(model: nn.Module, drops) -> dict:
    """``{(name, role): (size, indices to drop)}`` for the channels ``drops`` names."""
    found = {}
    for group, drop in drops:
        if group.refused:
            raise ValueError(f"cannot prune the group of {group.layers[0]!r} "
                             f"({group.channels} channels): {group.refused}; nothing was changed")
        indices = group.indices or by_hand(model, group)
        n = len(next(iter(indices.values()))[1])
        drop = [operator.index(c) for c in drop]
        if not drop or not all(0 <= c < n for c in drop) or len(set(drop)) >= n:
            raise ValueError(f"drop must name some but not all of the {n} channels of the group "
                             f"of {group.layers[0]!r} (0 to {n - 1}); got {drop}")
        for key, (size, where) in indices.items():
            known = found.setdefault(key, (size, set()))
            if known[0] != size:
                raise ValueError(f"{key[0]!r} has {size} channels in one group and {known[0]} in "
                                 "another: prune groups of one trace together")
            known[1].update(i for c in drop for i in where[c])
    return found


def by_hand(model: nn.Module, group: ChannelGroup) -> dict:
    """A group made by hand: channel k is index k of each layer's output, each consumer's input."""
    counts = [channel_count(model.get_submodule(name), "out") for name in group.layers]
    n = next((count for count in counts if count), None)
    if n is None:
        raise ValueError(f"group {group.layers} has no conv, linear or BatchNorm layer "
                         "that says how many channels it has")
    indices = {(name, "out"): (count or n, [[k] for k in range(n)])
               for name, count in zip(group.layers, counts)}
    for name in group.consumers:
        count = channel_count(model.get_submodule(name), "in")
        indices[(name, "in")] = (count, [[k] for k in range(n)])
    return indices


def by_owner(found: dict) -> dict:
    owners = {}
    for (name, role), entry in found.items():
        owners.setdefault(name, {})[role] = entry
    return owners


def channel_count(module: nn.Module, role: str) -> int | None:
    attributes = (("out_channels", "out_features", "num_features", "num_channels")
                  if role == "out" else ("in_channels", "in_features"))
    if isinstance(module, nn.LayerNorm) and role == "out":
        return module.normalized_shape[-1]
    if isinstance(module, nn.PReLU) and role == "out":
        return module.num_parameters if module.num_parameters > 1 else None
    return next((getattr(module, a) for a in attributes if hasattr(module, a)), None)


def kept(name: str, size: int, dropped: set, now: int | None) -> torch.Tensor:
    if now != size:
        raise ValueError(f"{name!r} has {now} channels where the trace saw {size}: trace the "
                         "model again after pruning it; nothing was changed")
    return torch.tensor([i for i in range(size) if i not in dropped], dtype=torch.long)


def cut_parameter(owner: nn.Module, attribute: str, dim: int, keep: torch.Tensor) -> list:
    param = getattr(owner, attribute)
    value = param.detach().index_select(dim, keep.to(param.device))
    return [(owner, attribute, nn.Parameter(value, requires_grad=param.requires_grad))]


def whole_groups(keep: torch.Tensor | None, n: int, groups: int) -> list[int]:
    """The groups of ``n`` channels that ``keep`` leaves (each whole, or none of it)."""
    if keep is None:
        return list(range(groups))
    left = sorted({int(k) // (n // groups) for k in keep})
    if len(keep) != len(left) * (n // groups):
        raise ValueError(f"{groups} groups of {n // groups} channels can be cut only whole")
    return left


def cut_conv(conv: nn.Module, keep_out: torch.Tensor | None,
             keep_in: torch.Tensor | None) -> dict:
    """A conv's weight, bias and sizes keeping output channels ``keep_out`` and input channels
    ``keep_in`` (None: all). Transposed: the weight is (in, out / groups, ...), not (out, ...);
    grouped: group g reads input group g only, so both sides must keep the same whole groups."""
    weight, out_dim = conv.weight.detach(), 1 if conv.transposed else 0
    new = {"out_channels": conv.out_channels if keep_out is None else len(keep_out),
           "in_channels": conv.in_channels if keep_in is None else len(keep_in)}
    if conv.groups == 1:
        for dim, keep in ((out_dim, keep_out), (1 - out_dim, keep_in)):
            if keep is not None:
                weight = weight.index_select(dim, keep.to(weight.device))
    else:  # dim 0 holds one block of rows per group
        left = whole_groups(keep_out, conv.out_channels, conv.groups)
        if left != whole_groups(keep_in, conv.in_channels, conv.groups):
            raise ValueError(f"{conv} must lose the same groups of its input and output")
        rows = keep_in if conv.transposed else keep_out
        if rows is not None:
            weight = weight.index_select(0, rows.to(weight.device))
        new["groups"] = len(left)
    new["weight"] = weight
    if conv.bias is not None and keep_out is not None:
        new["bias"] = conv.bias.detach().index_select(0, keep_out.to(weight.device))
    return new


def cut_layer(module: nn.Module, keep_out: torch.Tensor | None,
              keep_in: torch.Tensor | None) -> list:
    """The new weights and sizes of ``module`` keeping output channels ``keep_out`` and input
    channels ``keep_in`` (None: all), as ``(module, attribute, value)``; changes nothing."""
    new = {}
    if isinstance(module, _ConvNd):
        new = cut_conv(module, keep_out, keep_in)
    elif isinstance(module, nn.Linear):
        weight = module.weight.detach()
        if keep_out is not None:
            weight = weight.index_select(0, keep_out.to(weight.device))
            new["out_features"] = len(keep_out)
        if keep_in is not None:
            weight = weight.index_select(1, keep_in.to(weight.device))
            new["in_features"] = len(keep_in)
        new["weight"] = weight
    elif isinstance(module, _BatchNorm):
        new["num_features"] = len(keep_out)
        for name in ("weight", "running_mean", "running_var"):
            tensor = getattr(module, name)
            if tensor is not None:
                new[name] = tensor.detach()[keep_out.to(tensor.device)]
    elif isinstance(module, nn.GroupNorm):
        new["num_groups"] = len(whole_groups(keep_out, module.num_channels, module.num_groups))
        new["num_channels"] = len(keep_out)
        if module.weight is not None:
            new["weight"] = module.weight.detach()[keep_out.to(module.weight.device)]
    elif isinstance(module, nn.PReLU):
        new["num_parameters"] = len(keep_out)
        new["weight"] = module.weight.detach()[keep_out.to(module.weight.device)]
    else:
        raise TypeError(f"cannot prune the channels of {type(module).__name__}")
    if getattr(module, "bias", None) is not None and keep_out is not None and "bias" not in new:
        new["bias"] = module.bias.detach()[keep_out.to(module.bias.device)]
    changes = []
    for name, value in new.items():
        old = getattr(module, name)
        if isinstance(old, nn.Parameter):
            value = nn.Parameter(value, requires_grad=old.requires_grad)
        changes.append((module, name, value))
    return changes


def zero_channel_groups(model: nn.Module, drops) -> None:
    """Make the channels ``drops`` names carry zeros, in place: what pruning them must equal.

    Zeroes each channel where it is made: its rows of a conv or linear weight and bias, its
    BatchNorm or GroupNorm scale and shift, its entries of a parameter used on it.
    """
    model = unwrap_model(model)
    with torch.no_grad():
        for (name, role), (_, dropped) in plan(model, drops).items():
            index = sorted(dropped)
            if role.startswith("param"):
                owner_name, _, attribute = name.rpartition(".")
                param = getattr(model.get_submodule(owner_name), attribute)
                param.index_fill_(int(role[5:]), torch.tensor(index, device=param.device), 0)
                continue
            module = model.get_submodule(name)
            if role != "out":
                continue
            if isinstance(module, _ConvNd) and module.transposed:
                per_group_in = module.in_channels // module.groups
                per_group_out = module.out_channels // module.groups
                for channel in index:
                    group, row = divmod(channel, per_group_out)
                    module.weight[group * per_group_in:(group + 1) * per_group_in, row] = 0
            elif isinstance(module, (_ConvNd, nn.Linear)):
                module.weight[index] = 0
            elif isinstance(module, _BatchNorm) and not module.affine:
                module.running_mean[index] = 0  # (0 - mean) / std is 0 only if the mean is
            elif getattr(module, "weight", None) is not None and not isinstance(module, nn.PReLU):
                module.weight[index] = 0
            if getattr(module, "bias", None) is not None:
                module.bias[index] = 0


def batchnorm_scale(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Each channel's BatchNorm |γ|, summed over the group's BatchNorms (network slimming's
    criterion: a channel whose scale is small contributes little)."""
    model, score = unwrap_model(model), torch.zeros(group.channels or 0)
    for (name, role), (_, where) in group.indices.items():
        module = model.get_submodule(name) if role == "out" else None
        if isinstance(module, _BatchNorm) and module.affine:
            gamma = module.weight.detach().abs().cpu()
            score += torch.stack([gamma[indices].sum() for indices in where])
    return score


# --- Wrong: concatenation starts new channels ----------------------------------------------

def coupled_channel_groups_where_cat_starts_new(trace: Trace) -> list[ChannelGroup]:
    """Wrong: a conv or linear layer starts new channels, so does a concatenation, and every
    other operation joins the channels of its inputs.

    The layers that read a ``torch.cat`` are nobody's consumers, so pruning a
    group that feeds one leaves them expecting the old channel count; a split
    is treated as element-wise, so its pieces' readers are cut at the wrong
    index. Use ``coupled_channel_groups``.
    """
    parent = []

    def find(space):
        while parent[space] != space:
            space = parent[space]
        return space

    def new_space():
        parent.append(len(parent))
        return len(parent) - 1

    space_of, layers, consumers = {}, [], []
    for node in nodes_in_order(output_nodes(trace.output)):
        inputs = [space_of[p] for p, _ in node.next_functions
                  if p is not None and not hasattr(p, "variable") and p in space_of]
        module = trace.nodes.get(node)
        new = isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and not (
            module.groups == module.in_channels == module.out_channels))
        if new:
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
    groups = {}
    for space, name in layers:
        group = groups.setdefault(find(space), ChannelGroup([], []))
        if name not in group.layers:
            group.layers.append(name)
    for space, name in consumers:
        if find(space) in groups and name not in groups[find(space)].consumers:
            groups[find(space)].consumers.append(name)
    order = {name: i for i, name in enumerate(trace.names.values())}
    return sorted(groups.values(), key=lambda group: order[group.layers[0]])
