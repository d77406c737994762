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
# # Layer inputs, gradients and cost
#
# The [previous page](../reach/) compared what the four ways to get intermediate
# outputs can reach. This page uses hooks for two more things, the input of a
# layer (`by_pre_hooks`) and the gradient with respect to its output
# (`grads_by_hooks`), then measures the time and memory the four methods take.
# The running example is the previous page's: `resnet18` with random weights,
# in eval mode, on two random 224×224 images.

# %%
import torch
from torchvision.models import resnet18
from tutorials_pkg.intermediate import build_fx_extractor, by_hooks
from tutorials_pkg.source import show_source

torch.manual_seed(0)
model = resnet18(weights=None).eval()
x = torch.randn(2, 3, 224, 224)

# %% [markdown]
# ## The input of a layer: `by_pre_hooks`
#
# A forward hook also receives the module's input, as a tuple of the
# positional arguments, which is what the source tutorial records for
# `avgpool`. A *forward pre-hook* (`register_forward_pre_hook`) runs just
# before the module, with the same arguments. The common use: the input of
# `fc` is the penultimate feature vector, after resnet's `torch.flatten`,
# an operation no hook can see. `hook_inputs` records the first input of each
# named module, copied, with the hooks removed in `finally`:

# %%
from tutorials_pkg.intermediate import hook_inputs

show_source(hook_inputs)

# %% [markdown]
# The tool `by_pre_hooks` calls it; the rest of the file named above the code
# takes wrapped and compiled models, keyword arguments (`input_kwargs=`) and
# names that are wrong or never called, as `by_hooks` does.

# %%
from tutorials_pkg.intermediate import by_pre_hooks, grads_by_hooks

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
# ## The gradient at a layer: `grads_by_hooks`
#
# The gradient of the loss with respect to a layer's output is what Grad-CAM
# needs at `layer4`. `hook_grads` keeps each named module's output with a
# forward hook, then asks `torch.autograd.grad` for the gradient of
# `loss_fn(model(x))` with respect to those outputs: unlike `loss.backward()`,
# that adds nothing to any parameter's `.grad`. An output that needs no
# gradient (frozen weights, token ids in) becomes a leaf that does, so nothing
# needs `x` to be floating point. Two checks keep it from a silently wrong
# answer: an `nn.Identity` returns its input itself, whose gradient would
# count every other use of that tensor, so it gets a view of its own; and an
# output changed in place later is refused (below):

# %%
from tutorials_pkg.intermediate import hook_grads

show_source(hook_grads)

# %% [markdown]
# The tool `grads_by_hooks` calls it, with what the other tools take (the
# file named above the code). With the loss `logits[:, 0].sum()`, the
# gradient at `fc` must be 1 for class 0 and 0 elsewhere; `layer4`'s is what
# Grad-CAM averages per channel:

# %%
grads = grads_by_hooks(model, x, ["layer4", "fc"], lambda logits: logits[:, 0].sum())
print({name: tuple(g.shape) for name, g in grads.items()})
one_hot = torch.zeros(2, 1000)
one_hot[:, 0] = 1
assert torch.equal(grads["fc"], one_hot)
assert all(p.grad is None for p in model.parameters())
print("the gradient at fc is one-hot; no parameter's .grad was touched")

# %% [markdown]
# A language model takes token ids, integers: the gradient starts at the
# embedding's output, and `x` needs none:

# %%
from torch import nn

torch.manual_seed(0)
token_model = nn.Sequential(nn.Embedding(100, 8), nn.Flatten(), nn.Linear(5 * 8, 2))
token_ids = torch.randint(0, 100, (3, 5))
token_grads = grads_by_hooks(token_model, token_ids, ["0"], lambda logits: logits[:, 1].sum())
assert torch.equal(token_grads["0"], token_model[2].weight[1].reshape(5, 8).expand(3, 5, 8))
print("d logit 1 / d embedding:", tuple(token_grads["0"].shape), "for ids of dtype", token_ids.dtype)

# %% [markdown]
# An output changed in place after the module made it is another matter.
# resnet's `bn1` is followed by `ReLU(inplace=True)`, which overwrites `bn1`'s
# output: autograd would give the gradient with respect to the ReLU'd tensor,
# without a word. `hook_grads` sees that the tensor's version counter moved
# and raises a `RuntimeError`. (`register_full_backward_hook`, the other way
# to get `grad_output`, refuses the same case with autograd's own error.)

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
from tutorials_pkg.intermediate import EXTRACTORS, chain_children, extraction_costs, format_cost_table
from tutorials_pkg.measure import cpu_peak_memory_bytes

show_source(cpu_peak_memory_bytes)

# %% [markdown]
# `layer2` and `layer4` of resnet18 and resnet50 on one 224×224 image (batch 1
# keeps the page quick; `benchmarks/features_extraction.py` runs batch 8).
# Times are wall-clock on the machine that built this page, noisy on a shared
# one; `x forward` divides by the plain forward pass. `chain_children`, the
# core of `by_children` without its check, runs beside the four tools. The
# `assert` checks the memory count against a known answer: two 4 MiB tensors
# and their sum.

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
    methods = {**EXTRACTORS, "chain_children": chain_children}
    rows = extraction_costs(net, one_image, requests=["layer2", "layer4"], methods=methods, repeats=3)
    print(f"{build.__name__} on {device}\n{format_cost_table(rows)}\n")
trace_s = median_seconds(lambda: build_fx_extractor(net, ["layer4"]), repeats=3)
conv = net.layer4[1].conv2  # 512 -> 512 channels, 3x3, on 7x7
peak = peak_memory_bytes(lambda: conv(torch.randn(1, 512, 7, 7, device=device)), device)
print(f"resnet50: tracing takes {trace_s * 1e3:.0f} ms; one layer4 3x3 convolution peaks at "
      f"{peak / 2**20:.1f} MiB, its weights are {conv.weight.numel() * 4 / 2**20:.1f} MiB")

# %% [markdown]
# Reading the numbers:
#
# - Time: `chain_children` stops after the requested layer, so `layer2` costs
#   it less than a forward pass. `by_children` and `by_layer_getter` stop
#   there too, but run the model twice up to it: once through its own
#   `forward`, to check that the children are a chain, then the chain. Where
#   you know your model is a chain and time counts, call the core. Hooks always
#   pay for the whole model. `by_fx` stops early too, but its rows include
#   tracing (the line below the tables), which it repeats on every call and
#   which can cost more than the forward pass itself: build the extractor once
#   with `build_fx_extractor` and reuse it.
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
# | `by_children` | top-level children; flattens before a `Linear` | no | two passes up to the last name: `forward` to check, then the chain |
# | `by_layer_getter` | top-level children; nothing else of `forward` | no | the same; refuses an output a later child changed in place |
# | `by_fx` | every module and operation, nested; the real `forward` | no, only what the names need | tracing on each call, then the truncated pass |
# | `by_hooks` | every module, nested; not operations; a reused module's last call | yes | a full forward pass, one copy per name |
