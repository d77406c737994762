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
# # Four ways to get intermediate outputs
#
# A model's `forward` returns its last layer. Often you want what a layer
# inside it computed: features for another model, a backbone for a detector,
# feature maps to look at. Four common ways to get them:
#
# 1. run the model's top-level children yourself, in order;
# 2. let torchvision's `IntermediateLayerGetter` do exactly that;
# 3. trace the model into a graph with `torch.fx` and return any node of it
#    (torchvision's `create_feature_extractor`);
# 4. run the model as it is and record outputs with forward hooks.
#
# `tutorials_pkg.intermediate` has all four with one signature,
# `fn(model, x, names) -> dict[str, Tensor]`, so this chapter runs them side
# by side: what each can reach, where each breaks, what each costs. Then two
# more uses of hooks: the *input* of a layer (`by_pre_hooks`) and the gradient
# with respect to its output (`grads_by_hooks`). The chapter has five pages:
#
# - this page: the four methods, and how each works;
# - [What each method can reach](reach/): nested modules and operations, the
#   model's own `forward`, in-place operations, control flow under FX, and a
#   detector's backbone;
# - [Layer inputs, gradients and cost](inputs_and_gradients/): `by_pre_hooks`,
#   `grads_by_hooks`, and the time and memory of the four methods, measured;
# - [Feature maps of a digits CNN](feature_maps/): a small CNN trained on real
#   digits, and its intermediate outputs drawn;
# - [Intermediate outputs: in the wild](in_the_wild/): hooks that keep no
#   copy or are never removed, `x.data` to keep a feature,
#   `nn.Sequential(*model.children())`, and the train mode a failed
#   `create_feature_extractor` leaves on.
#
# Every output in this chapter was produced by running the code when the site
# was built, on the versions printed below.

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# The running example: torchvision's `resnet18` with random weights, in eval
# mode (BatchNorm uses its running statistics), on two random 224×224 images.
# A layer's name is its path of attributes: `named_children()` gives the top
# level, `named_modules()` every nested module. resnet's own `forward` calls
# the children in order and also `torch.flatten(x, 1)` before `fc`.

# %%
import torch
from torchvision.models import resnet18

torch.manual_seed(0)
model = resnet18(weights=None).eval()
x = torch.randn(2, 3, 224, 224)
LAYERS = ["layer1", "layer2", "layer3", "layer4"]
print([name for name, _ in model.named_children()])
print(len(list(model.named_modules())), "modules, e.g.", [n for n, _ in model.named_modules()][5:8])

# %% [markdown]
# ## 1. Run the children yourself: `by_children`
#
# Call the top-level children one after another and keep the outputs asked
# for. Like resnet's `forward`, it flattens before an `nn.Linear` child, and it
# stops after the last child it needs. An unknown name gets a `ValueError`
# listing the names it can reach, as in all four.

# %%
from tutorials_pkg.intermediate import by_children
from tutorials_pkg.source import show_source

show_source(by_children)

# %% [markdown]
# ## 2. torchvision's `IntermediateLayerGetter`: `by_layer_getter`
#
# torchvision builds the backbones of its segmentation models with
# `IntermediateLayerGetter` (in the private module `torchvision.models._utils`,
# so the import may move). It is an `nn.ModuleDict` of the children up to the
# last one asked for, and its `forward` chains them: `by_children` without the
# flatten, returning the tensors as they are when it finishes.

# %%
from tutorials_pkg.intermediate import by_layer_getter

show_source(by_layer_getter)

# %% [markdown]
# ## 3. Trace the graph with `torch.fx`: `by_fx`
#
# `torch.fx` runs `forward` once with placeholder values and records every
# module call and every operation as a node of a graph. torchvision's
# `get_graph_node_names` lists the nodes; it traces twice, in train and in eval
# mode, because the graphs can differ (see
# [two graphs](reach/#fx-control-flow-on-data-and-two-graphs) on the next page):

# %%
from torchvision.models.feature_extraction import get_graph_node_names

train_nodes, eval_nodes = get_graph_node_names(model)
print(len(eval_nodes), "nodes, the same in train and eval mode:", train_nodes == eval_nodes)
print(eval_nodes[:12], eval_nodes[-3:])

# %% [markdown]
# Nodes are modules (`layer1.0.conv1`), operations in `forward` (`layer1.0.add`
# is the residual `+`, `flatten` is `torch.flatten`), and a module called twice
# gets two nodes (`layer1.0.relu`, `layer1.0.relu_1`). A prefix such as
# `layer1` names the last node under it.
#
# `create_feature_extractor` turns the graph into a module that returns the
# requested nodes and drops what they do not need. `build_fx_extractor` adds
# two things: a copy of an output that a later operation also reads (an
# in-place op could change it, see [in-place operations](reach/#in-place-operations)), and a list of the valid nodes when
# a name is wrong. Where FX cannot trace the model, it says where tracing
# stopped and names `by_hooks`, with FX's own message below (see [the next page](reach/#fx-control-flow-on-data-and-two-graphs)).
# Tracing takes time: to call it many times, build once.

# %%
from tutorials_pkg.intermediate import build_fx_extractor, by_fx

show_source(by_fx)

# %%
features = by_fx(model, x, [*LAYERS, "layer1.0.add", "flatten"])
print({name: tuple(tensor.shape) for name, tensor in features.items()})
print(build_fx_extractor(model, ["layer2"]).code.strip().splitlines()[-1])  # ends at layer2

# %% [markdown]
# ## 4. Forward hooks: `by_hooks`
#
# `register_forward_hook` asks a module to call a function with its output
# each time it runs. The model runs unchanged, its own `forward` included, and
# any module at any depth can be hooked. Two details make it correct: the hook
# stores a copy of the output (`_copy` clones every tensor in it, also inside
# the dict a detector's backbone returns), and the hooks are removed in
# `finally`, even when `forward` raises. A module that `forward` never calls
# records nothing, and `by_hooks` says so with a `ValueError` instead of
# failing on a missing key. A model wrapped by `torch.compile` is run as its
# original module (`_orig_mod`), because hooks on the modules inside compiled
# code never fire; its names are the original model's, without `_orig_mod.`.

# %%
from tutorials_pkg.intermediate import by_hooks

show_source(by_hooks)
