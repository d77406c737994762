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
# # Three ways to define a model
#
# PyTorch gives you three containers for building a model out of layers:
# `nn.Sequential`, `nn.ModuleList` and `nn.ModuleDict`. All three *register*
# the layers they hold, which is what makes PyTorch find their parameters,
# save them in the `state_dict` and move them with `.to()`. They differ in who
# decides the order of computation: `nn.Sequential` runs its layers in a fixed
# chain; with the other two, your own `forward` decides.
#
# The chapter has two pages:
#
# - this one: how to use each of the three containers, what `nn.Sequential`
#   does inside, buffers, and which container when;
# - [Defining models: in the wild](in_the_wild/): layers that are not
#   registered, a forgotten `super().__init__()`, repeated names, keys a
#   `ModuleDict` refuses, each one failing for real before it is fixed.
#
# Every output on this page was produced by running the code when the site was
# built, on the versions printed below.

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# The data for the examples is real: scikit-learn ships the 8×8 handwritten
# digits (1,797 images), so each image is a vector of 64 numbers.

# %%
import torch

from tutorials_pkg.digits import load_digits_tensors

images, labels = load_digits_tensors(flatten=True)  # pixels scaled to [0, 1]
x, y = images[:8], labels[:8]  # 8 images
print(x.shape, y.tolist())

# %% [markdown]
# ## `nn.Sequential`: a straight chain
#
# When every layer feeds the next and nothing else happens, list the layers in
# order. `nn.Sequential` also writes the `forward` for you. The recipe, as it is
# in `tutorials_pkg.definition` (the imports it needs come with it, so the block
# runs on its own when you copy it):

# %%
from tutorials_pkg.definition import mlp_sequential
from tutorials_pkg.source import show_source

show_source(mlp_sequential)

# %%
model = mlp_sequential()
print(model)
print(model(x).shape)

# %% [markdown]
# The layers are named by position: `0`, `1`, `2`. Those names become the keys
# of the `state_dict` and the way you reach a layer (`model[0]`).

# %%
print(list(model.state_dict().keys()))
print(model[0])

# %% [markdown]
# ### Named layers with `OrderedDict`
#
# Pass an `OrderedDict` instead and the layers get the names you choose. The
# order of computation is still the order of the dictionary.

# %%
from tutorials_pkg.definition import mlp_named

show_source(mlp_named)

# %%
named = mlp_named()
print(named)
print(list(named.state_dict().keys()))
print(named.fc1)

# %% [markdown]
# ## `nn.ModuleList`: repeated blocks, your own `forward`
#
# A `ModuleList` is a list whose items are registered. It has no `forward`: you
# loop over it yourself, which lets you add what a chain cannot express, such
# as a skip connection around every block.

# %%
from torch import nn

from tutorials_pkg.definition import ResidualMLP

show_source(ResidualMLP)

# %% [markdown]
# Drawn as a graph, with `depth=3`:
#
# ```mermaid
# flowchart LR
#     x([x]) --> b0["blocks[0] + ReLU"] --> s0((+))
#     x --> s0
#     s0 --> b1["blocks[1] + ReLU"] --> s1((+))
#     s0 --> s1
#     s1 --> b2["blocks[2] + ReLU"] --> s2((+))
#     s1 --> s2
#     s2 --> y([output])
# ```

# %%
residual = ResidualMLP(features=64, depth=3)
print(residual)
print(residual(x).shape)
print([name for name, _ in residual.named_parameters()])

# %% [markdown]
# The parameters of all three blocks are registered: 64×64 weights and 64
# biases each, 12,480 in all. `count_parameters` adds up the elements of
# `model.parameters()`, the parameters PyTorch trains, saves and moves:

# %%
from tutorials_pkg.definition import count_parameters

print("parameters:", count_parameters(residual))
assert count_parameters(residual) == 3 * (64 * 64 + 64)

# %% [markdown]
# A `ModuleList` grows like a list: `append` adds one module, `extend` several,
# `insert` puts one at an index. Each is registered, and the positional names
# are renumbered to match the order:

# %%
grown = nn.ModuleList([nn.Linear(64, 32)])
grown.append(nn.ReLU())
grown.extend([nn.Linear(32, 10)])
grown.insert(1, nn.Dropout(0.1))
print(grown)
print(list(grown.state_dict().keys()))

# %% [markdown]
# ### A `ModuleList` cannot be called
#
# `ModuleList` holds layers but has no `forward`, so calling it raises
# `NotImplementedError`:

# %% tags=["raises-exception"] raises="NotImplementedError"
stack = nn.ModuleList([nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)])
stack(x)

# %% [markdown]
# Loop over it in your own `forward` (as `ResidualMLP` does), or, when it is a
# plain chain, unpack it into a `Sequential`:

# %%
chain = nn.Sequential(*stack)
print(chain(x).shape)

# %% [markdown]
# ## `nn.ModuleDict`: blocks chosen by name
#
# A `ModuleDict` is a dictionary whose values are registered. Use it when
# `forward` picks a block by name, here one of two output heads on a shared
# body: which digit it is, and whether it is even or odd.

# %%
from tutorials_pkg.definition import MultiHeadNet

show_source(MultiHeadNet)

# %%
multi = MultiHeadNet()
print(multi.heads)
print("digit:", multi(x, head="digit").shape)
print("parity:", multi(x, head="parity").shape)

# %% [markdown]
# A key that is a Python identifier is also an attribute: `multi.heads.digit`
# is the same module as `multi.heads["digit"]`. Indexing works for every key.

# %%
print(multi.heads.digit is multi.heads["digit"])

# %% [markdown]
# An unknown head gets a `KeyError` that lists the heads there are:

# %% tags=["raises-exception"] raises="KeyError"
multi(x, head="colour")

# %% [markdown]
# ## What `nn.Sequential` does inside
#
# A `Sequential` is an `nn.Module` that calls `add_module` for each layer, which
# stores it in `self._modules`, and whose `forward` walks that dictionary in
# order. Its `__init__` takes either the layers, named by position, or one
# `OrderedDict`, whose keys become the names. `_modules` is a plain `dict`
# (insertion-ordered, as every `dict` in Python 3.7 and later), not the
# `OrderedDict` that older releases of torch used and many tutorials still
# name. Fifteen lines do the same, both ways of calling it:

# %%
from tutorials_pkg.definition import MySequential

show_source(MySequential)

# %% [markdown]
# Given the same layers, it has the same `state_dict` keys and computes the same
# thing as `nn.Sequential`:

# %%
layers = [nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)]
ours, theirs = MySequential(*layers), nn.Sequential(*layers)
print(type(ours._modules), list(ours._modules.keys()))
print(list(ours.state_dict().keys()) == list(theirs.state_dict().keys()))
print(torch.equal(ours(x), theirs(x)))
assert type(ours._modules) is dict and type(theirs._modules) is dict

# %% [markdown]
# and given an `OrderedDict`, the same names:

# %%
from collections import OrderedDict

named_layers = OrderedDict([("fc1", nn.Linear(64, 32)), ("act", nn.ReLU()), ("fc2", nn.Linear(32, 10))])
ours, theirs = MySequential(named_layers), nn.Sequential(named_layers)
print(list(ours._modules.keys()), list(ours.state_dict().keys()) == list(theirs.state_dict().keys()))
assert list(ours._modules) == list(theirs._modules) == ["fc1", "act", "fc2"]
assert torch.equal(ours(x), theirs(x))

# %% [markdown]
# A widely read tutorial writes this branch with `OrderDict` for `OrderedDict`;
# [the next page](in_the_wild/#a-misspelt-ordereddict-in-mysequential) shows
# what that does.
#
# ### One input, passed from layer to layer
#
# `nn.Sequential.forward` takes one input and hands each layer the output of
# the one before. There is no way to give a layer half-way a second input:
# calling the chain with two raises a `TypeError`.

# %% tags=["raises-exception"] raises="TypeError"
chain = mlp_sequential()
chain(x, torch.ones(8, 1))

# %% [markdown]
# A model with a second input needs a `forward` of its own. Here the extra
# input, one number per image, is joined to the body's features before the
# head; the body itself can still be a `Sequential`:

# %%
from tutorials_pkg.definition import MLPWithExtraInput

show_source(MLPWithExtraInput)

# %%
ink = x.mean(dim=1, keepdim=True)  # (8, 1): how much ink each digit has
print(MLPWithExtraInput(extra_features=1)(x, ink).shape)

# %% [markdown]
# ## Tensors that are saved but not trained: buffers
#
# Some tensors belong to a model without being learned: the mean and standard
# deviation used to standardize the input, BatchNorm's running statistics.
# `register_buffer` registers such a tensor: it is in the `state_dict` and
# follows `.to()`, but it is not a parameter, so no optimizer changes it.
# (A tensor stored as a plain attribute gets neither.)

# %%
from tutorials_pkg.definition import Standardize

show_source(Standardize)

# %%
scale = Standardize(images.mean(), images.std())
print("parameters:", list(scale.parameters()))
print("state_dict:", {k: round(v.item(), 4) for k, v in scale.state_dict().items()})
print("dtype after .to(torch.float64):", scale.to(torch.float64).mean.dtype)
standardized = Standardize(images.mean(), images.std())(images)
print(f"mean {standardized.mean():.3f}, std {standardized.std():.3f}")

# %% [markdown]
# `register_buffer(name, tensor, persistent=False)` registers a buffer that
# follows `.to()` but is left out of the `state_dict`: for tensors the model
# can rebuild from its arguments (a lookup table, a mask), which need not take
# space in every checkpoint. It is still one of `named_buffers()`:

# %%
holder = nn.Module()
holder.register_buffer("table", torch.arange(4.0), persistent=False)
print("state_dict:", list(holder.state_dict().keys()))
print("buffers:", [name for name, _ in holder.named_buffers()])

# %% [markdown]
# ## Which one when
#
# | Container | Use it for | `forward` | Layer names |
# |---|---|---|---|
# | `nn.Sequential` | a straight chain, each layer feeding the next | written for you | `0`, `1`, … or your `OrderedDict` keys |
# | `nn.ModuleList` | repeated blocks, loops, skip connections | yours: iterate over it | `0`, `1`, … |
# | `nn.ModuleDict` | blocks selected by name (heads, branches, per-task layers) | yours: index by key | your keys |
#
# They nest: a `ModuleList` of `Sequential` blocks is common. What none of them
# does is a plain Python `list` or `dict`, as [the next page](in_the_wild/) shows.
