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
# # Saving and loading
#
# A trained model is only as good as the file it is saved in. This page saves
# and loads the way PyTorch recommends (a `state_dict`, read back with
# `weights_only=True`), writes checkpoints so that a crash cannot leave a
# broken file behind, loads a checkpoint whatever wrapper it was saved from,
# resumes training to the exact same numbers, and loads large files fast. It
# ends with the mistakes that silently keep random weights.
#
# Every output on this page was produced by running the code when the site was
# built, on the versions printed below.

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# The examples train a small classifier on scikit-learn's 8×8 handwritten
# digits, and every file goes into a temporary directory.

# %%
import os
import tempfile

import torch
from torch import nn

from tutorials_pkg.digits import digits_classifier, load_digits_tensors
from tutorials_pkg.source import show_source

x, y = load_digits_tensors(flatten=True)
workdir = tempfile.mkdtemp()

show_source(digits_classifier)

# %% [markdown]
# ## What a `state_dict` is
#
# `model.state_dict()` is an ordered dictionary from each parameter's and
# buffer's dotted name to its tensor. An optimizer has one too: its settings
# and, per parameter, its running state (Adam's moving averages). Both are
# plain data: names, numbers and tensors.

# %%
torch.manual_seed(0)
model = digits_classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
optimizer.step()
model.eval()

print({name: tuple(tensor.shape) for name, tensor in model.state_dict().items()})
print(list(optimizer.state_dict()["state"][0]))

# %% [markdown]
# ## A `state_dict`, not the whole model
#
# `torch.save(model, path)` pickles the model object. Pickle does not store a
# class's code, only where to import it from (`torch.nn.modules.linear.Linear`,
# `my_project.models.Net`), and to rebuild an object it may call any function
# the file names. So a whole-model file breaks when the class is moved or
# renamed, and opening one from someone else can run their code. Since
# PyTorch 2.6, `torch.load` defaults to `weights_only=True`: it rebuilds only
# tensors, numbers, strings and plain containers, and refuses the rest.
# Loading a whole model therefore fails with an `UnpicklingError`:

# %% tags=["raises-exception"] raises="UnpicklingError"
whole = os.path.join(workdir, "whole_model.pt")
torch.save(model, whole)
torch.load(whole)

# %% [markdown]
# The message offers two ways out. One is `weights_only=False`, which trusts
# the file completely. The narrower one: ask which globals the file needs
# without loading it, check that they are what you expect, and allow exactly
# those with the `torch.serialization.safe_globals` context manager:

# %%
needed = torch.serialization.get_unsafe_globals_in_checkpoint(whole)
print(needed)

expected = [nn.Sequential, nn.Linear, nn.ReLU, nn.Dropout]
assert sorted(needed) == sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in expected)
with torch.serialization.safe_globals(expected):
    loaded = torch.load(whole)
assert torch.equal(loaded(x[:4]), model(x[:4]))
print(type(loaded).__name__, "loaded from a file we trust")

# %% [markdown]
# A `state_dict` needs none of this: it is plain data, loads with the
# defaults, and goes into a model built by your current code:

# %%
weights = os.path.join(workdir, "weights.pt")
torch.save(model.state_dict(), weights)
fresh = digits_classifier()
fresh.load_state_dict(torch.load(weights))
assert torch.equal(fresh.eval()(x[:4]), model(x[:4]))

# %% [markdown]
# ### Shipping a model without its code: `torch.export`
#
# When the code should not travel with the weights (a service, another team,
# a C++ runtime), `torch.export` traces the model into a graph of torch
# operators with the weights inside, saved as a `.pt2` file. Loading it needs
# torch and nothing else. Here a separate Python process, which never imports
# this project, loads the file and runs it:

# %%
import subprocess
import sys

from torch.export import Dim

exported = torch.export.export(model.eval(), (x[:4],), dynamic_shapes=({0: Dim("batch")},))
torch.export.save(exported, os.path.join(workdir, "digits.pt2"))
torch.save(x[:5], os.path.join(workdir, "inputs.pt"))

script = """import torch
program = torch.export.load("digits.pt2").module()
torch.save(program(torch.load("inputs.pt")), "outputs.pt")"""
subprocess.run([sys.executable, "-c", script], cwd=workdir, check=True)
assert torch.allclose(torch.load(os.path.join(workdir, "outputs.pt")), model(x[:5]))
print("same outputs from a process that has no model code")

# %% [markdown]
# ## Writing a checkpoint that survives a crash
#
# `torch.save(obj, path)` opens `path` for writing first, which empties it,
# and then writes. If the process dies half-way (out of disk, killed by a
# scheduler, power), the last good checkpoint is gone and the file left
# behind is truncated. Loading it fails; cut in half as here, with an
# `OSError` from the zip reader (cut elsewhere, it is a `RuntimeError` saying
# the zip archive has no central directory):

# %% tags=["raises-exception"] raises="OSError"
import io

buffer = io.BytesIO()
torch.save(model.state_dict(), buffer)
truncated = os.path.join(workdir, "truncated.pt")
with open(truncated, "wb") as file:
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # what a crash leaves
torch.load(truncated)

# %% [markdown]
# `save_checkpoint` never writes to `path` itself. It writes a temporary file
# next to it, calls `flush` and `os.fsync` so the bytes are on the disk and
# not only in the operating system's cache, and then `os.replace` puts the new
# file in place in one step (a rename within one file system is atomic).
# A reader sees either the old checkpoint or the complete new one.
#
# ```mermaid
# flowchart LR
#     s["torch.save to .ckpt.pt.1f3a….tmp"] --> f["flush + fsync"] --> r["os.replace(tmp, ckpt.pt)"]
#     s -. crash .-> old(["ckpt.pt: the previous checkpoint, intact"])
#     f -. crash .-> old
# ```

# %%
from tutorials_pkg.save_load import save_checkpoint

show_source(save_checkpoint)

# %% [markdown]
# To see it work, save once, then make the next save fail half-way: the
# stand-in for `torch.save` below writes half the bytes and then raises the
# `OSError` a full disk gives.

# %% tags=["raises-exception"] raises="OSError"
import errno
from unittest import mock

checkpoint = os.path.join(workdir, "ckpt.pt")
save_checkpoint(checkpoint, model, optimizer, epoch=1)
real_save = torch.save


def disk_full_half_way(obj, file):
    data = io.BytesIO()
    real_save(obj, data)
    file.write(data.getvalue()[: len(data.getvalue()) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


with mock.patch("torch.save", disk_full_half_way):
    save_checkpoint(checkpoint, model, optimizer, epoch=2)

# %% [markdown]
# The previous checkpoint is still there and loads, and the half-written
# temporary file was removed:

# %%
assert torch.load(checkpoint)["epoch"] == 1
assert not [name for name in os.listdir(workdir) if name.endswith(".tmp")]

# %% [markdown]
# ## Loading a checkpoint: `load_checkpoint`
#
# `load_checkpoint` reads with `weights_only=True`, puts the weights into the
# model and the state into the optimizer, and returns everything else that was
# saved (epoch, losses, settings). Before loading it does two things for you.
#
# It removes a wrapper's prefix. `nn.DataParallel` and
# `DistributedDataParallel` keep the model as `self.module`, so every key of
# their `state_dict` starts with `module.`; a `torch.compile`d model keeps it
# as `_orig_mod`. The prefix is removed with torch's own
# `torch.nn.modules.utils.consume_prefix_in_state_dict_if_present`, which looks
# only at the start of a key: a layer that is really called `module` inside
# the model (`encoder.module.weight`) keeps its name. The model side is
# unwrapped the same way, so a checkpoint fits whichever way it was saved.
#
# And it compares keys and shapes first, so a checkpoint that does not fit
# gets one error listing every missing, unexpected and wrongly shaped key.

# %%
from tutorials_pkg.save_load import load_checkpoint

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
        save_checkpoint(checkpoint, nn.DataParallel(model) if save_wrapped else model, epoch=4)
        target = nn.DataParallel(digits_classifier()) if load_wrapped else digits_classifier()
        meta = load_checkpoint(checkpoint, target)
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
load_checkpoint(checkpoint, on_device, map_location=device)
print(on_device.fc1.weight.device, torch.equal(on_device.eval()(x[:8].to(device)).cpu(), reference))

# %% [markdown]
# ### A checkpoint that does not fit
#
# A model built for 8 hidden units instead of 32 gets a
# `CheckpointMismatchError` (a `ValueError`) that lists the keys whose shapes
# differ:

# %% tags=["raises-exception"] raises="CheckpointMismatchError"
load_checkpoint(checkpoint, digits_classifier(hidden=8))

# %% [markdown]
# ## Resuming training exactly
#
# To continue a run as if it had never stopped, a checkpoint needs more than
# the weights: the optimizer's state (Adam's moving averages), the learning
# rate scheduler's position, the epoch, and the random states that decide the
# data order and the dropout masks.

# %%
from tutorials_pkg.digits import train_epoch
from tutorials_pkg.save_load import restore_rng_states, rng_states

show_source(train_epoch, rng_states, restore_rng_states)

# %% [markdown]
# First a run of 4 epochs without a stop:

# %%
def new_run(seed):
    torch.manual_seed(seed)
    model = digits_classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    return model, optimizer, scheduler, torch.Generator().manual_seed(seed)


def train(run, epochs, losses):
    model, optimizer, scheduler, generator = run
    for _ in range(epochs):
        losses.append(train_epoch(model, optimizer, x, y, generator))
        scheduler.step()
    return losses


straight = train(new_run(seed=0), 4, [])
print([round(loss, 4) for loss in straight])

# %% [markdown]
# Then the same run stopped after 2 epochs, saved, and continued by new
# objects, created with a different seed so that everything they end up with
# must come from the checkpoint:

# %%
model, optimizer, scheduler, generator = run = new_run(seed=0)
losses = train(run, 2, [])
resume = os.path.join(workdir, "resume.pt")
save_checkpoint(resume, model, optimizer, epoch=2, losses=losses,
                scheduler=scheduler.state_dict(), **rng_states(generator))

model, optimizer, scheduler, generator = run = new_run(seed=123)
meta = load_checkpoint(resume, model, optimizer)
scheduler.load_state_dict(meta["scheduler"])
restore_rng_states(meta, generator)
resumed = train(run, 4 - meta["epoch"], list(meta["losses"]))
print([round(loss, 4) for loss in resumed])
assert resumed == straight  # exactly, not approximately

# %% [markdown]
# Leave the optimizer's state out (a common shortcut: weights only) and the
# resumed run is a different run from epoch 3 on, because Adam starts its
# averages from zero again; leave the random states out and the data come in
# another order. On a GPU, bit-for-bit equality also needs deterministic kernels
# (`torch.use_deterministic_algorithms(True)`) and the CUDA random states
# (`torch.cuda.get_rng_state_all()`); a `DataLoader` with workers needs its
# own generator saved the same way.
#
# ## Refusing a file that would run code
#
# A pickle can tell the loader to call any function it can import, with any
# arguments. Here a checkpoint carries, next to real weights, an object whose
# pickled form says "call `os.makedirs(...)`"; a real attack would call
# something worse. `load_checkpoint` reads with `weights_only=True`, so it
# fails with an `UnpicklingError` before anything is called:

# %% tags=["raises-exception"] raises="UnpicklingError"
marker = os.path.join(workdir, "payload-ran")


class Payload:
    def __reduce__(self):  # what pickle stores: call this function with these arguments
        return (os.makedirs, (marker,))


untrusted = os.path.join(workdir, "untrusted.pt")
torch.save({"model": model.state_dict(), "note": Payload()}, untrusted)
load_checkpoint(untrusted, digits_classifier())

# %% [markdown]
# The function was never called, and the file can be inspected safely:

# %%
assert not os.path.exists(marker)
print(torch.serialization.get_unsafe_globals_in_checkpoint(untrusted))

# %% [markdown]
# ## safetensors
#
# The [safetensors](https://huggingface.co/docs/safetensors) format has no
# pickle at all: a JSON header with names, dtypes and shapes, then the raw
# bytes. Nothing in it can run, and it can be mapped straight from the disk.
# It stores tensors only (plus string metadata), so it suits weights, while
# a training checkpoint with optimizer state stays a `torch.save` file.

# %%
from safetensors.torch import load_file, save_file

tensors = os.path.join(workdir, "digits.safetensors")
save_file(model.state_dict(), tensors, metadata={"epoch": "4"})
fresh = digits_classifier()
fresh.load_state_dict(load_file(tensors))
assert torch.equal(fresh.eval()(x[:4]), model.eval()(x[:4]))

# %% [markdown]
# ### Tied weights need `save_model` and `load_model`
#
# Some models use one weight matrix in two places, such as the input embedding
# and the output layer of a language model:

# %%
from tutorials_pkg.demo_models import TiedEmbeddingNet

show_source(TiedEmbeddingNet)

# %% [markdown]
# The `state_dict` lists the shared matrix under both names. `save_file`
# refuses to write two names for one piece of memory, with a `RuntimeError`:

# %% tags=["raises-exception"] raises="RuntimeError"
tied = TiedEmbeddingNet()
save_file(tied.state_dict(), os.path.join(workdir, "tied.safetensors"))

# %% [markdown]
# `save_model` writes the shared tensor once, and `load_model` loads it into a
# model whose own code ties the weights again. The tie survives the round trip:

# %%
from safetensors.torch import load_model, save_model

save_model(tied, os.path.join(workdir, "tied.safetensors"))
copy_of_tied = TiedEmbeddingNet()
missing, unexpected = load_model(copy_of_tied, os.path.join(workdir, "tied.safetensors"))
print(sorted(load_file(os.path.join(workdir, "tied.safetensors"))), missing, unexpected)
assert copy_of_tied.out.weight is copy_of_tied.embed.weight
assert torch.equal(copy_of_tied.embed.weight, tied.embed.weight)

# %% [markdown]
# ## Loading large models fast
#
# The usual way to load does the work three times: the model is built with
# randomly initialised weights, `torch.load` reads the whole file into new
# tensors, and `load_state_dict` copies those into the model. For a large model
# three things remove most of it:
#
# - build the model on the **meta device**: tensors with a shape and no data,
#   so no memory is allocated and no initialisation runs;
# - `torch.load(..., mmap=True)` **maps** the file instead of reading it: a
#   tensor's bytes are read when they are first used;
# - `load_state_dict(..., assign=True)` makes the loaded tensors the model's
#   parameters instead of copying into the (data-less) meta ones.

# %%
from tutorials_pkg.save_load import load_on_meta

show_source(load_on_meta)

# %% [markdown]
# On the meta device a ResNet-50 is built in no time and takes no memory:

# %%
from torchvision.models import resnet50

with torch.device("meta"):
    skeleton = resnet50()
print(skeleton.fc.weight)

# %% [markdown]
# Timed on this machine with a ResNet-50 (about 100 MB); the file was just
# written, so it is in the operating system's cache and both ways read from
# memory. `benchmarks/checkpoint_load.py` compares the recipes on a 200 MB+
# file against the time to just read its bytes.

# %%
import time

big = os.path.join(workdir, "resnet50.pt")
save_checkpoint(big, resnet50())

start = time.perf_counter()
usual = resnet50()
load_checkpoint(big, usual)
usual_seconds = time.perf_counter() - start

start = time.perf_counter()
fast = load_on_meta(big, resnet50)
fast_seconds = time.perf_counter() - start

print(f"build + torch.load + copy: {usual_seconds:.3f} s")
print(f"meta + mmap + assign:      {fast_seconds:.3f} s")
sample = torch.randn(1, 3, 64, 64)
assert torch.equal(fast.eval()(sample), usual.eval()(sample))

# %% [markdown]
# ## What goes wrong in the wild
#
# ### `model.state_dict = loaded`
#
# This line looks like loading and raises nothing. It replaces the model's
# `state_dict` *method* with a dictionary; the weights stay random:

# %%
trained = torch.load(weights)
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
# ### `torch.save(model.state_dict, path)`
#
# Without the parentheses, `torch.save` gets the bound method. Pickling a
# bound method pickles the object it is bound to, so this saves the whole
# model after all, and `torch.load` refuses it with an `UnpicklingError`:

# %% tags=["raises-exception"] raises="UnpicklingError"
method_file = os.path.join(workdir, "method.pt")
torch.save(model.state_dict, method_file)
torch.load(method_file)

# %% [markdown]
# What the file asks for shows what it holds: `getattr` (to look the method up
# again) and the model's classes. Loaded with `weights_only=False` (our own
# file, so we can trust it), it gives a method of a copy of the model, not a
# dictionary. The fix is to call it:

# %%
print(torch.serialization.get_unsafe_globals_in_checkpoint(method_file))
assert "builtins.getattr" in torch.serialization.get_unsafe_globals_in_checkpoint(method_file)
method = torch.load(method_file, weights_only=False)
print(type(method).__name__, type(method.__self__).__name__)
assert callable(method) and not isinstance(method, dict)

torch.save(model.state_dict(), method_file)  # the fix: call it
assert isinstance(torch.load(method_file), dict)

# %% [markdown]
# ### Removing the prefix with `k[7:]` or `k.replace("module.", "")`
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
# `strip_prefix` (torch's `consume_prefix_in_state_dict_if_present`, shown
# with `load_checkpoint` above) removes the prefix only at the start of a key:

# %%
net = encoder_net()
net.load_state_dict(strip_prefix(saved))
print(list(strip_prefix(saved))[:2])
assert torch.equal(net.encoder.module.weight, saved["module.encoder.module.weight"])

# %% [markdown]
# ### Keeping the best weights with `best = model.state_dict()`
#
# `state_dict()` does not copy: its tensors *are* the model's parameters
# (detached views of the same memory). Kept as "the best so far", it goes on
# changing as training goes on:

# %%
model, optimizer, scheduler, generator = new_run(seed=0)
best = model.state_dict()
best_at_that_time = best["fc1.weight"].clone()
train_epoch(model, optimizer, x, y, generator)
assert torch.equal(best["fc1.weight"], model.fc1.weight)  # follows the model
assert not torch.equal(best["fc1.weight"], best_at_that_time)  # no longer what was "best"
print("the saved 'best' weights moved with training")

# %% [markdown]
# Take a copy, with `copy.deepcopy(model.state_dict())` or by cloning each
# tensor:

# %%
from tutorials_pkg.save_load import copy_state_dict

show_source(copy_state_dict)

# %%
best = copy_state_dict(model)
best_at_that_time = best["fc1.weight"].clone()
train_epoch(model, optimizer, x, y, generator)
assert torch.equal(best["fc1.weight"], best_at_that_time)
assert not torch.equal(best["fc1.weight"], model.fc1.weight)
print("the copy kept the weights it was taken with")
