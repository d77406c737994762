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
# with respect to its output (`grads_by_hooks`). Each is a tool that takes the
# models readers bring; this page shows each one's core, the short function
# the tool calls, for you to copy. The chapter has five pages:
#
# - this page: the four methods, how each works, and what the tools take;
# - [What each method can reach](reach/): nested modules and operations, the
#   model's own `forward` (and children registered in another order than it
#   calls them), in-place operations, control flow under FX, and a
#   detector's backbone;
# - [Layer inputs, gradients and cost](inputs_and_gradients/): `by_pre_hooks`,
#   `grads_by_hooks`, and the time and memory of the four methods, measured;
# - [Feature maps of a digits CNN](feature_maps/): a small CNN trained on real
#   digits, and its intermediate outputs drawn;
# - [Intermediate outputs: in the wild](in_the_wild/): hooks that keep no
#   copy or are never removed, `by_hooks` in train mode, `x.data` to keep a feature,
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
# for. Like resnet's `forward`, `chain_children` flattens before an `nn.Linear`
# child, and it stops after the last child it needs:

# %%
from tutorials_pkg.intermediate import chain_children
from tutorials_pkg.source import show_source

show_source(chain_children)

# %% [markdown]
# A chain is the model only when `forward` does nothing but call the children
# in the order they were registered. The tool `by_children` calls
# `chain_children` after one pass of the model's own `forward`, stopped after
# the last name, has checked that; where it is not so, or where the chain
# breaks, it refuses with the reason and names the child ([the next
# page](reach/#the-models-own-forward) shows both). The rest of the file
# named above the code handles wrapped and compiled models, keyword arguments
# and unknown names (a `ValueError` that lists the names it can reach, as in
# all four tools).

# %%
from tutorials_pkg.intermediate import by_children

print({name: tuple(t.shape) for name, t in by_children(model, x, ["layer1", "fc"]).items()})

# %% [markdown]
# ## 2. torchvision's `IntermediateLayerGetter`: `by_layer_getter`
#
# torchvision builds the backbones of its segmentation models with
# `IntermediateLayerGetter` (in the private module `torchvision.models._utils`,
# so the import may move). It is an `nn.ModuleDict` of every child from the
# first up to the last one asked for, and its `forward` chains them:
# `chain_children` without the flatten, returning the tensors as they are when
# it finishes. `by_layer_getter` checks it as `by_children` does.

# %%
from tutorials_pkg.intermediate import layer_getter_outputs

show_source(layer_getter_outputs)

# %% [markdown]
# `return_layers` maps each child to the key of its output, so the values
# rename the outputs. torchvision's segmentation models ask for `layer4` as
# `"out"` and `layer3` as `"aux"`; the dict comes back in the order of the
# children:

# %%
from torchvision.models._utils import IntermediateLayerGetter

backbone = IntermediateLayerGetter(model, return_layers={"layer4": "out", "layer3": "aux"})
with torch.no_grad():
    renamed = backbone(x)
print({key: tuple(t.shape) for key, t in renamed.items()})
assert list(renamed) == ["aux", "out"]

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
# requested nodes and drops what they do not need. `fx_extractor` adds two
# things: a copy of an output that a later operation also reads (an in-place
# op could change it, see [in-place operations](reach/#in-place-operations)),
# and the caller's mode put back when tracing fails (see [in the
# wild](in_the_wild/#a-failed-create_feature_extractor-leaves-train-mode-on)):

# %%
from tutorials_pkg.intermediate import fx_extractor

show_source(fx_extractor)

# %% [markdown]
# The tools `build_fx_extractor` and `by_fx` call it. The rest of the file
# lists the valid nodes when a name is wrong, and where FX cannot trace the
# model, it says where tracing stopped and names `by_hooks`, its message
# ending with FX's own (see [the next
# page](reach/#fx-control-flow-on-data-and-two-graphs)). Tracing takes time:
# to call it many times, build once.

# %%
from tutorials_pkg.intermediate import build_fx_extractor, by_fx

features = by_fx(model, x, [*LAYERS, "layer1.0.add", "flatten"])
print({name: tuple(tensor.shape) for name, tensor in features.items()})
print(build_fx_extractor(model, ["layer2"]).code.strip().splitlines()[-1])  # ends at layer2

# %% [markdown]
# ## 4. Forward hooks: `by_hooks`
#
# `register_forward_hook` asks a module to call a function with its output
# each time it runs. The model runs unchanged, its own `forward` included, and
# any module at any depth can be hooked. Two details make it correct: the hook
# stores a copy of the output (`map_tensors` clones every tensor in it, also
# inside the dict a detector's backbone returns), and the hooks are removed in
# `finally`, even when `forward` raises:

# %%
from tutorials_pkg.intermediate import hook_outputs

show_source(hook_outputs)

# %% [markdown]
# The tool `by_hooks` calls `hook_outputs`. The rest of the file lists the
# names there are when one is unknown, raises a `ValueError` that says why for
# a module that `forward` never called (instead of a missing key), and runs a
# model wrapped by `torch.compile` or DDP as the module inside, compiled parts
# eagerly, for the reason below.
#
# ### Hooks and `torch.compile`
#
# Compiled code runs the hooks `torch.compile` saw when it compiled that
# `forward`, and it checks for new ones only on a module that had some then.
# A hook added after the first call of a model compiled without hooks is
# missed, and so is one added before the first call of a second model of the
# same class, which reuses that compiled code. Nothing says so:

# %%
from torch import nn

torch._dynamo.reset()  # no compiled code yet, as in a new process
fired = []
plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
compiled_plain = torch.compile(plain, backend="eager")
compiled_plain(torch.randn(2, 3))  # compiled while it has no hook
plain[0].register_forward_hook(lambda *args: fired.append("plain: added after its first call"))
compiled_plain(torch.randn(2, 3))
second = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
second[0].register_forward_hook(lambda *args: fired.append("second: added before its first call"))
compiled_second = torch.compile(second, backend="eager")
compiled_second(torch.randn(2, 3))
print("hooks that fired:", fired)
assert fired == []

# %% [markdown]
# The hook tools run compiled parts with
# `torch.compiler.set_stance("force_eager")`, which runs their Python code,
# hooks included, and accept a name with or without the `_orig_mod.` that
# `named_modules()` shows for a compiled model:

# %%
from tutorials_pkg.intermediate import by_hooks

small_x = torch.randn(2, 3)
with torch.no_grad():
    for name in ("_orig_mod.0", "0"):
        assert torch.equal(by_hooks(compiled_second, small_x, [name])[name], second[0](small_x))
print([name for name, _ in compiled_second.named_modules()], "-> both spellings work")

# %% [markdown]
# ## What each tool takes
#
# - `model`: any `nn.Module`. One wrapped by `torch.compile`, `DataParallel`
#   or DDP runs as the module inside, its compiled parts eagerly. A TorchScript
#   module cannot carry hooks (torch says so): pass the module before
#   scripting.
# - `x`: the model's one argument, whatever it is: a tensor, a detector's list
#   of images, a dict, token ids. A tuple is the positional arguments;
#   `input_kwargs={"mask": mask}` passes keyword arguments.
# - `names`: one string or a list. Hooks reach every module (`named_modules()`),
#   `by_fx` every node (`get_graph_node_names`), `by_children` and
#   `by_layer_getter` the top-level children only (`named_children()`); these
#   two feed `x` to the first child and refuse a model whose `forward` is not
#   the chain of its children.
# - What comes back: `{name: output}` in the order asked. `by_hooks` returns
#   each output as the module returned it (a tensor, a tuple, a dict) with its
#   tensors copied; `by_pre_hooks` a module's first input; `grads_by_hooks` the
#   gradient with respect to each output that is a tensor, with no need for
#   `x` to be floating point.
# - What is refused, and how: an unknown name (`ValueError`, with the names
#   there are), a module `forward` never called (`ValueError`), a model that is
#   not a chain (`RuntimeError`, naming the child), a model FX cannot trace
#   (`TraceError`, saying where it stopped).
