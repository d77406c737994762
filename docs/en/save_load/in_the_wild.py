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
# # Saving and loading: in the wild
#
# The last page of the chapter on saving and loading. The pages before it,
# from [the first](../) to [the previous one](../fast_loading/), show the right
# ways; this one runs the mistakes met in practice, each failing (or shown by
# an assertion to silently do the wrong thing), then its fix.

# %% [markdown]
# The examples start where [the first page](../) did: a small classifier
# for scikit-learn's 8×8 handwritten digits, trained one step from the same
# seed, its `state_dict` saved as `weights.pt`. Every file goes into a new
# temporary directory, which becomes the working directory. Last, the
# versions this page runs on.

# %%
import os
import subprocess
import tempfile

import torch
from torch import nn

from tutorials_pkg.digits import digits_classifier, load_digits_tensors
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.save_load import NotACheckpointError, digits_run, load_checkpoint
from tutorials_pkg.source import show_source

x, y = load_digits_tensors(flatten=True)
torch.manual_seed(0)
model = digits_classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
optimizer.step()
model.eval()
os.chdir(tempfile.mkdtemp())
torch.save(model.state_dict(), "weights.pt")

print(describe_runtime())

# %% [markdown]
# ## `model.state_dict = loaded`
#
# This line looks like loading and raises nothing. It replaces the model's
# `state_dict` *method* with a dictionary; the weights stay random:

# %%
trained = torch.load("weights.pt")
victim = digits_classifier()
victim.state_dict = trained  # an assignment, not a load
assert not torch.equal(victim.fc1.weight, trained["fc1.weight"])  # still the random init
print("fc1.weight is still random")

# %% [markdown]
# Loading is a method call:

# %%
victim = digits_classifier()
victim.load_state_dict(trained)
assert torch.equal(victim.fc1.weight, trained["fc1.weight"])

# %% [markdown]
# A widely read tutorial "loads" a ResNet-152's weights into a ResNet-50 this
# way. The two networks have different numbers of blocks, yet the assignment
# raises nothing, so the mistake stays hidden:

# %%
from torchvision.models import resnet50, resnet152

with torch.device("meta"):  # names and shapes only: nothing is allocated
    weights152, model50 = resnet152().state_dict(), resnet50()
model50.state_dict = weights152  # no error, though the networks differ
print(len(weights152), "entries 'loaded' into a model that has", len(resnet50().state_dict()))

# %% [markdown]
# A load refuses it: `load_checkpoint` with a `CheckpointMismatchError` that
# lists the ResNet-152's extra blocks (`load_state_dict` with a `RuntimeError`):

# %% tags=["raises-exception"] raises="CheckpointMismatchError"
torch.save(weights152, "resnet152.pt")  # meta tensors: a file of names and shapes
with torch.device("meta"):
    model50 = resnet50()
load_checkpoint("resnet152.pt", model50)

# %% [markdown]
# ## `torch.save(model.state_dict, path)`
#
# Without the parentheses, `torch.save` gets the bound method. Pickling a
# bound method pickles the object it is bound to, so this saves the whole
# model after all, and `torch.load` refuses it with an `UnpicklingError`:

# %% tags=["raises-exception"] raises="UnpicklingError"
torch.save(model.state_dict, "method.pt")
torch.load("method.pt")

# %% [markdown]
# What the file asks for shows what it holds: `getattr` (to look the method up
# again) and the model's classes. Loaded with `weights_only=False` (our own
# file, so we can trust it), it gives a method of a copy of the model, not a
# dictionary. The fix is to call it:

# %%
print(sorted(torch.serialization.get_unsafe_globals_in_checkpoint("method.pt")))
assert "builtins.getattr" in torch.serialization.get_unsafe_globals_in_checkpoint("method.pt")
method = torch.load("method.pt", weights_only=False)
print(type(method).__name__, type(method.__self__).__name__)
assert callable(method) and not isinstance(method, dict)

torch.save(model.state_dict(), "method.pt")  # the fix: call it
assert isinstance(torch.load("method.pt"), dict)

# %% [markdown]
# A file's name says nothing about what it holds, either. A multi-GPU tutorial
# saves "the weights" to a file named like `...-dict`, from code that saves the
# whole `DataParallel` model; the globals the file asks for, read without
# loading it, show that it holds a pickled model (convert it once with
# `convert_to_state_dicts`, on [the first page](../#old-files-that-pickle-whole-models)):

# %%
torch.save(nn.DataParallel(model), "digits-dict.pt")  # a "weights" file that holds the model
print(sorted(torch.serialization.get_unsafe_globals_in_checkpoint("digits-dict.pt")))

# %% [markdown]
# ## `.pth`: also the extension of Python's path configuration files
#
# Tutorials save to `.pth` as often as to `.pt`, and PyTorch accepts both. But
# `.pth` is also the extension of Python's path configuration files: at
# start-up the `site` module reads every `*.pth` file in a `site-packages`
# directory as lines of text (each a directory to add to `sys.path`, or a line
# starting with `import`, which it runs). A checkpoint saved there by mistake
# (a script whose working directory is `site-packages`, a package that ships
# its weights) is read the same way. Here, in a fresh virtual environment, a
# `weights.pt` is left alone, and a `weights.pth` stops every Python of that
# environment from starting:

# %%
import sysconfig
import venv

venv.create("env", with_pip=False, symlinks=os.name != "nt")
packages = sysconfig.get_path("purelib", vars={"base": "env", "platbase": "env"})
python = os.path.join("env", "Scripts" if os.name == "nt" else "bin", "python")
for name in ("weights.pt", "weights.pth"):
    torch.save(model.state_dict(), os.path.join(packages, name))
    started = subprocess.run([python, "-c", "print('started')"], capture_output=True, text=True)
    print(f"{name:12} exit status {started.returncode}:",
          started.stdout.strip() or started.stderr.strip().splitlines()[-1])
    os.remove(os.path.join(packages, name))

# %% [markdown]
# `.pkl` is the third extension tutorials use, and it promises something
# else: a pickle that `pickle.load` reads. A `torch.save` file is a zip
# archive, which `pickle.load` cannot read (an `UnpicklingError`); and a file
# that `pickle.dump` wrote is not a checkpoint, which `load_checkpoint` says
# (a `NotACheckpointError`) rather than running its pickle:

# %%
import pickle

torch.save(model.state_dict(), "weights.pkl")
try:
    with open("weights.pkl", "rb") as file:
        pickle.load(file)
except pickle.UnpicklingError as error:
    print("pickle.load:", type(error).__name__, str(error).splitlines()[0])

with open("pickled.pkl", "wb") as file:
    pickle.dump({"fc1.bias": [0.0] * 32}, file)
try:
    load_checkpoint("pickled.pkl", digits_classifier())
except NotACheckpointError as error:
    print("load_checkpoint:", type(error).__name__, str(error).split(":")[0])

# %% [markdown]
# `.pt` has no other meaning; this chapter uses it throughout.
#
# ## `model.cuda` without parentheses
#
# A line `model.cuda`, as copied code sometimes has it, looks up the method and
# throws it away: nothing moves, and nothing says so, even on a machine
# without a GPU, where the call would have failed:

# %%
from tutorials_pkg.runtime import default_device

net = digits_classifier()
net.cuda  # no parentheses: an attribute looked up and thrown away, on any machine
print("after net.cuda:", net.fc1.weight.device)
assert net.fc1.weight.device.type == "cpu"
net = net.to(default_device())  # the fix: a call (.cuda() needs a GPU; .to(device) runs anywhere)
print("after net.to(device):", net.fc1.weight.device)

# %% [markdown]
# ## `DataParallel(model)` wrapped after the load
#
# To load a checkpoint saved from `DataParallel` (keys `module.fc1.weight`, ...),
# a tutorial builds the plain model, loads, and then wraps it. The load meets the
# plain model's keys (`fc1.weight`) and fails with a `RuntimeError`: the
# wrapper that would have made them fit comes one line too late:

# %% tags=["raises-exception"] raises="RuntimeError"
torch.save(nn.DataParallel(model).state_dict(), "dp.pt")  # keys: module.fc1.weight, ...
loaded = digits_classifier()
loaded.load_state_dict(torch.load("dp.pt"))  # the keys do not fit the plain model
loaded = nn.DataParallel(loaded)  # wrapped too late

# %% [markdown]
# Wrap first (or let [`load_checkpoint`](../loading/) remove the prefix):

# %%
loaded = nn.DataParallel(digits_classifier())  # wrap first: then the keys fit
loaded.load_state_dict(torch.load("dp.pt"))
assert torch.equal(loaded.module.fc1.weight, model.fc1.weight)

# %% [markdown]
# ## Removing the prefix with `k[7:]` or `k.replace("module.", "")`
#
# Both are common in copied code, and both break keys (the two wrong ways
# are `strip_prefix_by_slicing_every_key` and `strip_prefix_by_replacing_anywhere` in
# `tutorials_pkg.save_load`). `k[7:]` cuts seven characters off every key, so a checkpoint that had no
# prefix loses the start of every name. Here `fc1.weight` and `fc2.weight`
# both become `ght`, and one silently overwrites the other: four tensors in,
# two out.

# %%
from tutorials_pkg.save_load import (
    strip_prefix, strip_prefix_by_replacing_anywhere, strip_prefix_by_slicing_every_key,
    strip_prefix_with_a_misspelt_name,
)

print(list(model.state_dict()), "->", list(strip_prefix_by_slicing_every_key(model.state_dict())))
assert len(strip_prefix_by_slicing_every_key(model.state_dict())) == 2

# %% [markdown]
# `replace` removes `module.` wherever it is. Here the model really has a
# layer called `module` inside its encoder, saved from `DataParallel`:

# %%
from collections import OrderedDict

def encoder_net():
    encoder = nn.Sequential(OrderedDict(module=nn.Linear(64, 16), act=nn.ReLU()))
    return nn.Sequential(OrderedDict(encoder=encoder, head=nn.Linear(16, 10)))


saved = nn.DataParallel(encoder_net()).state_dict()
print(list(saved)[:2])
print(list(strip_prefix_by_replacing_anywhere(saved))[:2])

# %% [markdown]
# `load_state_dict` rejects those keys, and the usual "fix", `strict=False`,
# turns the error into a model whose encoder silently keeps its random
# weights:

# %%
net = encoder_net()
result = net.load_state_dict(strip_prefix_by_replacing_anywhere(saved), strict=False)
print("missing:", result.missing_keys)
assert not torch.equal(net.encoder.module.weight, saved["module.encoder.module.weight"])

# %% [markdown]
# A misspelt `replace("modeule.", "")`, as one tutorial has it, matches no key,
# so it strips nothing. Under the default `strict=True` that fails loudly:
# `load_state_dict` raises a `RuntimeError` listing every key as missing and
# unexpected:

# %% tags=["raises-exception"] raises="RuntimeError"
net = encoder_net()
net.load_state_dict(strip_prefix_with_a_misspelt_name(saved))  # strict=True, the default

# %% [markdown]
# Only with `strict=False` is it silent: every key is then missing and
# unexpected at once, and the whole model keeps its random weights:

# %%
net = encoder_net()
result = net.load_state_dict(strip_prefix_with_a_misspelt_name(saved), strict=False)
print(list(strip_prefix_with_a_misspelt_name(saved))[:2])
print(len(result.missing_keys), "missing,", len(result.unexpected_keys), "unexpected")
assert len(result.missing_keys) == len(net.state_dict())

# %% [markdown]
# `strip_prefix` (torch's `consume_prefix_in_state_dict_if_present`, used
# by [`load_checkpoint`](../loading/#loading-a-checkpoint-load_checkpoint)) removes the prefix only at the start of a key.
# A prefix is whole names, so `"module"` and `"module."` are the same:

# %%
net = encoder_net()
net.load_state_dict(strip_prefix(saved))
print(list(strip_prefix(saved))[:2])
assert list(strip_prefix(saved, "module")) == list(strip_prefix(saved))
assert torch.equal(net.encoder.module.weight, saved["module.encoder.module.weight"])

# %% [markdown]
# ## Keeping the best weights with `best = model.state_dict()`
#
# `state_dict()` does not copy: its tensors *are* the model's parameters
# (detached views of the same memory). Kept as "the best so far", it goes on
# changing as training goes on:

# %%
from tutorials_pkg.digits import train_epoch

run = digits_run(seed=0)
best = run.model.state_dict()
best_at_that_time = best["fc1.weight"].clone()
train_epoch(run.model, run.optimizer, x, y, run.generator)
assert torch.equal(best["fc1.weight"], run.model.fc1.weight)  # follows the model
assert not torch.equal(best["fc1.weight"], best_at_that_time)  # no longer what was "best"
print("the saved 'best' weights moved with training")

# %% [markdown]
# Take a copy, with `copy.deepcopy(model.state_dict())` or by cloning each
# tensor:

# %%
from tutorials_pkg.save_load import copy_state_dict

show_source(copy_state_dict)

# %%
best = copy_state_dict(run.model)
best_at_that_time = best["fc1.weight"].clone()
train_epoch(run.model, run.optimizer, x, y, run.generator)
assert torch.equal(best["fc1.weight"], best_at_that_time)
assert not torch.equal(best["fc1.weight"], run.model.fc1.weight)
print("the copy kept the weights it was taken with")
