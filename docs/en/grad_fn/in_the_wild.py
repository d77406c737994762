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
# # grad_fn: in the wild
#
# The last page of [Tracing structure through grad_fn](../), after
# [channels pruned together](../pruning/). Each mistake below breaks a naive
# trace, and several come from the blog post on pruning YOLOv5 that this
# chapter answers: each is shown failing, then fixed by `grad_fn_modules` from
# the [first page](../#from-nodes-back-to-modules). The network and input are
# that page's:

# %%
import torch
from torch import nn

from tutorials_pkg.demo_models import tiny_resnet
from tutorials_pkg.grad_fn import grad_fn_modules
from tutorials_pkg.runtime import default_device
from tutorials_pkg.source import show_source

torch.manual_seed(0)
device = default_device()
model = tiny_resnet().to(device)
x = torch.randn(2, 3, 32, 32, device=device)

# %% [markdown]
# ## Tracing under `torch.no_grad()`
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
# ## Frozen layers give `None` keys
#
# The same silent merge happens with gradients on, when the parameters are
# frozen (here all but the last layer's, as in fine-tuning) and the input needs no grad: the frozen layers' outputs have no
# `grad_fn`. Only the last layer, left trainable, gets a real key. The YOLOv5
# blog post met exactly this: its backbone layers came out under `None` until
# it set `requires_grad=True` on every parameter.

# %%
frozen = tiny_resnet().to(device)
for param in frozen.parameters():
    param.requires_grad_(False)
frozen[7].requires_grad_(True)  # fine-tune the last layer only

naive = grad_fn_modules_without_checks(frozen, x)
print({node and node.name(): type(module).__name__ for node, module in naive.items()})
assert None in naive and len(naive) == 2  # twelve frozen layers on one None key

# %% [markdown]
# `grad_fn_modules` on the same frozen model traced all 13 layers
# ([frozen parameters](../#frozen-parameters)).
#
# ## An `Identity` silently replaces the layer before it
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
# ## A hook list re-bound in the loop
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
# dictionary keeps each pass's graph and activations (see
# [A trace holds the graph until you let it go](../#a-trace-holds-the-graph-until-you-let-it-go)):

# %%
leaky = tiny_resnet().to(device)
leaky_nodes = grad_fn_modules_keeping_only_the_last_hook(leaky, x)
still_hooked = [name for name, m in leaky.named_modules() if m._forward_hooks]
print(len(leaky_nodes), "nodes;", len(still_hooked), "modules still hooked:", still_hooked[:4], "...")
leaky(x)  # one more forward pass, anywhere later
print(len(leaky_nodes), "nodes after one more forward pass")
assert len(still_hooked) == 12 and len(leaky_nodes) == 13 + 12

# %% [markdown]
# `record_grad_fn`, which `grad_fn_modules` calls (its source is on the
# [first page](../#from-nodes-back-to-modules)), builds the list of handles in
# one comprehension and removes every one of them in a `finally`:

# %%
clean = tiny_resnet().to(device)
grad_fn_modules(clean, x)
assert not any(m._forward_hooks for m in clean.modules())
print("hooks left:", sum(len(m._forward_hooks) for m in clean.modules()))

# %% [markdown]
# ## `torch.load('best.pt')['model']`
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
# [saving and loading page](../../save_load/) shows how, and how to load such
# files safely. The loaded model's parameters are frozen, as in that post,
# and `grad_fn_modules` traces it all the same:

# %%
trusted = torch.load(checkpoint, weights_only=False)["model"].to(device)
folder.cleanup()
print(len(grad_fn_modules(trusted, x)), "layers traced")
assert not any(p.requires_grad for p in trusted.parameters())
