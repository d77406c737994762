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
# # Intermediate outputs: in the wild
#
# The chapter's last page, after [Feature maps of a digits
# CNN](../feature_maps/): what goes wrong in the wild when getting
# intermediate outputs, each mistake run first, then the fix. Most examples
# use the [first page](../)'s `resnet18` with random weights, its two random
# images and its first residual block, `layer1.0`.

# %%
import torch
from torch import nn
from torchvision.models import resnet18
from tutorials_pkg.intermediate import by_fx, by_hooks
from tutorials_pkg.source import show_source

torch.manual_seed(0)
model = resnet18(weights=None).eval()
x = torch.randn(2, 3, 224, 224)
block = model.layer1[0]  # the first residual block
stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))  # its input

# %% [markdown]
# ## A hook without `clone()`
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
# The fix is `output.clone()` in the hook, as in [`by_hooks`](../#4-forward-hooks-by_hooks):

# %%
assert torch.equal(by_hooks(fresh, x, ["bn1"])["bn1"], produced)
print("by_hooks returns bn1's output")

# %% [markdown]
# ## Hooks that are never removed
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
# ## `by_hooks` in train mode moves BatchNorm statistics
#
# `by_hooks` runs `forward` as it is, and a model fresh from its constructor
# or from a training loop is in train mode: there, `forward` is a training
# step's. BatchNorm normalises with the batch's statistics and moves its
# running ones (and Dropout drops), without a word. `torch.no_grad()` does not
# stop it: it switches off gradients, not training behaviour.

# %%
torch.manual_seed(0)
fresh_model = resnet18(weights=None)  # a new model starts in train mode
before = fresh_model.bn1.running_mean.clone()
with torch.no_grad():  # switches off gradients, not training behaviour
    by_hooks(fresh_model, x, ["layer1"])
moved = (fresh_model.bn1.running_mean - before).abs().max().item()
print(f"training={fresh_model.training}: bn1's running mean moved by up to {moved:.3f}")
assert moved > 0

# %% [markdown]
# Reading features is inference: call `.eval()` first, and the running
# statistics stay where training left them:

# %%
before = fresh_model.bn1.running_mean.clone()
with torch.no_grad():
    by_hooks(fresh_model.eval(), x, ["layer1"])
assert torch.equal(fresh_model.bn1.running_mean, before)
print("training=False: running statistics unchanged")

# %% [markdown]
# ## `x.data` to keep a feature
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
# ## `nn.Sequential(*model.children())` is not the model
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
# ## A failed `create_feature_extractor` leaves train mode on
#
# `create_feature_extractor` switches the model to train mode, traces it, then
# to eval mode, and puts the caller's mode back at the end. A wrong name stops
# it half-way: the eval model comes back in train mode, and from then on
# BatchNorm normalises with batch statistics and updates its running ones,
# without a word. `fx_extractor`, which `by_fx` calls, restores it in `finally`:

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
