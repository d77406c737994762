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
# # Defining models: in the wild
#
# The second page of [Three ways to define a model](../): the first page shows
# how the three containers register the layers they hold; this one shows
# what goes wrong in the wild. Each mistake fails for real (or is proven
# wrong by an assertion) before it is fixed.
#
# The page runs on its own: first the imports it uses, the digits data of
# the first page, and the versions it runs on.

# %%
import torch
from torch import nn

from tutorials_pkg.definition import MultiHeadNet, ResidualMLP
from tutorials_pkg.digits import load_digits_tensors
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.source import show_source

print(describe_runtime())
images, _ = load_digits_tensors(flatten=True)  # pixels scaled to [0, 1]
x = images[:8]  # 8 images
print(x.shape)

# %% [markdown]
# ## A subclass that forgets `super().__init__()`
#
# Every `nn.Module` subclass must call `super().__init__()` before it assigns
# a layer: that call creates the dictionaries (`_parameters`, `_buffers`,
# `_modules`) where `nn.Module.__setattr__` registers what you assign. Without
# it, the first `self.fc = ...` fails:

# %%
from tutorials_pkg.definition import MLPWithoutSuperInit

show_source(MLPWithoutSuperInit)

# %% [markdown]
# Building it raises an `AttributeError`, already in `__init__`:

# %% tags=["raises-exception"] raises="AttributeError"
MLPWithoutSuperInit()

# %% [markdown]
# The fix is the first line of `__init__` in every model on
# [the previous page](../), `super().__init__()`, as in
# [`ResidualMLP`](../#nnmodulelist-repeated-blocks-your-own-forward).
#
# A container subclass needs the call as much as any module. A widely read
# tutorial subclasses `nn.ModuleList`, forgets `super().__init__()` there
# too, and fails in the same way, with an `AttributeError` at the first
# assignment of a module:

# %%
from tutorials_pkg.definition import LayerListWithoutSuperInit

show_source(LayerListWithoutSuperInit)

# %% tags=["raises-exception"] raises="AttributeError"
LayerListWithoutSuperInit([nn.Linear(64, 32), nn.ReLU()])

# %% [markdown]
# The same first line, `super().__init__()`, fixes it.
#
# ## Layers kept in a plain Python list are not registered
#
# This looks like a model with two layers:

# %%
from tutorials_pkg.definition import UnregisteredListMLP, count_parameters

show_source(UnregisteredListMLP)

# %% [markdown]
# It runs, but PyTorch does not know its layers: no parameters (an optimizer
# built from `model.parameters()` trains nothing), an empty `state_dict`
# (nothing is saved):

# %%
plain = UnregisteredListMLP(features=64)
print(plain(x).shape)
print("parameters:", count_parameters(plain))
print("state_dict:", plain.state_dict())
assert count_parameters(plain) == 0 and len(plain.state_dict()) == 0

# %% [markdown]
# and `.to()` does not reach them. On a GPU the layers would stay on the CPU;
# a dtype change shows the same thing on any machine, with a `RuntimeError`:

# %% tags=["raises-exception"] raises="RuntimeError"
plain = plain.to(torch.float64)
plain(x.to(torch.float64))

# %% [markdown]
# The fix is `nn.ModuleList`, as in the
# [`ResidualMLP`](../#nnmodulelist-repeated-blocks-your-own-forward) of the previous page: 3 blocks of
# 64×64 weights and 64 biases are 12,480 parameters, all of them visible.

# %%
print("parameters:", count_parameters(ResidualMLP(features=64, depth=3)))
assert count_parameters(ResidualMLP(features=64, depth=3)) == 3 * (64 * 64 + 64)

# %% [markdown]
# ## Heads kept in a plain Python dict are not registered either
#
# The same goes for a `dict`: this is
# [`MultiHeadNet`](../#nnmoduledict-blocks-chosen-by-name) with its heads in a plain
# dictionary instead of an `nn.ModuleDict`.

# %%
from tutorials_pkg.definition import UnregisteredDictMultiHeadNet

show_source(UnregisteredDictMultiHeadNet)

# %% [markdown]
# PyTorch sees the body and nothing of the heads: 2,080 parameters instead of
# 2,476, and no head in the `state_dict`, so a saved model loses them.

# %%
loose = UnregisteredDictMultiHeadNet()
print("parameters:", count_parameters(loose), "with ModuleDict:", count_parameters(MultiHeadNet()))
print("state_dict:", list(loose.state_dict().keys()))
assert count_parameters(MultiHeadNet()) - count_parameters(loose) == 32 * 10 + 10 + 32 * 2 + 2

# %% [markdown]
# `.to()` converts the body and not the heads, so the first head fails with a
# `RuntimeError`:

# %% tags=["raises-exception"] raises="RuntimeError"
loose = loose.to(torch.float64)
loose(x.to(torch.float64), head="digit")

# %% [markdown]
# ## `[nn.Linear(4, 4)] * 3` is one layer three times
#
# Multiplying a list repeats the *reference*: all three entries are the same
# layer, sharing one set of weights.

# %%
shared = nn.Sequential(*[nn.Linear(4, 4)] * 3)
print(shared[0] is shared[1] is shared[2])
print("parameters:", count_parameters(shared))
assert count_parameters(shared) == 4 * 4 + 4  # one layer's worth, not three

# %% [markdown]
# Create a new layer for each entry:

# %%
separate = nn.Sequential(*[nn.Linear(4, 4) for _ in range(3)])
print(separate[0] is separate[1])
print("parameters:", count_parameters(separate))

# %% [markdown]
# ## A repeated name in an `OrderedDict` silently drops a layer
#
# A dictionary keeps one value per key: the second `"fc"` replaces the first,
# and no error says so.

# %%
from collections import OrderedDict

dropped = nn.Sequential(OrderedDict([
    ("fc", nn.Linear(64, 32)),
    ("fc", nn.Linear(32, 10)),
]))
print(dropped)
assert len(dropped) == 1  # two layers were written, one is left

# %% [markdown]
# The model that is left expects 32 inputs, so 64-feature digits fail with a
# `RuntimeError`:

# %% tags=["raises-exception"] raises="RuntimeError"
dropped(x)

# %% [markdown]
# Give every layer its own name, and check the length when you build from a
# generated list of names.

# %%
fixed = nn.Sequential(OrderedDict([("fc1", nn.Linear(64, 32)), ("fc2", nn.Linear(32, 10))]))
assert len(fixed) == 2
print(fixed(x).shape)

# %% [markdown]
# ## `ModuleDict` refuses some keys
#
# A key that is already an attribute of a `ModuleDict` raises a `KeyError`:
# its methods (`keys`, `type`, `forward`, …) and also the attributes every
# module sets in `__init__`, such as `training`:

# %% tags=["raises-exception"] raises="KeyError"
blocks = nn.ModuleDict()
blocks["type"] = nn.Linear(4, 4)

# %% [markdown]
# `training` is not an attribute of the class, only of each instance, so a
# check such as `hasattr(nn.ModuleDict, key)` lets it through, and the
# assignment fails with a `KeyError` again:

# %% tags=["raises-exception"] raises="KeyError"
print(hasattr(nn.ModuleDict, "training"), hasattr(nn.ModuleDict(), "training"))
blocks["training"] = nn.Linear(4, 4)

# %% [markdown]
# and so does a key with a dot, which is what layer names such as
# `layer1.0.conv1` look like; again a `KeyError`:

# %% tags=["raises-exception"] raises="KeyError"
blocks["layer1.0.conv1"] = nn.Linear(4, 4)

# %% [markdown]
# `module_key` turns any layer name into a key the dictionary accepts. Replacing
# the dots with `_` would not do: `layer1.0` and `layer1_0` are different layers
# and would get the same key. So the dots become `/`, after any `%` or `/`
# already in the name has been escaped as in a URL (`%25`, `%2F`); and a name
# that is an attribute of a `ModuleDict` instance gets a trailing `/`, a key no
# other name can give, because no layer name ends in a dot:

# %%
from tutorials_pkg.definition import module_key

show_source(module_key)

# %%
names = ["type", "training", "layer1.0.conv1", "layer1_0_conv1", "layer1.0", "layer1_0"]
for name in names:
    blocks[module_key(name)] = nn.Linear(4, 4)
print({name: module_key(name) for name in names})
assert len(blocks) == len(names)  # distinct names, distinct keys

# %% [markdown]
# ## A misspelt `OrderedDict` in `MySequential`
#
# A widely read tutorial rebuilds `nn.Sequential` as
# [the previous page](../#what-nnsequential-does-inside) does, with the
# `OrderedDict` branch, but spells it `OrderDict`. Python looks a name up
# only when the line runs, and `len(args) == 1 and ...` stops before the name
# whenever there are several arguments, so the usual test, a few layers,
# passes:

# %%
from collections import OrderedDict


class MySequentialAsPrinted(nn.Module):  # the tutorial's version, misspelling included
    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderDict):  # OrderDict: not a name
            for key, module in args[0].items():
                self.add_module(key, module)
        else:
            for idx, module in enumerate(args):
                self.add_module(str(idx), module)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x


several = MySequentialAsPrinted(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
print(list(several._modules), several(x).shape)

# %% [markdown]
# The branch it was written for, one `OrderedDict`, raises a `NameError`:

# %% tags=["raises-exception"] raises="NameError"
MySequentialAsPrinted(OrderedDict([("fc1", nn.Linear(64, 32)), ("act", nn.ReLU())]))

# %% [markdown]
# and so does any single argument, a one-layer chain included: the test
# reaches `isinstance(args[0], OrderDict)` whenever `len(args) == 1`.

# %%
try:
    MySequentialAsPrinted(nn.Linear(64, 10))
except NameError as error:
    print("NameError:", error)
else:
    raise AssertionError("a single layer should reach the misspelt name")

# %% [markdown]
# The `MySequential` of the previous page spells it right and takes both:

# %%
from tutorials_pkg.definition import MySequential

print(list(MySequential(OrderedDict([("fc1", nn.Linear(64, 32)), ("act", nn.ReLU())]))._modules))
print(list(MySequential(nn.Linear(64, 10))._modules))

# %% [markdown]
# ## `grad_fn=<AddmmBackward>` in printed outputs
#
# The same tutorial prints a model's output as `grad_fn=<AddmmBackward>`. On
# today's torch the node is `AddmmBackward0`: backward nodes carry a number,
# which tells apart the formulas of one operator (`pow` with a number and
# with a tensor are `PowBackward0` and `PowBackward1`). Code that compares
# the printed name with `"AddmmBackward"` never matches now; strip the digits,
# or compare with the numbered name:

# %%
torch.manual_seed(0)  # the printed values, the same at every build
out = MultiHeadNet()(x[:2], head="parity")
print(out)
name = type(out.grad_fn).__name__
assert name == "AddmmBackward0" and name != "AddmmBackward"
w = torch.ones(3, requires_grad=True)
print("w ** 2:", type(w.pow(2).grad_fn).__name__, " w ** w:", type(w.pow(w).grad_fn).__name__)
assert name.rstrip("0123456789") == "AddmmBackward"  # the name without its number
