# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tracing structure through grad_fn
#
# While a forward pass runs, autograd records how every tensor was made: each
# result carries a `grad_fn`, the node of the graph that will compute its
# gradient, and each node's `next_functions` point to the nodes of its inputs.
# That recorded graph is the model as it really *ran*, residual connections
# included, which `print(model)` does not show. Pruning tools read it to find
# the layers that must be pruned together. This page maps the nodes back to
# the modules that made them; the pages after it draw the graph and find the
# channels that must be pruned together:
#
# - [Drawing the graph](drawing/): a traced network's layers and residual adds,
#   as a diagram.
# - [Channels pruned together](pruning/): the channels residual adds,
#   concatenations and splits tie together, and pruning them as one group, on a
#   small YOLO-style detector too.
# - [In the wild](in_the_wild/): tracing under `no_grad`, frozen layers,
#   `Identity`, hooks left behind, `torch.load`.
#
# Every output in this chapter was produced by running the code when the site
# was built, on the versions printed below.

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## `grad_fn` and `next_functions`
#
# A convolution, a BatchNorm and a ReLU. The result's `grad_fn` is the ReLU's
# node; its `next_functions` lead to the BatchNorm's node, and from there to
# the convolution's:

# %%
import torch
from torch import nn

torch.manual_seed(0)
conv, bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
x = torch.randn(1, 3, 8, 8)
y = torch.relu(bn(conv(x)))

relu_node = y.grad_fn
bn_node = relu_node.next_functions[0][0]
conv_node = bn_node.next_functions[0][0]
for node in (relu_node, bn_node, conv_node):
    inputs = [(parent.name() if parent else None, index) for parent, index in node.next_functions]
    print(f"{node.name():26} next_functions: {inputs}")

# %% [markdown]
# A node prints as its class and its address in memory; `node.name()` is the
# class name alone, which is what the walk needs. Each entry of
# `next_functions` is a pair (node, index of that node's output). An
# `AccumulateGrad` node is a leaf: a tensor that requires grad, here a
# parameter (`node.variable` is the parameter itself). `None` is an
# input that requires no grad: the picture `x`, and the missing bias. This is
# what PyTorch's documentation of `torch.autograd.graph.Node.next_functions`
# says, and it is all we need to walk the graph.
#
# ## From nodes back to modules
#
# The graph knows operations, not modules. A forward hook on each layer of
# interest sees the layer's output, and so its `grad_fn`: a dictionary from
# that node to the layer is the bridge between the two. `record_grad_fn` runs
# the model once with such hooks; it also keeps, for each layer, the nodes of
# the tensors it read (the pruning page needs them), and the model's output,
# where a walk of the graph starts:

# %%
from tutorials_pkg.grad_fn import record_grad_fn
from tutorials_pkg.source import show_source

show_source(record_grad_fn)

# %% [markdown]
# Two of its lines stop a silent wrong result: an output autograd recorded
# nothing for has no node (its `grad_fn` is `None`, and all such outputs would
# share that one key), and a layer that returns its input unchanged would take
# the node of the layer before it (see [in the wild](in_the_wild/)).
#
# `grad_fn_modules(model, x)` returns the dictionary, and `trace_grad_fn`
# the whole trace; both call `record_grad_fn`, and the rest of
# `tutorials_pkg/grad_fn/trace.py`
# takes care of what breaks the naive version: they refuse to run where
# autograd records nothing (`no_grad`, `inference_mode`), make every parameter
# require grad for the trace (frozen layers make no graph) and put each flag
# back afterwards, run in eval mode and restore each module's mode (no
# BatchNorm statistic moves), and run the model on a copy of the input, so a
# model that changes its input in place does not change yours. They take the
# input the way the model does: a tensor, a list or dict of tensors as the one
# argument (a detection model's list of images: `grad_fn_modules(model,
# images)` calls `model(images)`), or a tuple of positional arguments. `types`
# is a module class, or a list or tuple of them.

# %% [markdown]
# The network to trace: a stem and two torchvision `BasicBlock`s, the second
# with a strided 1×1 convolution on its shortcut, as in ResNet's `layer2`.

# %%
from tutorials_pkg.demo_models import tiny_resnet

show_source(tiny_resnet)

# %%
from tutorials_pkg.runtime import default_device

device = default_device()
model = tiny_resnet().to(device)
x = torch.randn(2, 3, 32, 32, device=device)

from tutorials_pkg.grad_fn import grad_fn_modules

nodes = grad_fn_modules(model, x)
names = {module: name for name, module in model.named_modules()}
for node, module in nodes.items():
    print(f"{node.name():28} <- {names[module]} ({type(module).__name__})")
layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
assert len(nodes) == len(layers) == 13

# %% [markdown]
# ## Frozen parameters
#
# A frozen layer, `requires_grad=False` on its parameters, records no graph of
# its own when its input needs no grad either. `grad_fn_modules` makes every
# parameter require grad for the trace, and puts every flag back:

# %%
frozen = tiny_resnet().to(device)
for param in frozen.parameters():
    param.requires_grad_(False)
frozen[7].requires_grad_(True)  # fine-tune the last layer only
flags = [param.requires_grad for param in frozen.parameters()]

print(len(grad_fn_modules(frozen, x)), "layers traced")
assert [param.requires_grad for param in frozen.parameters()] == flags

# %% [markdown]
# ## What collides: `nn.Identity`
#
# A module that returns its input unchanged returns the *same tensor*, so its
# output has its input's `grad_fn`. `nn.Identity` does this, and so does
# `nn.Dropout` in eval mode. As keys of a dictionary, two such layers are one:

# %%
conv_out = conv(torch.randn(1, 3, 8, 8))
print(nn.Identity()(conv_out).grad_fn is conv_out.grad_fn)
print(nn.Dropout().eval()(conv_out).grad_fn is conv_out.grad_fn)

# %% [markdown]
# That is why the default `types` are layers that compute something: the
# convolutions (1-D, 2-D, 3-D and transposed), `Linear`, the BatchNorms,
# `GroupNorm`, `LayerNorm` and `PReLU`. An in-place ReLU does not collide: it
# changes the tensor's `grad_fn` to a new node whose input is the old one. A
# module called twice is not a collision either: two nodes, one module.
#
# ## Named layers, not `_ConvNd` and `_BatchNorm`
#
# The blog post on pruning YOLOv5 that this chapter answers hooks every
# `_ConvNd` and `_BatchNorm`. Those are the private base classes (the
# underscore; `torch.nn` does not export them) of every convolution and every
# BatchNorm: 1-D and 3-D ones, `SyncBatchNorm`, and the transposed
# convolutions, whose weight keeps its *output* channels in dimension 1, not 0:

# %%
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

print("exported by torch.nn:", hasattr(nn, "_ConvNd"), hasattr(nn, "_BatchNorm"))
covered = [cls.__name__ for cls in (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d, nn.SyncBatchNorm)
           if issubclass(cls, (_ConvNd, _BatchNorm))]
print("also matched:", covered)
print("Conv2d(4, 8, 3).weight:         ", tuple(nn.Conv2d(4, 8, 3).weight.shape))
print("ConvTranspose2d(4, 8, 3).weight:", tuple(nn.ConvTranspose2d(4, 8, 3).weight.shape))
assert len(covered) == 4

# %% [markdown]
# A pruner that takes every convolution's weight to be (out, in, ...) cuts a
# transposed convolution's input channels where it means its outputs. The
# default `types` name each class, so no layer type is mapped without a rule
# written for it, and the [pruning page](pruning/)'s `cut_conv` takes a
# transposed convolution's output channels from dimension 1. Keeping output
# channels 0 and 1 of a `ConvTranspose2d(4, 8, 3)`:

# %%
from tutorials_pkg.grad_fn import cut_conv

cut = cut_conv(nn.ConvTranspose2d(4, 8, 3), keep_out=torch.tensor([0, 1]), keep_in=None)
print("weight:", tuple(cut["weight"].shape), " out_channels:", cut["out_channels"])
assert cut["weight"].shape == (4, 2, 3, 3)

# %% [markdown]
# For the mapping alone, any layer will do: pass the classes you need, as a
# list or a tuple. A 1-D convolutional net (audio, sequences), its
# convolutions only:

# %%
audio = nn.Sequential(nn.Conv1d(2, 4, 5), nn.BatchNorm1d(4), nn.ReLU(), nn.Conv1d(4, 4, 5))
audio_nodes = grad_fn_modules(audio, torch.randn(1, 2, 32), types=[nn.Conv1d])
print([(node.name(), type(module).__name__) for node, module in audio_nodes.items()])
assert len(audio_nodes) == 2 and len(grad_fn_modules(audio, torch.randn(1, 2, 32))) == 3

# %% [markdown]
# ## A trace holds the graph until you let it go
#
# Each node keeps what autograd saved to compute its gradient: for a
# convolution its input, for a BatchNorm its input and statistics, for a ReLU
# its output. The dictionary `grad_fn_modules` returns holds the nodes, and
# through their `next_functions` the whole graph, so as long as you keep it,
# every saved activation of that forward pass stays in memory (on a GPU, in
# GPU memory). `SavedTensors` records, through
# `torch.autograd.graph.saved_tensors_hooks`, what autograd saves inside a
# block, and how much of it is still held:

# %%
from tutorials_pkg.grad_fn import SavedTensors

show_source(SavedTensors)

# %%
with SavedTensors() as saved:
    kept_nodes = grad_fn_modules(model, x)
print(f"activations the nodes hold: {saved.kept_bytes():,} bytes")
layer_names = sorted(names[module] for module in set(kept_nodes.values()))
del kept_nodes  # keep the names (plain strings), drop the nodes
print(f"after del:                  {saved.kept_bytes():,} bytes")
assert saved.kept_bytes() == 0 and len(layer_names) == 13

# %% [markdown]
# `module_graph` ([drawing the graph](drawing/)) and `coupled_channel_groups`
# ([channels pruned together](pruning/)) return names, not nodes, so their
# results hold nothing; the `trace` those pages keep for them holds its graph
# until it goes too.
