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
# # grad_fn: drawing the graph
#
# The second page of [Tracing structure through grad_fn](../): the trace that
# the [first page](../#from-nodes-back-to-modules) maps to layers, drawn as a
# graph. The network is the same `tiny_resnet` (a stem and two torchvision
# `BasicBlock`s, its source is on that page), on the same input:

# %%
import torch

from tutorials_pkg.demo_models import tiny_resnet
from tutorials_pkg.runtime import default_device
from tutorials_pkg.source import show_source

torch.manual_seed(0)
device = default_device()
model = tiny_resnet().to(device)
x = torch.randn(2, 3, 32, 32, device=device)

# %% [markdown]
# ## From a trace to a graph
#
# `layer_edges` takes a trace and walks its graph from the input to the
# output (`nodes_in_order` puts each node after its inputs). A node that
# belongs to a layer becomes a box; a node that merges two branches (add,
# multiply, concatenate) stays as a small circle, because that is where a
# residual connection joins; every other node (ReLU, pooling, reshaping) is
# walked through, passing on the layers its value came from.

# %%
from tutorials_pkg.grad_fn import layer_edges, module_graph, trace_grad_fn

show_source(layer_edges)

# %% [markdown]
# ## The graph of `tiny_resnet`
#
# `module_graph(trace)` keeps the two in a `ModuleGraph`, whose `mermaid()`
# returns Mermaid source, which this site (and Jupyter) draws as a diagram:

# %%
trace = trace_grad_fn(model, x)  # one forward pass
graph = module_graph(trace)
graph.mermaid("LR")  # left to right

# %% [markdown]
# ## The residual adds
#
# The two `+` are the residual adds that `print(model)` never shows: the first
# adds the stem's output to the first block's; the second adds the strided
# shortcut to the second block's. Nothing in the graph was written by hand.

# %%
residual_edges = {("1", "+1"), ("3.bn2", "+1"), ("4.downsample.1", "+2"), ("4.bn2", "+2")}
assert residual_edges <= set(graph.edges)
