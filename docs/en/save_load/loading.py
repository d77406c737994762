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
# # Saving and loading: load_checkpoint
#
# The third page of the chapter on saving and loading. [The previous
# page](../checkpoints/) wrote checkpoints that a crash cannot break with
# `save_checkpoint`; this one reads them back with `load_checkpoint`, whatever
# wrapper or device they were saved from, and shows what happens when a
# checkpoint does not fit the model.

# %% [markdown]
# The examples start where [the first page](../) did: a small classifier
# for scikit-learn's 8×8 handwritten digits, trained one step from the same
# seed, saved with its optimizer to `ckpt.pt` by `save_checkpoint` as on the
# previous page. Every file goes into a new temporary directory, which
# becomes the working directory. Last, the versions this page runs on.

# %%
import os
import tempfile

import torch
from torch import nn

from tutorials_pkg.digits import digits_classifier, load_digits_tensors
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.save_load import load_checkpoint, save_checkpoint
from tutorials_pkg.source import show_source

x, y = load_digits_tensors(flatten=True)
torch.manual_seed(0)
model = digits_classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
optimizer.step()
model.eval()
os.chdir(tempfile.mkdtemp())
save_checkpoint("ckpt.pt", model, optimizer, epoch=1)

print(describe_runtime())

# %% [markdown]
# ## Loading a checkpoint: `load_checkpoint`
#
# `load_checkpoint` reads with `weights_only=True`, puts the weights into the
# model and the state into the optimizer, and returns everything else that was
# saved (epoch, losses, settings). Before it changes anything it checks, and
# refuses with an error that names the file:
#
# - the file: one `torch.save` wrote (not text, JSON or NumPy), whole, with
#   every record matching the CRC-32 `torch.save` stored for it;
# - where the weights are: an entry `model` (as `save_checkpoint` writes),
#   `state_dict` (Lightning) or `model_state_dict`, or the whole file if it is a
#   bare `state_dict`; otherwise it names the entry that holds tensors;
# - the weights' names and shapes (with `strict=False`, only the shapes, and a
#   warning lists the keys that were not loaded);
# - the optimizer state: as many groups of as many parameters, saved by the
#   same kind of optimizer (its settings' names), and each parameter's state
#   (Adam's averages) of that parameter's shape, which catches parameters
#   passed in another order.
#
# That makes it a tool of about 170 lines, in `tutorials_pkg/save_load.py`
# (the file named, and linked, above the code below); the recipe to copy is its core, `load_weights`, which it calls once the
# checks pass. It removes a wrapper's prefix. `nn.DataParallel` and
# `DistributedDataParallel` keep the model as `self.module`, so every key of
# their `state_dict` starts with `module.`; a `torch.compile`d model keeps it
# as `_orig_mod`, and a model with a compiled child has `_orig_mod` inside its
# keys (`0._orig_mod.weight`). The prefix is removed with torch's own
# `torch.nn.modules.utils.consume_prefix_in_state_dict_if_present`, and only
# while no key fits the model, so a layer that is really called `module` keeps
# its name. A model built on the meta device has no memory to copy into; there
# `load_weights` lets the file's tensors become the model's (`assign=True`)
# and ties shared weights again (see [fast loading](../fast_loading/)).

# %%
from tutorials_pkg.save_load import load_weights

show_source(load_weights)

# %% [markdown]
# The prefixes, as the wrappers write them (`torch.compile` only wraps here;
# nothing is compiled until the model is called):

# %%
print(list(nn.DataParallel(model).state_dict())[:2])
print(list(torch.compile(model).state_dict())[:2])

# %% [markdown]
# ### Saved on one device or many, loaded on one or many
#
# `nn.DataParallel` runs on a CPU-only machine too (it simply calls the model),
# which is enough to produce its prefix. All four combinations load and give
# the same outputs:

# %%
reference = model.eval()(x[:8])
for save_wrapped in (False, True):
    for load_wrapped in (False, True):
        save_checkpoint("ckpt.pt", nn.DataParallel(model) if save_wrapped else model, epoch=4)
        target = nn.DataParallel(digits_classifier()) if load_wrapped else digits_classifier()
        meta = load_checkpoint("ckpt.pt", target)
        same = torch.equal(target.eval()(x[:8]), reference)
        print(f"DataParallel when saving: {save_wrapped!s:5}  when loading: {load_wrapped!s:5}  same outputs: {same}")
        assert same

# %% [markdown]
# The same holds for a model whose child was compiled, and for a model with a
# real child called `module` saved through `DataParallel` (its keys start with
# `module.module.`):

# %%
from collections import OrderedDict

compiled_child = nn.Sequential(OrderedDict(fc1=torch.compile(nn.Linear(64, 32)), relu=nn.ReLU()))
print(list(compiled_child.state_dict())[:1])
save_checkpoint("compiled_child.pt", compiled_child)
load_checkpoint("compiled_child.pt", nn.Sequential(OrderedDict(fc1=nn.Linear(64, 32), relu=nn.ReLU())))

holder = nn.Sequential(OrderedDict(module=nn.Linear(64, 10)))
save_checkpoint("holder.pt", nn.DataParallel(holder))
print(list(torch.load("holder.pt")["model"])[:1])
fresh_holder = nn.Sequential(OrderedDict(module=nn.Linear(64, 10)))
load_checkpoint("holder.pt", fresh_holder)
assert torch.equal(fresh_holder.module.weight, holder.module.weight)

# %% [markdown]
# The usual advice still holds: save `model.module.state_dict()` from a
# wrapped model, so the file has clean names for everyone else.
#
# ### Moving between GPU and CPU: `map_location`
#
# `torch.load` puts each tensor back on the device it was saved from. A
# checkpoint saved on a GPU therefore needs a GPU to load, unless
# `map_location` says otherwise:
#
# ```python
# load_checkpoint(path, model, map_location="cpu")              # saved on cuda, load on a CPU machine
# load_checkpoint(path, model.to("cuda"), map_location="cuda")  # saved on CPU, load straight to the GPU
# torch.load(path, map_location={"cuda:1": "cuda:0"})           # a GPU index this machine does not have
# ```
#
# `load_checkpoint` defaults to `"cpu"`: `load_state_dict` copies the values
# into the model's own tensors wherever they live, so loading through the CPU
# works for any model and never fills GPU memory with a second copy. The same
# code on whatever device this page runs on:

# %%
from tutorials_pkg.runtime import default_device

device = default_device()
on_device = digits_classifier().to(device)
load_checkpoint("ckpt.pt", on_device, map_location=device)
print(on_device.fc1.weight.device, torch.equal(on_device.eval()(x[:8].to(device)).cpu(), reference))

# %% [markdown]
# ### A checkpoint that does not fit
#
# A model built for 8 hidden units instead of 32 gets a
# `CheckpointMismatchError` (a `ValueError`) that lists the keys whose shapes
# differ:

# %% tags=["raises-exception"] raises="CheckpointMismatchError"
load_checkpoint("ckpt.pt", digits_classifier(hidden=8))

# %% [markdown]
# An optimizer of another kind than the one that was saved gets a
# `ValueError` before anything is loaded, so the model keeps the weights it
# had. Here Adam's state goes to an SGD optimizer; `torch`'s own
# `load_state_dict` would take it, set SGD's learning rate to Adam's, and fail
# only at the first step (`KeyError: 'momentum'`):

# %% tags=["raises-exception"] raises="ValueError"
save_checkpoint("ckpt.pt", model, optimizer, epoch=4)
target = digits_classifier()
before = target.fc1.weight.detach().clone()
load_checkpoint("ckpt.pt", target, torch.optim.SGD(target.parameters(), lr=0.1, momentum=0.9))

# %%
assert torch.equal(target.fc1.weight, before)
print("the model was not changed")

# %% [markdown]
# With `strict=False` the keys that do not fit are skipped, and a warning
# says which (caught here to print just its message):

# %%
import warnings

partial = model.state_dict()
del partial["fc2.bias"]
torch.save(partial, "partial.pt")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    load_checkpoint("partial.pt", digits_classifier(), strict=False)
print(caught[0].category.__name__, caught[0].message)

# %% [markdown]
# ### Files from elsewhere
#
# A Lightning checkpoint keeps the weights under `state_dict`, next to the
# epoch and the step; it loads the same way, and the rest comes back:

# %%
torch.save({"state_dict": model.state_dict(), "epoch": 7, "global_step": 700}, "lightning.ckpt")
print(load_checkpoint("lightning.ckpt", digits_classifier()))

# %% [markdown]
# A file that `torch.save` did not write (text, JSON, a NumPy `.npy`, a plain
# pickle) gets a `NotACheckpointError` (a `ValueError`) that says so.
# `torch.load` itself gives a `KeyError` for a text file, and for a JSON file
# an `UnpicklingError` advising `weights_only=False`, which would run whatever
# code a pickle holds:

# %% tags=["raises-exception"] raises="NotACheckpointError"
import json

with open("weights.json", "w") as file:
    json.dump({"fc1.bias": [0.0] * 32}, file)
load_checkpoint("weights.json", digits_classifier())

# %% [markdown]
# ### A damaged file
#
# `torch.save` stores a CRC-32 of every record of the file (each tensor's bytes,
# and the pickle), but `torch.load` does not check them: bytes changed on the
# disk or in a copy load without a word. Here 200 bytes in the middle of the
# file are zeroed; `torch.load` reads it, and `load_checkpoint` checks the
# CRC-32s first and raises a `CorruptCheckpointError` (a `ValueError`) naming
# the file and the record. A file saved without CRC-32s (they are all 0) still
# loads. The check reads the file once more; `benchmarks/checkpoint_load.py
# --crc-only` measures it at about half the time of `torch.load` itself on a
# file already in memory.

# %% tags=["raises-exception"] raises="CorruptCheckpointError"
save_checkpoint("ckpt.pt", model, epoch=4)
data = bytearray(open("ckpt.pt", "rb").read())
data[len(data) // 2: len(data) // 2 + 200] = bytes(200)
with open("ckpt.pt", "wb") as file:
    file.write(data)
print("torch.load reads it:", sorted(torch.load("ckpt.pt")))
load_checkpoint("ckpt.pt", digits_classifier())
