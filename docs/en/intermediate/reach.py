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
# # What each method can reach
#
# The second page of the chapter on intermediate outputs. [The first
# page](../) showed how the four ways to get them work: running the children
# (`by_children`), `IntermediateLayerGetter` (`by_layer_getter`), tracing with
# `torch.fx` (`by_fx`) and forward hooks (`by_hooks`). This page runs them
# side by side and shows what each can reach and where each breaks: nested
# modules and operations, the model's own `forward`, in-place operations,
# control flow under FX, and a detector's backbone.

# %% [markdown]
# The running example is the first page's: torchvision's `resnet18` with
# random weights, in eval mode, on two random 224×224 images, from the same
# seed; the four methods come from `tutorials_pkg.intermediate`. Last, the
# versions this page runs on.

# %%
import torch
from torchvision.models import resnet18
from torchvision.models.feature_extraction import get_graph_node_names

from tutorials_pkg.intermediate import EXTRACTORS, by_children, by_fx, by_hooks, by_layer_getter
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.source import show_source

torch.manual_seed(0)
model = resnet18(weights=None).eval()
x = torch.randn(2, 3, 224, 224)
LAYERS = ["layer1", "layer2", "layer3", "layer4"]
print(describe_runtime())

# %% [markdown]
# On the names all four can reach they return the same tensors, bit for bit,
# and FX's `fc` node is the model's output:

# %%
results = {method: fn(model, x, LAYERS) for method, fn in EXTRACTORS.items()}
for method, outputs in results.items():
    assert all(torch.equal(outputs[n], results["by_fx"][n]) for n in LAYERS), method
logits = model(x)
assert torch.equal(by_fx(model, x, ["fc"])["fc"], logits)
print({name: tuple(tensor.shape) for name, tensor in results["by_children"].items()})
print(list(results), "agree; by_fx's 'fc' equals model(x)")

# %% [markdown]
# ## Nested modules, operations, modules called twice
#
# The children-based methods see the top level only, and say so; FX and hooks
# reach `layer1.0.conv2` and agree with the layer computed by hand:

# %%
for fn in (by_children, by_layer_getter):
    try:
        fn(model, x, ["layer1.0.conv2"])
    except ValueError as error:
        print(error)
block = model.layer1[0]
stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
expected = block.conv2(block.relu(block.bn1(block.conv1(stem))))
for fn in (by_fx, by_hooks):
    assert torch.equal(fn(model, x, ["layer1.0.conv2"])["layer1.0.conv2"], expected)
print("by_fx and by_hooks: layer1.0.conv2 equals the hand-computed layer")

# %% [markdown]
# The residual `+` is an operation in `forward`, not a module: nothing to
# hook. FX has a node for it (`layer1.0.add` on [the first
# page](../#3-trace-the-graph-with-torchfx-by_fx)); hooks answer with a
# `ValueError` that lists the modules there are:

# %% tags=["raises-exception"] raises="ValueError"
by_hooks(model, x, ["layer1.0.add"])

# %% [markdown]
# A resnet block uses one `relu` module twice, after `bn1` and after the
# residual add. Its hook fires twice and `by_hooks` keeps the last output, the
# block's output; FX has a node for each call (`relu`, `relu_1`).

# %%
hooked = by_hooks(model, x, ["layer1.0.relu", "layer1.0"])
assert torch.equal(hooked["layer1.0.relu"], hooked["layer1.0"])
print("hooked layer1.0.relu equals the output of layer1.0")

# %% [markdown]
# A registered module is not always called. GoogLeNet's auxiliary
# classifiers `aux1` and `aux2` run in training mode only (`if self.training:`
# in its `forward`), so in eval mode their hooks never fire, and `by_hooks`
# raises a `ValueError` that says why:

# %% tags=["raises-exception"] raises="ValueError"
from torchvision.models import googlenet

inception_net = googlenet(weights=None, aux_logits=True, init_weights=False).eval()
by_hooks(inception_net, torch.randn(1, 3, 64, 64), ["aux1", "inception3a"])

# %% [markdown]
# ## The model's own `forward`
#
# `IntermediateLayerGetter` runs the children and nothing else. Without
# resnet's flatten, `fc` gets a 4-D tensor and fails with a `RuntimeError`:

# %% tags=["raises-exception"] raises="RuntimeError"
by_layer_getter(model, x, ["fc"])

# %% [markdown]
# `by_children` flattens before `fc`, which is right for resnet. But it knows
# only that rule: `mobilenet_v2`'s `forward` also average-pools (a function
# call) between `features` and `classifier`, so on this 64×64 input the
# classifier gets four times (2×2) the numbers it expects, a `RuntimeError`:

# %% tags=["raises-exception"] raises="RuntimeError"
from torchvision.models import mobilenet_v2

assert torch.equal(by_children(model, x, ["fc"])["fc"], logits)
mobilenet = mobilenet_v2(weights=None).eval()
small = torch.randn(2, 3, 64, 64)
by_children(mobilenet, small, ["classifier"])

# %% [markdown]
# The message names the child where the chain broke and what it was given.
# FX traced the real `forward`, pooling included:

# %%
assert torch.equal(by_fx(mobilenet, small, ["classifier"])["classifier"], mobilenet(small))
print("by_fx's 'classifier' equals mobilenet(small)")

# %% [markdown]
# A chain also needs the children registered in the order `forward` calls
# them. `SwappedNet` registers its `head` before its `body`;
# `IntermediateLayerGetter` runs them in that order and returns
# `body(head(x))` as `body`'s output, with no error:

# %%
from torchvision.models._utils import IntermediateLayerGetter

from tutorials_pkg.intermediate import SwappedNet

torch.manual_seed(0)
swapped, rows = SwappedNet(), torch.randn(4, 8)
print([name for name, _ in swapped.named_children()])
with torch.no_grad():
    got = IntermediateLayerGetter(swapped, return_layers={"body": "body"})(rows)["body"]
    print("max difference from body(x):", f"{(got - swapped.body(rows)).abs().max():.3f}")
    assert not torch.allclose(got, swapped.body(rows))

# %% [markdown]
# This is `IntermediateLayerGetter`'s limit: registration order must be call
# order, and no child may be used twice. `by_children` and `by_layer_getter`
# check it with one pass of the model's own `forward`, up to the last name,
# and refuse with a `RuntimeError` that says which child `forward` calls
# instead. The same pass catches a `ModuleList` child (such as
# `nn.TransformerEncoder`'s `layers`, which `forward` loops over and never
# calls) and work `forward` does between the children:

# %% tags=["raises-exception"] raises="RuntimeError"
by_layer_getter(swapped, rows, ["body"])

# %% [markdown]
# ## In-place operations
#
# resnet's ReLUs are `nn.ReLU(inplace=True)`: the ReLU after `bn1` overwrites
# `bn1`'s output tensor. A reference kept to that tensor now holds ReLU's
# result. `by_hooks` copies in the hook, `by_fx` in the graph, `by_children`
# before the next child runs; `IntermediateLayerGetter` returns the tensor as
# it is at the end, so `bn1` asked for together with a later layer comes back
# ReLU'd:

# %%
bn1 = model.bn1(model.conv1(x))  # what bn1 produced, by hand
getter = IntermediateLayerGetter(model, return_layers={"bn1": "bn1", "layer1": "layer1"})
results = {"IntermediateLayerGetter": getter(x)["bn1"]}
results.update({method: EXTRACTORS[method](model, x, ["bn1", "layer1"])["bn1"]
                for method in ("by_children", "by_fx", "by_hooks")})
for method, got in results.items():
    print(f"{method:23} equals bn1's output: {torch.equal(got, bn1)!s:5}  min {got.min():.3f}")
assert torch.equal(results["IntermediateLayerGetter"], torch.relu(bn1))

# %% [markdown]
# `by_layer_getter` sees that a later child changed the output (its version
# counter moved) and raises a `RuntimeError` instead of returning it:

# %% tags=["raises-exception"] raises="RuntimeError"
by_layer_getter(model, x, ["bn1", "layer1"])

# %% [markdown]
# ## FX: control flow on data, and two graphs
#
# Tracing runs `forward` with placeholders, not numbers, so an `if` on a value
# computed from the input cannot be decided. This small net has such a gate,
# and adds noise in training only:

# %%
from tutorials_pkg.intermediate import NoisyGatedNet, SignGate

show_source(NoisyGatedNet)

# %% [markdown]
# Tracing stops at the gate's `if`. `by_fx` raises a `TraceError` that says
# where tracing stopped (`SignGate.forward`), which two ways out there are,
# and ends with FX's own message ("symbolically traced variables cannot be
# used as inputs to control flow"):

# %% tags=["raises-exception"] raises="TraceError"
gated = NoisyGatedNet().eval()
digits_like = torch.randn(4, 1, 8, 8)
by_fx(gated, digits_like, ["fc"])

# %% [markdown]
# The fix is `leaf_modules`: FX records the gate as one call without looking
# inside (so nothing inside it can be asked for). When the `if` is on an
# argument of `forward` instead, such as `features_only: bool`, fix the
# argument with `concrete_args={"features_only": False}`. `by_fx` passes both
# on to torchvision. When the `if` is in the model's own `forward` (a check of
# the input's values, say), neither helps: `by_fx` says it stopped in the
# model's own code and points to `by_hooks`.

# %%
outputs = by_fx(gated, digits_like, ["gate", "fc"], leaf_modules=[SignGate])
assert torch.equal(outputs["fc"], gated(digits_like))
print({name: tuple(t.shape) for name, t in outputs.items()})

# %% [markdown]
# `if self.training:`, on the other hand, is a plain Python bool while tracing, so FX follows one
# branch and the two modes give different graphs. `get_graph_node_names`
# returns both:

# %%
train_nodes, eval_nodes = get_graph_node_names(
    gated, tracer_kwargs={"leaf_modules": [SignGate]}, suppress_diff_warning=True)
print("train:", train_nodes)
print("eval: ", eval_nodes)
assert set(train_nodes) - set(eval_nodes) == {"randn_like", "mul", "add"}

# %% [markdown]
# `create_feature_extractor` traces both and switches graphs with `.train()`
# / `.eval()`. A node of one mode only (`add` here) must be requested with
# `train_return_nodes` and `eval_return_nodes`. `by_fx` asks for the same names
# in both modes, so it cannot return such a node: in train mode it passes on
# torchvision's own `ValueError`, which suggests exactly that; in eval mode,
# where the node does not exist, its own `ValueError` lists the nodes there are.
#
# ## A detector's backbone
#
# Reusing the backbone of a detection model is one of the most common reasons
# to look inside one. torchvision's detectors take a *list* of images (sizes
# may differ), resize and normalise them, batch them, and run
# `backbone.body`, an `IntermediateLayerGetter` that returns an `OrderedDict`
# of feature maps, then a feature pyramid (`backbone`). `by_hooks` records
# both, as they are (random weights, `weights_backbone=None`: nothing is
# downloaded; `min_size=224` keeps it quick):

# %%
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

torch.manual_seed(0)
detector = fasterrcnn_mobilenet_v3_large_fpn(
    weights=None, weights_backbone=None, min_size=224, max_size=224).eval()
images = [torch.rand(3, 180, 240), torch.rand(3, 240, 200)]  # a list, as detectors take
with torch.no_grad():
    feature_maps = by_hooks(detector, images, ["backbone.body", "backbone"])
for name, maps_of_layer in feature_maps.items():
    print(f"{name:13}", type(maps_of_layer).__name__,
          {key: tuple(t.shape) for key, t in maps_of_layer.items()})

# %% [markdown]
# FX cannot trace the detector: its `forward` loops over the list of images,
# and a traced value cannot be iterated. `by_fx` raises a `TraceError` that
# says so and names `by_hooks`, FX's message ("Proxy object cannot be
# iterated") below:

# %% tags=["raises-exception"] raises="TraceError"
by_fx(detector, images, ["backbone.body"])
