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
# `fn(model, x, names) -> dict[str, Tensor]`, so this page runs them side by
# side: what each can reach, where each breaks, what each costs. Then two more
# uses of hooks: the *input* of a layer (`by_pre_hooks`) and the gradient with
# respect to its output (`grads_by_hooks`).
#
# Every output on this page was produced by running the code when the site was
# built, on the versions printed below.

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
# mode, because the graphs can differ (see below):

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
# in-place op could change it, see below), and a list of the valid nodes when
# a name is wrong. Where FX cannot trace the model, it says where tracing
# stopped and names `by_hooks`, with FX's own message below (see below).
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

# %% [markdown]
# ## What each can reach
#
# On the names all four can reach they return the same tensors, bit for bit,
# and FX's `fc` node is the model's output:

# %%
from tutorials_pkg.intermediate import EXTRACTORS

results = {method: fn(model, x, LAYERS) for method, fn in EXTRACTORS.items()}
for method, outputs in results.items():
    assert all(torch.equal(outputs[n], results["by_fx"][n]) for n in LAYERS), method
logits = model(x)
assert torch.equal(by_fx(model, x, ["fc"])["fc"], logits)
print({name: tuple(tensor.shape) for name, tensor in results["by_children"].items()})
print(list(results), "agree; by_fx's 'fc' equals model(x)")

# %% [markdown]
# ### Nested modules, operations, modules called twice
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
# hook. FX has a node for it (`layer1.0.add` above); hooks answer with a
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
# ### The model's own `forward`
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
# FX traced the real `forward`, pooling included:

# %%
assert torch.equal(by_fx(mobilenet, small, ["classifier"])["classifier"], mobilenet(small))
print("by_fx's 'classifier' equals mobilenet(small)")

# %% [markdown]
# ### In-place operations
#
# resnet's ReLUs are `nn.ReLU(inplace=True)`: the ReLU after `bn1` overwrites
# `bn1`'s output tensor. A reference kept to that tensor now holds ReLU's
# result. `by_hooks` copies in the hook, `by_fx` in the graph, `by_children`
# before the next child runs; `IntermediateLayerGetter` returns the tensor as
# it is at the end, so `bn1` asked for together with a later layer comes back
# ReLU'd:

# %%
bn1 = model.bn1(model.conv1(x))  # what bn1 produced, by hand
for method, fn in EXTRACTORS.items():
    got = fn(model, x, ["bn1", "layer1"])["bn1"]
    print(f"{method:16} equals bn1's output: {torch.equal(got, bn1)!s:5}  min {got.min():.3f}")
assert torch.equal(by_layer_getter(model, x, ["bn1", "layer1"])["bn1"], torch.relu(bn1))

# %% [markdown]
# ### FX: control flow on data, and two graphs
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
# on to torchvision. When the `if` is in the model's own `forward`, neither
# helps: the package's own `UNet` checks its input's shape there
# (`check_input`), and `by_fx` stops in `UNet.check_input` and points to
# `by_hooks`.

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
# ### A detector's backbone
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

# %% [markdown]
# ## Inputs and gradients
#
# ### The input of a layer: `by_pre_hooks`
#
# A forward hook also receives the module's input, as a tuple of the
# positional arguments, which is what the source tutorial records for
# `avgpool`. A *forward pre-hook* (`register_forward_pre_hook`) runs just
# before the module, with the same arguments. The common use: the input of
# `fc` is the penultimate feature vector, after resnet's `torch.flatten`,
# an operation no hook can see. `by_pre_hooks` records the first input of each
# named module, copied, with the hooks removed in `finally`. `grads_by_hooks`,
# the subject of the next section, is shown with it: the two share their
# helpers.

# %%
from tutorials_pkg.intermediate import by_pre_hooks, grads_by_hooks

show_source(by_pre_hooks, grads_by_hooks)

# %%
with torch.no_grad():
    penultimate = by_pre_hooks(model, x, ["fc"])["fc"]
    pooled = by_hooks(model, x, ["avgpool"])["avgpool"]
assert torch.equal(penultimate, torch.flatten(pooled, 1))
print("fc's input", tuple(penultimate.shape), "is avgpool's output", tuple(pooled.shape), "flattened")

# %% [markdown]
# A pre-hook gets only the positional arguments unless it is registered with
# `with_kwargs=True`; then it is called as `hook(module, args, kwargs)`. That
# matters for a module called with keyword arguments, as this small attention
# net calls its `nn.MultiheadAttention`:

# %%
from tutorials_pkg.intermediate import KeywordAttentionNet

show_source(KeywordAttentionNet)

# %% [markdown]
# A plain pre-hook on `attn` sees an empty tuple; `by_pre_hooks` (with
# `with_kwargs=True`) takes the value of `forward`'s first parameter, `query`:

# %%
torch.manual_seed(0)
attention_net = KeywordAttentionNet().eval()
tokens = torch.randn(2, 5, 16)
seen = []
handle = attention_net.attn.register_forward_pre_hook(lambda module, args: seen.append(args))
attention_net(tokens)
handle.remove()
print("a plain pre-hook gets args =", seen[0])
assert torch.equal(by_pre_hooks(attention_net, tokens, ["attn"])["attn"], tokens)
print("by_pre_hooks gets query:", tuple(tokens.shape))

# %% [markdown]
# ### The gradient at a layer: `grads_by_hooks`
#
# `register_full_backward_hook` asks a module to call
# `hook(module, grad_input, grad_output)` during the backward pass:
# `grad_output[0]` is the gradient of the loss with respect to the module's
# output (what Grad-CAM needs at `layer4`). `grads_by_hooks` differentiates
# `loss_fn(model(x))` with `torch.autograd.grad`, with respect to a copy of
# `x`: unlike `loss.backward()`, that adds nothing to any parameter's
# `.grad`, and gradients reach every layer even when the weights are frozen
# (its source is above, under `by_pre_hooks`).
#
# With the loss `logits[:, 0].sum()`, the gradient at `fc` must be 1 for class
# 0 and 0 elsewhere; `layer4`'s is what Grad-CAM averages per channel:

# %%
grads = grads_by_hooks(model, x, ["layer4", "fc"], lambda logits: logits[:, 0].sum())
print({name: tuple(g.shape) for name, g in grads.items()})
one_hot = torch.zeros(2, 1000)
one_hot[:, 0] = 1
assert torch.equal(grads["fc"], one_hot)
assert all(p.grad is None for p in model.parameters())
print("the gradient at fc is one-hot; no parameter's .grad was touched")

# %% [markdown]
# Full backward hooks have one limit: they wrap the module's inputs and
# outputs, and autograd forbids changing those in place afterwards. resnet's
# `bn1` is followed by `ReLU(inplace=True)`, so asking for `bn1` fails with a
# `RuntimeError`, which `grads_by_hooks` turns into one that names the
# module that made the change and what to do:

# %% tags=["raises-exception"] raises="RuntimeError"
grads_by_hooks(model, x, ["bn1"], lambda logits: logits[:, 0].sum())

# %% [markdown]
# For one tensor you hold, `Tensor.register_hook` is the simple tool: it is
# called with the gradient with respect to that tensor, and it follows
# in-place changes (it gets the gradient for the value it was registered on).
# On a small chain with an in-place ReLU it gives what `grads_by_hooks` gives
# once the ReLU is no longer in place:

# %%
from torch import nn

torch.manual_seed(0)
chain = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3))
inputs = torch.randn(2, 4)
hidden, seen = chain[0](inputs), []
hidden.register_hook(seen.append)  # called with d loss / d hidden
chain[2](chain[1](hidden)).sum().backward()
chain[1].inplace = False
assert torch.equal(seen[0], grads_by_hooks(chain, inputs, ["0"], torch.sum)["0"])
print("Tensor.register_hook and grads_by_hooks agree:", tuple(seen[0].shape))

# %% [markdown]
# The source tutorial mentions `register_backward_hook`, which is deprecated.
# It hooks the *last* autograd node of the module's `forward`: on
# `Sequential(Linear, ReLU, Linear)` that is the last `Linear`, so
# `grad_input` holds that layer's bias gradient, the gradient with respect to
# *its* input and its weight gradient (transposed), not the gradient with
# respect to the module's input. torch says so with a `FutureWarning` ("Using
# a non-full backward hook when the forward contains multiple autograd Nodes
# is deprecated"), shown below:

# %% tags=["shows-warning"]
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
inputs = torch.randn(2, 4, requires_grad=True)
seen = []
handle = net.register_backward_hook(lambda module, grad_input, grad_output: seen.append(grad_input))
net(inputs).sum().backward()
handle.remove()
bias, last_input, weight = seen[0]
assert torch.equal(bias, net[2].bias.grad) and torch.equal(weight, net[2].weight.grad.T)
print("grad_input:", [tuple(g.shape) for g in seen[0]], "; the input's gradient:", tuple(inputs.grad.shape))

# %% [markdown]
# `register_full_backward_hook` gives the documented `grad_input`: the
# gradient with respect to the module's input. A module that has had the old
# kind of hook refuses the new kind, even after `remove()`, so the same layers
# go into a new `Sequential`:

# %%
full = []
fixed = nn.Sequential(*net)  # the same layers, a container without the old hook
handle = fixed.register_full_backward_hook(lambda module, grad_input, grad_output: full.append(grad_input))
inputs.grad = None
fixed(inputs).sum().backward()
handle.remove()
assert torch.equal(full[0][0], inputs.grad)
print("full hook's grad_input[0] is the input's gradient:", tuple(full[0][0].shape))

# %% [markdown]
# ## What each costs, measured
#
# `extraction_costs` times each method on one request (median of 3 runs after
# a warm-up, all taking turns) and measures its peak memory, beside a plain
# forward pass, under `torch.no_grad()`. On a CPU the process's memory (RSS)
# also holds blocks the allocator keeps after a free, so `peak_memory_bytes`
# asks the profiler instead; on CUDA the allocator keeps the peak itself
# (`torch.cuda.max_memory_allocated`).

# %%
from tutorials_pkg.intermediate import extraction_costs, format_cost_table
from tutorials_pkg.measure import cpu_peak_memory_bytes

show_source(cpu_peak_memory_bytes)

# %% [markdown]
# `layer2` and `layer4` of resnet18 and resnet50 on one 224×224 image (batch 1
# keeps the page quick; `benchmarks/features_extraction.py` runs batch 8).
# Times are wall-clock on the machine that built this page, noisy on a shared
# one; `x forward` divides by the plain forward pass. The `assert` checks the
# memory count against a known answer: two 4 MiB tensors and their sum.

# %% tags=["measured"]
from torchvision.models import resnet50
from tutorials_pkg.measure import median_seconds, peak_memory_bytes
from tutorials_pkg.runtime import default_device

assert peak_memory_bytes(lambda: torch.ones(2**20) + torch.ones(2**20)) == 3 * 4 * 2**20  # 12 MiB
device = default_device()
one_image = torch.randn(1, 3, 224, 224, device=device)
for build in (resnet18, resnet50):
    torch.manual_seed(0)
    net = build(weights=None).eval().to(device)
    rows = extraction_costs(net, one_image, requests=["layer2", "layer4"], repeats=3)
    print(f"{build.__name__} on {device}\n{format_cost_table(rows)}\n")
trace_s = median_seconds(lambda: build_fx_extractor(net, ["layer4"]), repeats=3)
conv = net.layer4[1].conv2  # 512 -> 512 channels, 3x3, on 7x7
peak = peak_memory_bytes(lambda: conv(torch.randn(1, 512, 7, 7, device=device)), device)
print(f"resnet50: tracing takes {trace_s * 1e3:.0f} ms; one layer4 3x3 convolution peaks at "
      f"{peak / 2**20:.1f} MiB, its weights are {conv.weight.numel() * 4 / 2**20:.1f} MiB")

# %% [markdown]
# Reading the numbers:
#
# - Time: `by_children` and `by_layer_getter` stop after the requested layer,
#   so `layer2` costs them less than a forward pass; hooks always pay for the
#   whole model. `by_fx` stops there too, but its rows include tracing (the
#   line below the tables), which it repeats on every call and which can cost
#   more than the forward pass itself: build the extractor once with
#   `build_fx_extractor` and reuse it.
# - Memory: without gradients an output is freed once the next layer has used
#   it, so the peak is the few largest tensors alive at one moment, not the sum
#   of all activations. On a CPU one of them is oneDNN's copy of a
#   convolution's weights in its own layout: for one of layer4's 3×3
#   convolutions that is about as big as the weights (last line), more than
#   any activation of one image. Stopping early saves memory only when the peak
#   comes after the requested layer; with gradients, every activation up to it
#   is kept.
#
# | method | reaches | runs the whole model | cost |
# |---|---|---|---|
# | `by_children` | top-level children; flattens before a `Linear` | no | a forward pass up to the last name |
# | `by_layer_getter` | top-level children; nothing else of `forward` | no | the same; no copy, in-place ops can change results |
# | `by_fx` | every module and operation, nested; the real `forward` | no, only what the names need | tracing on each call, then the truncated pass |
# | `by_hooks` | every module, nested; not operations; a reused module's last call | yes | a full forward pass, one copy per name |
#
# ## Feature maps of a small CNN trained on digits
#
# Intermediate outputs are also something to look at. A tiny CNN, trained for
# a few seconds on scikit-learn's bundled 8×8 handwritten digits (real data:
# 1,797 images, a quarter kept for testing):

# %%
from tutorials_pkg.digits import DigitsCNN, accuracy

show_source(DigitsCNN)

# %%
from tutorials_pkg.digits import load_digits_tensors, split_train_test, train_epoch

x_train, y_train, x_test, y_test = split_train_test(*load_digits_tensors(), test_fraction=0.25)
torch.manual_seed(0)
cnn = DigitsCNN()
optimizer = torch.optim.Adam(cnn.parameters(), lr=1e-2)
order = torch.Generator().manual_seed(0)  # the order of the batches
losses = [train_epoch(cnn, optimizer, x_train, y_train, order) for _ in range(15)]
cnn.eval()
test_accuracy = accuracy(cnn, x_test, y_test)
print(f"{len(x_train)} training, {len(x_test)} test images; loss {losses[0]:.3f} -> "
      f"{losses[-1]:.3f}; test accuracy {test_accuracy:.1%}")
assert test_accuracy > 0.9

# %% [markdown]
# `relu1` (8 channels at 8×8) and `relu2` (16 channels at 4×4) for one test
# image, taken with hooks and drawn by `plot_feature_maps`: the first layer
# responds to strokes and edges, the second combines them at a lower
# resolution (some of its channels stay at zero for this digit).
# `svg_figure` puts the figure in the page as SVG, sharp at any zoom, and
# names it by the caption under it.

# %%
from tutorials_pkg.intermediate import plot_feature_maps, svg_figure

maps = by_hooks(cnn, x_test[:1], ["relu1", "relu2"])
print("label", y_test[0].item(), "predicted", cnn(x_test[:1]).argmax().item())
figure = plot_feature_maps(x_test[0], {name: m[0] for name, m in maps.items()})
svg_figure(figure, labelled_by="feature-maps-caption")

# %% [markdown]
# <p id="feature-maps-caption">Figure: one test digit, x (top left), then the 8
# feature maps of relu1 (8×8 each) and the 16 feature maps of relu2 (4×4
# each) that the trained CNN computes for it; each map has its own colour
# scale, brighter meaning a larger activation.</p>
#
# ## What goes wrong in the wild
#
# ### A hook without `clone()`
#
# The hook most people write first stores `output` as it is. Under resnet's
# in-place ReLU it keeps a tensor that ReLU overwrites a moment later:

# %%
from tutorials_pkg.intermediate import by_hooks_without_clone_or_removal

show_source(by_hooks_without_clone_or_removal)

# %%
torch.manual_seed(0)
fresh = resnet18(weights=None).eval()
produced = fresh.bn1(fresh.conv1(x))  # bn1's real output, about half negative
kept = by_hooks_without_clone_or_removal(fresh, x, ["bn1"])["bn1"]
print("negative values kept:", (kept < 0).sum().item(), "of", kept.numel())
assert torch.equal(kept, torch.relu(produced))  # ReLU's result, not bn1's

# %% [markdown]
# The fix is `output.clone()` in the hook, as in `by_hooks`:

# %%
assert torch.equal(by_hooks(fresh, x, ["bn1"])["bn1"], produced)
print("by_hooks returns bn1's output")

# %% [markdown]
# ### Hooks that are never removed
#
# `by_hooks_without_clone_or_removal` never removes its hooks either: each call adds one more, and
# each hook keeps the last tensor it saw alive.

# %%
for _ in range(2):
    by_hooks_without_clone_or_removal(fresh, x, ["bn1"])
print("hooks on bn1:", len(fresh.bn1._forward_hooks))
assert len(fresh.bn1._forward_hooks) == 3  # one from each call

# %% [markdown]
# `register_forward_hook` returns a handle, and `handle.remove()` takes the
# hook off. `by_hooks` removes its hooks in `finally`, so they go even when
# `forward` fails, here with a `RuntimeError` (a one-channel image):

# %% tags=["raises-exception"] raises="RuntimeError"
by_hooks(model, torch.randn(1, 1, 224, 224), ["layer2"])

# %%
assert not any(module._forward_hooks for module in model.modules())
print("no hooks left on the model")

# %% [markdown]
# ### `x.data` to keep a feature
#
# The source tutorial's first method keeps `x.data` at `layer1`. `.data` is
# the same memory with autograd's bookkeeping cut off: change the kept
# features in place, and a backward pass through the model silently uses the
# changed values. Here the sigmoid's output is kept, then centred in place;
# sigmoid's backward reads its output, so the gradient comes out wrong, with
# no error:

# %%
torch.manual_seed(0)
chain = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 1))
inputs = torch.randn(5, 4)
hidden = chain[1](chain[0](inputs))  # the sigmoid's output, saved for backward
loss = chain[2](hidden).sum()
right = torch.autograd.grad(loss, chain[0].weight, retain_graph=True)[0]
features = hidden.data  # as the tutorial keeps it
features -= features.mean()  # centred in place, for another use
wrong = torch.autograd.grad(loss, chain[0].weight)[0]
print(f"gradient off by up to {(right - wrong).abs().max():.3f}, and no error")
assert not torch.allclose(right, wrong)

# %% [markdown]
# `.detach()` shares the memory too, but autograd sees the change and refuses
# with a `RuntimeError` ("one of the variables needed for gradient
# computation has been modified by an inplace operation"):

# %% tags=["raises-exception"] raises="RuntimeError"
hidden = chain[1](chain[0](inputs))
loss = chain[2](hidden).sum()
features = hidden.detach()
features -= features.mean()
torch.autograd.grad(loss, chain[0].weight)

# %% [markdown]
# The fix is a copy, `.detach().clone()` (`by_children`, `by_fx` and
# `by_hooks` copy what a later in-place op could change); under `torch.no_grad()` there is no graph to
# protect, and a feature that needs gradients is kept as it is:

# %%
hidden = chain[1](chain[0](inputs))
loss = chain[2](hidden).sum()
features = hidden.detach().clone()
features -= features.mean()
assert torch.equal(torch.autograd.grad(loss, chain[0].weight)[0], right)
print("with .detach().clone() the gradient is unchanged")

# %% [markdown]
# ### `nn.Sequential(*model.children())` is not the model
#
# Rebuilding a model from its children, to cut it or to loop over it, drops
# what `forward` does between them. On resnet the missing flatten fails with a
# `RuntimeError`:

# %% tags=["raises-exception"] raises="RuntimeError"
nn.Sequential(*model.children())(x)

# %% [markdown]
# Inside a residual block it is worse: no error, another result. The block's
# children are `conv1, bn1, relu, conv2, bn2`; the add and the last ReLU are
# not among them.

# %%
chained = nn.Sequential(*block.children())(stem)
print("max difference from the block:", (chained - block(stem)).abs().max().item())
assert not torch.allclose(chained, block(stem))

# %% [markdown]
# Cut only where the model is a chain (resnet's children up to `layer4` are:
# the usual backbone), or ask FX or hooks:

# %%
backbone = nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc
assert torch.equal(backbone(x), by_fx(model, x, ["layer4"])["layer4"])
assert torch.equal(by_hooks(model, x, ["layer1.0"])["layer1.0"], block(stem))
print("backbone equals layer4; hooks give the block's real output")

# %% [markdown]
# ### A failed `create_feature_extractor` leaves train mode on
#
# `create_feature_extractor` switches the model to train mode, traces it, then
# to eval mode, and puts the caller's mode back at the end. A wrong name stops
# it half-way: the eval model comes back in train mode, and from then on
# BatchNorm normalises with batch statistics and updates its running ones,
# without a word. `by_fx` restores the mode in `finally`:

# %%
from torchvision.models.feature_extraction import create_feature_extractor

modes = []
for extract in (create_feature_extractor, lambda m, names: by_fx(m, x, names)):
    model.eval()
    try:
        extract(model, ["layer5"])
    except ValueError as error:
        print(str(error)[:70], "...")
    modes.append(model.training)
print("model.training afterwards (create_feature_extractor, by_fx):", modes)
assert modes == [True, False]
