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
# saved (epoch, losses, settings). It checks everything before it changes
# anything: the keys and shapes of the weights, and that the optimizer has as
# many parameter groups of as many parameters as the saved state. A file with
# no model weights in it (a dictionary of metrics, say) is refused, also with
# `strict=False`, and with `strict=False` a warning lists the keys that were
# not loaded. Entries that are not tensors, such as the state a module returns
# from `get_extra_state`, load like the rest.
#
# It also removes a wrapper's prefix. `nn.DataParallel` and
# `DistributedDataParallel` keep the model as `self.module`, so every key of
# their `state_dict` starts with `module.`; a `torch.compile`d model keeps it
# as `_orig_mod`. The prefix is removed with torch's own
# `torch.nn.modules.utils.consume_prefix_in_state_dict_if_present`, which looks
# only at the start of a key: a layer that is really called `module` inside
# the model (`encoder.module.weight`) keeps its name. The model side is
# unwrapped the same way, so a checkpoint fits whichever way it was saved.

# %%
show_source(load_checkpoint)

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
# An optimizer built differently from the one that was saved (here two
# parameter groups instead of one) gets a `ValueError` before anything is
# loaded, so the model keeps the weights it had:

# %% tags=["raises-exception"] raises="ValueError"
save_checkpoint("ckpt.pt", model, optimizer, epoch=4)
target = digits_classifier()
before = target.fc1.weight.detach().clone()
two_groups = torch.optim.Adam([{"params": target.fc1.parameters()}, {"params": target.fc2.parameters()}])
load_checkpoint("ckpt.pt", target, two_groups)

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
