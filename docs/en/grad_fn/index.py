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
# the modules that made them, draws the graph, and finds the channels that a
# residual add ties together.
#
# Every output on this page was produced by running the code when the site was
# built, on the versions printed below.

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
# that node to the layer is the bridge between the two. `grad_fn_modules`
# returns it; the work is done by `trace_grad_fn`, which also keeps the
# model's output (where the walk starts) and the input it ran on (where the
# walk ends). Both take care of what breaks the naive version (see the last
# section): they refuse to run where autograd records nothing, make every
# parameter require grad for the trace (frozen layers make no graph) and put
# each flag back afterwards, run in eval mode and restore each module's mode
# (no BatchNorm statistic moves), and raise when two layers share one node.
# They take the input the way the model does: a tensor, a list or dict of
# tensors as the one argument (a detection model's list of images:
# `grad_fn_modules(model, images)` calls `model(images)`), or a tuple of
# positional arguments; the model runs on a copy, so a model that changes its
# input in place does not change yours. `types` is a module class, or a list
# or tuple of them.

# %%
from tutorials_pkg.grad_fn import grad_fn_modules
from tutorials_pkg.source import show_source

show_source(grad_fn_modules)

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

nodes = grad_fn_modules(model, x)
names = {module: name for name, module in model.named_modules()}
for node, module in nodes.items():
    print(f"{node.name():28} <- {names[module]} ({type(module).__name__})")
layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
assert len(nodes) == len(layers) == 13

# %% [markdown]
# ## Drawing the graph
#
# `module_graph` takes a trace and walks its graph from the output back to the
# input. A node that belongs to a layer becomes a box; a node that merges two branches
# (add, multiply, concatenate) stays as a small circle, because that is where
# a residual connection joins; every other node (ReLU, pooling, reshaping) is
# walked through. `graph.mermaid()` returns Mermaid source, which this site
# (and Jupyter) draws as a diagram:

# %%
from tutorials_pkg.grad_fn import module_graph, trace_grad_fn

show_source(module_graph)

# %%
trace = trace_grad_fn(model, x)  # one forward pass, for the graph and the groups below
graph = module_graph(trace)
graph.mermaid("LR")  # left to right

# %% [markdown]
# The two `+` are the residual adds that `print(model)` never shows: the first
# adds the stem's output to the first block's; the second adds the strided
# shortcut to the second block's. Nothing in the graph was written by hand.

# %%
residual_edges = {("1", "+1"), ("3.bn2", "+1"), ("4.downsample.1", "+2"), ("4.bn2", "+2")}
assert residual_edges <= set(graph.edges)

# %% [markdown]
# ## Channels a residual add couples
#
# Structured pruning removes whole channels: drop output channel *k* of a
# convolution, and channel *k* of the BatchNorm after it, and input channel
# *k* of every layer that reads it. A residual add makes that a group affair:
# `a + b` needs `a` and `b` to have the same channels, so removing channel *k*
# from the convolution that makes `a` forces removing it from the one that
# makes `b`, and from everything that reads the sum. `coupled_channel_groups`
# finds these groups from the graph: going from input to output, a conv or
# linear layer starts new channels, and an element-wise operation (an add, an
# activation, pooling, a BatchNorm, a depthwise conv) joins the channels of its
# inputs into one group.

# %%
from tutorials_pkg.grad_fn import coupled_channel_groups

show_source(coupled_channel_groups)

# %%
for group in coupled_channel_groups(trace):
    print(group)

# %% [markdown]
# The first group is the residual stream of the first block: the stem conv,
# its BatchNorm, and the block's `conv2` with its BatchNorm all write into the
# same 8 channels. ResNet-18's `layer1` is the same thing at full size: the
# stem and both blocks' second convolution share 64 channels, read by four
# convolutions.

# %%
import torchvision

resnet = torchvision.models.resnet18(weights=None).to(device).eval()
image = torch.randn(1, 3, 64, 64, device=device)
resnet_groups = coupled_channel_groups(trace_grad_fn(resnet, image))
stream = next(group for group in resnet_groups if "layer1.0.conv2" in group.layers)
print("layers:   ", stream.layers)
print("consumers:", stream.consumers)
assert stream.layers == ["conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2",
                         "layer1.1.conv2", "layer1.1.bn2"]

# %% [markdown]
# Prune one convolution of the group on its own (here `layer1.0.conv2` and its
# BatchNorm lose channel 0) and the shapes no longer meet at the add, which
# fails with a `RuntimeError`:

# %% tags=["raises-exception"] raises="RuntimeError"
from tutorials_pkg.grad_fn import ChannelGroup, prune_channel_group

alone = ChannelGroup(["layer1.0.conv2", "layer1.0.bn2"], [])
prune_channel_group(resnet, alone, drop=[0])
resnet(image)

# %% [markdown]
# Pruning the whole group, every layer that writes the channel and every layer
# that reads it, gives a smaller network that runs:

# %%
show_source(prune_channel_group)

# %%
resnet = torchvision.models.resnet18(weights=None).to(device).eval()
before = sum(p.numel() for p in resnet.parameters())
prune_channel_group(resnet, stream, drop=list(range(16)))  # 64 -> 48 channels
after = sum(p.numel() for p in resnet.parameters())
print(resnet(image).shape, f"parameters {before:,} -> {after:,}")
assert resnet.layer1[1].conv2.out_channels == 48
assert resnet.layer2[0].conv1.in_channels == 48

# %% [markdown]
# Which channels to drop (the ones with the smallest weights, or the least
# effect on the loss) is the pruning method's choice; which layers must drop
# them together is what the graph says.
#
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
# That is why the default `types` are layers that compute something (`Conv2d`,
# `BatchNorm2d`, `Linear`, `PReLU`). An in-place ReLU does not collide: it
# changes the tensor's `grad_fn` to a new node whose input is the old one. A
# module called twice is not a collision either: two nodes, one module.
#
# ## Why the 2-D layers, not `_ConvNd` and `_BatchNorm`
#
# The blog post on pruning YOLOv5 that this page answers hooks every
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
# The defaults are the layers whose channels the pruning section above can
# cut. A transposed convolution is one it cannot, and it says so with a
# `TypeError` rather than cutting the wrong dimension:

# %% tags=["raises-exception"] raises="TypeError"
from tutorials_pkg.grad_fn import keep_output_channels

keep_output_channels(nn.ConvTranspose2d(4, 8, 3), torch.tensor([0, 1]))

# %% [markdown]
# For the mapping alone, any layer will do: pass the classes you need, as a
# list or a tuple. A 1-D convolutional net (audio, sequences):

# %%
audio = nn.Sequential(nn.Conv1d(2, 4, 5), nn.BatchNorm1d(4), nn.ReLU(), nn.Conv1d(4, 4, 5))
audio_nodes = grad_fn_modules(audio, torch.randn(1, 2, 32), types=[nn.Conv1d, nn.BatchNorm1d])
print([(node.name(), type(module).__name__) for node, module in audio_nodes.items()])
assert len(audio_nodes) == 3 and not grad_fn_modules(audio, torch.randn(1, 2, 32))

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
# `module_graph` and `coupled_channel_groups` return names, not nodes, so
# their results hold nothing; the `trace` kept above for them holds its graph
# until it goes too.
#
# ## What goes wrong in the wild
#
# ### Tracing under `torch.no_grad()`
#
# The naive version is three lines: a hook that stores
# `{output.grad_fn: module}`.

# %%
from tutorials_pkg.grad_fn import grad_fn_modules_without_checks

show_source(grad_fn_modules_without_checks)

# %% [markdown]
# Called where gradients are off, as in an evaluation loop, every `grad_fn` is
# `None`: all thirteen layers land on one key, and the last one wins. No error
# says so.

# %%
with torch.no_grad():
    naive = grad_fn_modules_without_checks(model, x)
print(naive)
assert list(naive) == [None] and naive[None] is model[7]

# %% [markdown]
# `grad_fn_modules` checks `torch.is_grad_enabled()` first and raises a
# `RuntimeError` that says what to do:

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.no_grad():
    grad_fn_modules(model, x)

# %% [markdown]
# Inside `torch.inference_mode()` it is worse: even `torch.enable_grad()`
# records nothing there. `grad_fn_modules` checks
# `torch.is_inference_mode_enabled()` and raises a `RuntimeError` as well:

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.inference_mode(), torch.enable_grad():
    grad_fn_modules(model, x)

# %% [markdown]
# The fix is to trace outside those blocks, or to switch gradients back on for
# the trace, which works under `no_grad` (not under `inference_mode`):

# %%
with torch.no_grad():
    with torch.enable_grad():
        traced = grad_fn_modules(model, x)
assert None not in traced and len(traced) == 13

# %% [markdown]
# ### Frozen layers give `None` keys
#
# The same silent merge happens with gradients on, when the parameters are
# frozen and the input needs no grad: the frozen layers' outputs have no
# `grad_fn`. Only the last layer, left trainable, gets a real key. The YOLOv5
# blog post met exactly this: its backbone layers came out under `None` until
# it set `requires_grad=True` on every parameter.

# %%
naive = grad_fn_modules_without_checks(frozen, x)
print({node and node.name(): type(module).__name__ for node, module in naive.items()})
assert None in naive and len(naive) == 2  # twelve frozen layers on one None key

# %% [markdown]
# `grad_fn_modules` on the same frozen model traced all 13 layers (above).
#
# ### An `Identity` silently replaces the layer before it
#
# Put `nn.Identity` in the types, say to find the placeholders a model
# surgery left behind, and the naive mapping loses the convolution: the
# Identity's output has the convolution's node, and the later assignment
# overwrites the earlier one.

# %%
with_identity = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Identity(), nn.ReLU()).to(device)
naive = grad_fn_modules_without_checks(with_identity, x, types=(nn.Conv2d, nn.Identity))
print({node.name(): module for node, module in naive.items()})
assert list(naive.values()) == [with_identity[1]]  # the Conv2d is gone

# %% [markdown]
# `grad_fn_modules` notices that a node already belongs to another layer and
# raises a `ValueError` that names both:

# %% tags=["raises-exception"] raises="ValueError"
grad_fn_modules(with_identity, x, types=(nn.Conv2d, nn.Identity))

# %% [markdown]
# Leave layers that pass their input through out of `types`; the default
# `types` already do:

# %%
traced = grad_fn_modules(with_identity, x)
print({node.name(): module for node, module in traced.items()})
assert list(traced.values()) == [with_identity[0]]

# %% [markdown]
# ### A hook list re-bound in the loop
#
# The same blog post registers its hooks in a loop, writing
# `hooks = [m.register_forward_hook(...)]` for each layer it visits. Each
# assignment replaces the list, so after the loop it holds the *last* handle
# only, and removing "all" hooks removes one:

# %%
from tutorials_pkg.grad_fn import grad_fn_modules_keeping_only_the_last_hook

show_source(grad_fn_modules_keeping_only_the_last_hook)

# %% [markdown]
# Twelve of the thirteen hooks stay on their modules. Every later forward pass,
# a training step or an evaluation, keeps adding to the dictionary, and the
# dictionary keeps each pass's graph and activations (see "A trace holds the
# graph until you let it go"):

# %%
leaky = tiny_resnet().to(device)
leaky_nodes = grad_fn_modules_keeping_only_the_last_hook(leaky, x)
still_hooked = [name for name, m in leaky.named_modules() if m._forward_hooks]
print(len(leaky_nodes), "nodes;", len(still_hooked), "modules still hooked:", still_hooked[:4], "...")
leaky(x)  # one more forward pass, anywhere later
print(len(leaky_nodes), "nodes after one more forward pass")
assert len(still_hooked) == 12 and len(leaky_nodes) == 13 + 12

# %% [markdown]
# `trace_grad_fn` (shown above) builds the list of handles in one
# comprehension and removes every one of them in a `finally`:

# %%
clean = tiny_resnet().to(device)
grad_fn_modules(clean, x)
assert not any(m._forward_hooks for m in clean.modules())
print("hooks left:", sum(len(m._forward_hooks) for m in clean.modules()))

# %% [markdown]
# ### `torch.load('best.pt')['model']`
#
# The blog post loads its model as `torch.load('best.pt')['model']`: the
# checkpoint holds the whole pickled model. Since PyTorch 2.6, `torch.load`
# defaults to `weights_only=True`, which unpickles only tensors, plain Python
# values and containers, and classes on an allowlist; it refuses the model's
# classes with an `UnpicklingError`:

# %% tags=["raises-exception"] raises="UnpicklingError"
import os
import tempfile

folder = tempfile.TemporaryDirectory()
checkpoint = os.path.join(folder.name, "best.pt")
torch.save({"model": tiny_resnet().requires_grad_(False), "epoch": 3}, checkpoint)
torch.load(checkpoint)["model"]

# %% [markdown]
# `weights_only=False` loads it, and runs whatever code the pickle names: do
# it only for a file you made yourself or fully trust. The lasting fix is to
# save the `state_dict` and build the model in code; the
# [saving and loading page](../save_load/) shows how, and how to load such
# files safely. The loaded model's parameters are frozen, as in that post,
# and `grad_fn_modules` traces it all the same:

# %%
trusted = torch.load(checkpoint, weights_only=False)["model"].to(device)
folder.cleanup()
print(len(grad_fn_modules(trusted, x)), "layers traced")
assert not any(p.requires_grad for p in trusted.parameters())
