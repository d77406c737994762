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
# Weights are worth only what the file they are saved in can give back. This
# page saves and loads the way PyTorch recommends (a `state_dict`, read back
# with `weights_only=True`), writes checkpoints that a crash cannot break,
# loads a checkpoint whatever wrapper it was saved from, loads a pretrained
# checkpoint into a model with a new head, resumes training to the exact same
# numbers, and loads large files at the speed of the disk. It ends with the
# mistakes that silently keep random weights.
#
# Every output on this page was produced by running the code when the site was
# built, on the versions printed below.

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# The examples train a small classifier on scikit-learn's 8×8 handwritten
# digits. Every file goes into a new temporary directory, which becomes the
# working directory, so that file names stay short.

# %%
import os
import tempfile

import torch
from torch import nn

from tutorials_pkg.digits import digits_classifier, load_digits_tensors
from tutorials_pkg.source import show_source

x, y = load_digits_tensors(flatten=True)
os.chdir(tempfile.mkdtemp())

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
torch.save(model, "whole_model.pt")
torch.load("whole_model.pt")

# %% [markdown]
# The message offers two ways out. One is `weights_only=False`, which trusts
# the file completely. The narrower one: ask which globals the file needs
# without loading it (`torch.serialization.get_unsafe_globals_in_checkpoint`,
# which returns them in no particular order, so they are sorted here), check
# that they are what you expect, and allow exactly those with the
# `torch.serialization.safe_globals` context manager:

# %%
needed = sorted(torch.serialization.get_unsafe_globals_in_checkpoint("whole_model.pt"))
print(needed)

expected = [nn.Sequential, nn.Linear, nn.ReLU, nn.Dropout]
assert needed == sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in expected)
with torch.serialization.safe_globals(expected):
    loaded = torch.load("whole_model.pt")
assert torch.equal(loaded(x[:4]), model(x[:4]))
print(type(loaded).__name__, "loaded from a file we trust")

# %% [markdown]
# A `state_dict` needs none of this: it is plain data, loads with the
# defaults, and goes into a model built by your current code:

# %%
torch.save(model.state_dict(), "weights.pt")
fresh = digits_classifier()
fresh.load_state_dict(torch.load("weights.pt"))
assert torch.equal(fresh.eval()(x[:4]), model(x[:4]))

# %% [markdown]
# ### Old files that pickle whole models
#
# Many checkpoints in circulation predate that default. A YOLOv5-style file,
# for one, is a dictionary whose `"model"` entry is the whole model object, and
# code written for it reads `torch.load("best.pt")["model"]`. Today that line
# fails with the same `UnpicklingError`:

# %% tags=["raises-exception"] raises="UnpicklingError"
torch.save({"epoch": 9, "model": model, "optimizer": optimizer.state_dict()}, "best.pt")
torch.load("best.pt")["model"]

# %% [markdown]
# Convert such a file once, from a source you trust, into a checkpoint of
# `state_dict`s: `convert_to_state_dicts` loads it only if every global it
# needs is in the list you pass, inside `safe_globals`, and writes each module
# it finds as its `state_dict`. From then on the defaults load it, and the
# classes can move or change without breaking the file:

# %%
from tutorials_pkg.save_load import convert_to_state_dicts

show_source(convert_to_state_dicts)

# %%
from tutorials_pkg.save_load import load_checkpoint

print(convert_to_state_dicts("best.pt", "best-state.pt", expected))
print(torch.serialization.get_unsafe_globals_in_checkpoint("best-state.pt"))
converted = digits_classifier()
print(load_checkpoint("best-state.pt", converted, torch.optim.Adam(converted.parameters())))

# %% [markdown]
# A whole `DataParallel` model pickled this way (`torch.save(nn.DataParallel(model))`,
# common in multi-GPU tutorials) needs `DataParallel` itself in the list, and
# the model is its `.module`. It also keeps the saving machine's GPUs: pickle
# stores the object's attributes, and `DataParallel.__init__` set
# `device_ids`, `output_device` and `src_device_obj` from the GPUs it found.
# Loading does not run `__init__` again, so the loaded wrapper still asks for
# them. Here the three attributes are set as `__init__` sets them on a
# machine with 4 GPUs; called on this machine, the loaded wrapper raises a
# `RuntimeError` about `cuda:0`:

# %% tags=["raises-exception"] raises="RuntimeError"
wrapped = nn.DataParallel(model)
wrapped.device_ids, wrapped.output_device, wrapped.src_device_obj = [0, 1, 2, 3], 0, torch.device("cuda", 0)
torch.save(wrapped, "dataparallel_whole.pt")

with torch.serialization.safe_globals([nn.DataParallel, *expected]):
    loaded = torch.load("dataparallel_whole.pt")
print(loaded.device_ids, loaded.output_device, loaded.src_device_obj)
loaded(x[:4])

# %% [markdown]
# The model inside has no such memory. Take `.module` and save its
# `state_dict`:

# %%
print(type(loaded.module).__name__, list(loaded.module.state_dict())[:2])
torch.save(loaded.module.state_dict(), "weights.pt")

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
torch.export.save(exported, "digits.pt2")
torch.save(x[:5], "inputs.pt")

script = """import torch
program = torch.export.load("digits.pt2").module()
torch.save(program(torch.load("inputs.pt")), "outputs.pt")"""
subprocess.run([sys.executable, "-c", script], check=True)
assert torch.allclose(torch.load("outputs.pt"), model(x[:5]))
print("same outputs from a process that has no model code")

# %% [markdown]
# ## Writing a checkpoint that survives a crash
#
# `torch.save(obj, path)` opens `path` for writing first, which empties it,
# and then writes. If the process dies half-way (out of disk, killed by a
# scheduler, power), the last good checkpoint is gone and the file left
# behind is truncated. Loading it fails; cut in half as here, `torch.load`
# raises an `OSError` from the zip reader that names no file (cut elsewhere,
# it is a `RuntimeError` saying the zip archive has no central directory, and
# an empty file gives a bare `EOFError`):

# %% tags=["raises-exception"] raises="OSError"
import io

buffer = io.BytesIO()
torch.save(model.state_dict(), buffer)
with open("truncated.pt", "wb") as file:
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # what a crash leaves
torch.load("truncated.pt")

# %% [markdown]
# The message a reader needs names the file and says what is wrong with it.
# `load_checkpoint`, the loader of this page, gives a `TruncatedCheckpointError`
# (a `ValueError`) for an empty or cut-short file:

# %% tags=["raises-exception"] raises="TruncatedCheckpointError"
load_checkpoint("truncated.pt", digits_classifier())

# %% [markdown]
# `save_checkpoint` never writes to `path` itself. It writes a temporary file
# next to it, calls `flush` and `os.fsync` so the bytes are on the disk and
# not only in the operating system's cache, and then `os.replace` puts the new
# file in place in one step (a rename within one file system is atomic).
# A reader sees either the old checkpoint or the complete new one.
#
# ```mermaid
# flowchart LR
#     s["torch.save to .ckpt.pt.1f3a9c2b.tmp"] --> c["read back: weights_only?"] --> f["flush + fsync"] --> r["os.replace(tmp, ckpt.pt)"]
#     s -. crash .-> old(["ckpt.pt: the previous checkpoint, intact"])
#     c -. refused .-> old
#     f -. crash .-> old
# ```
#
# Before the new file replaces the old one, it is read back with
# `torch.load(weights_only=True)` (mapped, so the tensors' bytes are not read
# again): anything in it that `load_checkpoint` would refuse is refused now,
# at save time, naming the entry. Through a symbolic link it replaces the
# file the link points to, as `torch.save` would, and keeps that file's
# permissions; its errors name your path, not the temporary one; and the
# temporary name is shortened where needed, so a long but valid file name
# saves.

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

save_checkpoint("ckpt.pt", model, optimizer, epoch=1)
real_save = torch.save


def disk_full_half_way(obj, file):
    data = io.BytesIO()
    real_save(obj, data)
    file.write(data.getvalue()[: len(data.getvalue()) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


with mock.patch("torch.save", disk_full_half_way):
    save_checkpoint("ckpt.pt", model, optimizer, epoch=2)

# %% [markdown]
# The previous checkpoint is still there and loads, and the half-written
# temporary file was removed:

# %%
assert torch.load("ckpt.pt")["epoch"] == 1
assert not [name for name in os.listdir() if name.endswith(".tmp")]

# %% [markdown]
# A process killed with `SIGKILL` (or by the out-of-memory killer) cannot
# remove its temporary file. Each save holds an advisory lock (`flock`) on its
# temporary file while it writes, and the next save of the same path deletes
# the temporary files that no running save holds. Below, a checkpoint is
# saved through a link `latest.pt`, its file gets the permissions `0600`, and a
# stand-in for such a leftover is put beside it; after the next save the link
# is still a link, the file still `0600`, and the leftover gone:

# %%
os.makedirs("run-1")
os.symlink("run-1/ckpt.pt", "latest.pt")
save_checkpoint("latest.pt", model, epoch=1)
os.chmod("run-1/ckpt.pt", 0o600)
with open("run-1/.ckpt.pt.0123abcd.tmp", "wb") as file:  # what a killed save leaves
    file.write(b"half a checkpoint")

save_checkpoint("latest.pt", model, epoch=2)
print(os.path.islink("latest.pt"), oct(os.stat("run-1/ckpt.pt").st_mode & 0o777), sorted(os.listdir("run-1")))
assert torch.load("run-1/ckpt.pt")["epoch"] == 2

# %% [markdown]
# ### Metadata the loader would refuse
#
# `save_checkpoint` takes any keyword arguments as metadata, and whatever
# they hold must come back through `weights_only=True`. Three common values do
# not: a numpy number (a metric computed with numpy, `np.float64(0.9)`), a
# `pathlib.Path`, and an `argparse.Namespace` of the run's settings. A plain
# `torch.save` writes them without a word, and the run finds out when it
# resumes. `save_checkpoint` refuses them at once with a `TypeError` that
# names the entry and what to store instead, and leaves the old file as it was:

# %% tags=["raises-exception"] raises="TypeError"
import argparse
import pathlib

import numpy as np

args = argparse.Namespace(lr=0.01, data=pathlib.Path("data/digits"))
save_checkpoint("ckpt.pt", model, epoch=3, accuracy=np.float64(0.9), args=args)

# %% [markdown]
# Stored as a `float`, a `str` and a dictionary (`vars(args)`), the same
# metadata saves and loads back:

# %%
settings = {**vars(args), "data": str(args.data)}
save_checkpoint("ckpt.pt", model, epoch=3, accuracy=float(np.float64(0.9)), args=settings)
print(load_checkpoint("ckpt.pt", digits_classifier()))

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

# %% [markdown]
# ## Loading to fine-tune
#
# The most common load in practice puts a checkpoint trained for one task into
# a model for another: a 1000-class ImageNet ResNet-18 into a model for 10
# classes. The backbone fits and the classification head does not, so
# `load_checkpoint` refuses it with a `CheckpointMismatchError`, also with
# `strict=False` (which skips missing and unexpected keys, never a wrong
# shape):

# %% tags=["raises-exception"] raises="CheckpointMismatchError"
from torchvision.models import resnet18

torch.manual_seed(0)
torch.save(resnet18(num_classes=1000).state_dict(), "imagenet.pt")  # stands in for a downloaded file
finetuned = resnet18(num_classes=10)
load_checkpoint("imagenet.pt", finetuned, strict=False)

# %% [markdown]
# `filter_state_dict` keeps the entries whose name (after the wrapper
# prefixes) and shape fit the model, and says why it dropped each other one:

# %%
from tutorials_pkg.save_load import filter_state_dict

show_source(filter_state_dict)

# %% [markdown]
# Then `load_state_dict(kept, strict=False)` loads what was kept. It returns
# an `IncompatibleKeys` pair that reads: `missing_keys` are the model's
# entries the file did not fill, so those layers keep their random
# initialisation and start from scratch (here the new head, `fc`);
# `unexpected_keys` are entries of the file the model has no place for (none
# here, since `filter_state_dict` dropped them).

# %%
kept, dropped = filter_state_dict(torch.load("imagenet.pt"), finetuned)
print(len(kept), "entries kept;", dropped)
result = finetuned.load_state_dict(kept, strict=False)
print(result)
assert result.missing_keys == ["fc.weight", "fc.bias"] and not result.unexpected_keys

# %% [markdown]
# ### `assign=True`: the file's tensors become the parameters
#
# By default `load_state_dict` copies each value into the model's existing
# tensor, which keeps that tensor's dtype and device. With `assign=True` the
# loaded tensor itself becomes the parameter (only `requires_grad` is taken
# from the model). Two consequences: a checkpoint saved in float16 makes a
# float16 model, and tensors from `torch.load(mmap=True)` stay memory-mapped
# from the file instead of being copied:

# %%
half = {key: value.half() for key, value in resnet18(num_classes=10).state_dict().items()
        if value.is_floating_point()}
copied, assigned = resnet18(num_classes=10), resnet18(num_classes=10)
copied.load_state_dict(half, strict=False)
assigned.load_state_dict(half, strict=False, assign=True)
print("copy:", copied.fc.weight.dtype, " assign:", assigned.fc.weight.dtype)

mapped = torch.load("imagenet.pt", mmap=True)
copied, assigned = resnet18(num_classes=1000), resnet18(num_classes=1000)
copied.load_state_dict(mapped)
assigned.load_state_dict(mapped, assign=True)
print("shares the mapped memory: copy", copied.fc.weight.data_ptr() == mapped["fc.weight"].data_ptr(),
      " assign", assigned.fc.weight.data_ptr() == mapped["fc.weight"].data_ptr())

# %% [markdown]
# So build the optimizer after the load. One built before holds the old
# parameter objects, which `assign=True` replaced: it steps tensors the model
# no longer uses, and the model does not learn.

# %%
model_first = resnet18(num_classes=1000)
too_early = torch.optim.SGD(model_first.parameters(), lr=0.1)
model_first.load_state_dict(torch.load("imagenet.pt"), assign=True)
before = model_first.fc.weight.detach().clone()
model_first(torch.randn(2, 3, 64, 64)).sum().backward()
too_early.step()
print("optimizer holds the model's fc.weight:", too_early.param_groups[0]["params"][-2] is model_first.fc.weight)
assert torch.equal(model_first.fc.weight, before)  # the step changed nothing in the model

after_load = torch.optim.SGD(model_first.parameters(), lr=0.1)  # the fix
after_load.step()
assert not torch.equal(model_first.fc.weight, before)

# %% [markdown]
# ## Resuming training exactly
#
# To continue a run as if it had never stopped, a checkpoint needs more than
# the weights: the optimizer's state (Adam's moving averages), the learning
# rate scheduler's position, the epoch, and the random states that decide the
# data order and the dropout masks. A `Run` holds the four objects a run
# changes as it goes:

# %%
from tutorials_pkg.save_load import Run, digits_run, train_run

show_source(Run, digits_run, train_run)

# %% [markdown]
# First a run of 4 epochs without a stop:

# %%
straight = train_run(digits_run(seed=0), x, y, 4, [])
print([round(loss, 4) for loss in straight])

# %% [markdown]
# `run_state` collects what the checkpoint needs besides the model and the
# optimizer, and `restore_run_state` puts it back:

# %%
from tutorials_pkg.save_load import restore_run_state, run_state

show_source(run_state, restore_run_state)

# %% [markdown]
# Then the same run stopped after 2 epochs, saved, and continued by new
# objects, created with a different seed so that everything they end up with
# must come from the checkpoint:

# %%
run = digits_run(seed=0)
losses = train_run(run, x, y, 2, [])
save_checkpoint("resume.pt", run.model, run.optimizer, epoch=2, losses=losses, **run_state(run))

run = digits_run(seed=123)
meta = load_checkpoint("resume.pt", run.model, run.optimizer)
restore_run_state(run, meta)
resumed = train_run(run, x, y, 4 - meta["epoch"], list(meta["losses"]))
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
class Payload:
    def __reduce__(self):  # what pickle stores: call this function with these arguments
        return (os.makedirs, ("payload-ran",))


torch.save({"model": model.state_dict(), "note": Payload()}, "untrusted.pt")
load_checkpoint("untrusted.pt", digits_classifier())

# %% [markdown]
# The function was never called, and the file can be inspected safely:

# %%
assert not os.path.exists("payload-ran")
print(torch.serialization.get_unsafe_globals_in_checkpoint("untrusted.pt"))

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

save_file(model.state_dict(), "digits.safetensors", metadata={"epoch": "4"})
fresh = digits_classifier()
fresh.load_state_dict(load_file("digits.safetensors"))
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
save_file(tied.state_dict(), "tied.safetensors")

# %% [markdown]
# `save_model` writes the shared tensor once, and `load_model` loads it into a
# model whose own code ties the weights again. The tie survives the round trip:

# %%
from safetensors.torch import load_model, save_model

save_model(tied, "tied.safetensors")
copy_of_tied = TiedEmbeddingNet()
missing, unexpected = load_model(copy_of_tied, "tied.safetensors")
print(sorted(load_file("tied.safetensors")), missing, unexpected)
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
#
# A mapped file is read one page fault at a time, though: when the file is
# not in the operating system's page cache (a cold cache), each first touch
# of a page waits for the disk, and a model touched page by page reads
# slower than one sequential read of the file. So `load_on_meta` first warms
# the page cache: `warm_page_cache` reads the whole file once, sequentially,
# with `os.sendfile` to `/dev/null` (what `cat file > /dev/null` does, without
# copying the bytes into Python), unless `in_page_cache` finds it there
# already, which costs some tens of microseconds. Then mapping it needs no
# disk access at all.

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
# Timed on the machine that built this page, with a stand-in for the large
# matrices of a language model (two `Linear(4096, 4096)`, 134 MB), each time
# the median of 5 runs beside the time to just read the file's bytes (the
# floor). Warm: the file is in the page cache. Cold: `drop_from_page_cache`
# asks the kernel to forget the file's pages before each run
# (`posix_fadvise(DONTNEED)`, no root needed), and `in_page_cache` checks that
# it did. `touch_every_page` reads a byte of every page of the model's tensors,
# as its first forward pass would, so that every row is a complete load.

# %% tags=["measured"]
import statistics

from tutorials_pkg.measure import seconds_each
from tutorials_pkg.save_load import drop_from_page_cache, in_page_cache, touch_every_page


def large():
    return nn.Sequential(nn.Linear(4096, 4096), nn.Linear(4096, 4096))


save_checkpoint("large.pt", large())
file_bytes = bytearray(os.path.getsize("large.pt"))


def read_the_bytes():
    with open("large.pt", "rb", buffering=0) as file:
        file.readinto(file_bytes)


def usual_load():
    load_checkpoint("large.pt", large())


def mapped_without_warming():
    touch_every_page(load_on_meta("large.pt", large, warm=False))


def mapped_after_warming():
    touch_every_page(load_on_meta("large.pt", large))


loads = {"read the bytes (floor)": read_the_bytes, "build + torch.load + copy": usual_load,
         "meta + mmap + assign": mapped_without_warming, "load_on_meta (warms the cache)": mapped_after_warming}
warm = [statistics.median(runs) for runs in seconds_each(list(loads.values()), repeats=5)]
drop_from_page_cache("large.pt")
print("dropped from the page cache:", not in_page_cache("large.pt"))
cold = [statistics.median(runs) for runs in seconds_each(
    list(loads.values()), repeats=5, before=lambda: drop_from_page_cache("large.pt"))]

print(f"{'':32} {'warm s':>8} {'x floor':>8} {'cold s':>8} {'x floor':>8}")
for name, w, c in zip(loads, warm, cold):
    print(f"{name:32} {w:8.3f} {w / warm[0]:8.2f} {c:8.3f} {c / cold[0]:8.2f}")

# %% [markdown]
# `benchmarks/checkpoint_load.py --cold` measures the same on a 269 MB file,
# with safetensors and with `MAP_SHARED` beside them. Two settings one might
# reach for instead do not read the file ahead:
# `torch.serialization.set_default_mmap_options` takes only `MAP_PRIVATE`
# (the default) or `MAP_SHARED`, so it cannot ask for the whole mapping to be
# read at once (`MAP_POPULATE`); and on Linux
# `os.posix_fadvise(..., POSIX_FADV_WILLNEED)` reads at most the device's
# readahead window per call, not the whole file.

# %%
import mmap

try:
    torch.serialization.set_default_mmap_options(mmap.MAP_SHARED | mmap.MAP_POPULATE)
except ValueError as error:
    print(error)

# %% [markdown]
# When does warming the cache matter? When the file is not in memory: the
# first load after a reboot or in a fresh container, a file larger than what
# the page cache keeps between runs (large models, many checkpoints, a busy
# machine), and network file systems, where each page fault is a round trip
# over the network and one sequential read streams. When does it not? When the
# file was just written or read (the table's warm column: `in_page_cache` sees
# it, and nothing is read twice), for small files, and when the model will use
# only part of its weights: then `warm=False` reads only the pages that are
# touched. A file larger than the free memory is read ahead in vain (its first
# pages are evicted before the model uses them): there, too, use `warm=False`.
# `warm_page_cache` needs Linux (`os.RWF_NOWAIT`, `os.sendfile` to a file);
# elsewhere it does nothing.
#
# ## Choosing GPUs: `CUDA_VISIBLE_DEVICES`
#
# Multi-GPU tutorials choose the GPUs with `os.environ["CUDA_VISIBLE_DEVICES"] = "1"`,
# often half-way through a script, and the name is easy to misspell; one
# widely read tutorial has three spellings, none of them right. CUDA reads this
# variable once, when it initialises in the process (the first CUDA call, not
# `import torch`). Set after that, it changes nothing; misspelt, it is just
# another variable that nothing reads. Neither warns. A fresh Python process
# per case shows it: each sets the names to the empty string (the right name
# with an empty value hides every GPU), before or after CUDA starts, and prints
# how many GPUs it sees; the last one sets the tutorial's three spellings:

# %%
count_gpus = """import os, sys, torch
names, when = sys.argv[1].split(","), sys.argv[2]
if when == "after" and torch.cuda.is_available():
    torch.zeros(1, device="cuda")  # initialises CUDA
for name in names:
    os.environ[name] = ""
print(torch.cuda.device_count())"""

print("GPUs on this machine:", torch.cuda.device_count())
environment = {name: value for name, value in os.environ.items() if name != "CUDA_VISIBLE_DEVICES"}
for names, when in [("CUDA_VISIBLE_DEVICES", "before"), ("CUDA_VISIBLE_DEVICES", "after"),
                    ("CUDA_VISIBLE_DIVICES,CUDA_VISIABLE_DIVICES,CUDA_VISIABLE_DEVICES", "before")]:
    result = subprocess.run([sys.executable, "-c", count_gpus, names, when], env=environment,
                            capture_output=True, text=True, check=True)
    print(f"{names} set {when} CUDA starts: {result.stdout.strip()} GPUs seen, "
          f"warnings: {result.stderr.strip() or 'none'}")

# %% [markdown]
# Only the first line hides the GPUs. On a machine without GPUs every count is
# 0, and what still shows is that no line warns. The safe ways are to set the
# variable outside Python (`CUDA_VISIBLE_DEVICES=1 python train.py`), or as the
# first lines of the script. `select_gpus` does the second and refuses both
# mistakes:

# %%
from tutorials_pkg.save_load import select_gpus

show_source(select_gpus)

# %% [markdown]
# With one of the misspelt names in the environment it raises a `ValueError`
# instead of letting CUDA ignore it (once CUDA is initialised, it raises a
# `RuntimeError`):

# %% tags=["raises-exception"] raises="ValueError"
os.environ["CUDA_VISIABLE_DEVICES"] = "1"
try:
    select_gpus("1")
finally:
    del os.environ["CUDA_VISIABLE_DEVICES"]

# %% [markdown]
# ## What goes wrong in the wild
#
# ### `model.state_dict = loaded`
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
# ### `torch.save(model.state_dict, path)`
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
# ### `.pth`: also the extension of Python's path configuration files
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
# `.pt` has no other meaning; this page uses it throughout.
#
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
# so it strips nothing and says nothing; with `strict=False` every key is then
# missing and unexpected at once, and the whole model keeps its random weights:

# %%
net = encoder_net()
result = net.load_state_dict(strip_prefix_with_a_misspelt_name(saved), strict=False)
print(list(strip_prefix_with_a_misspelt_name(saved))[:2])
print(len(result.missing_keys), "missing,", len(result.unexpected_keys), "unexpected")
assert len(result.missing_keys) == len(net.state_dict())

# %% [markdown]
# `strip_prefix` (torch's `consume_prefix_in_state_dict_if_present`, shown
# with `load_checkpoint` above) removes the prefix only at the start of a key.
# A prefix is whole names, so `"module"` and `"module."` are the same:

# %%
net = encoder_net()
net.load_state_dict(strip_prefix(saved))
print(list(strip_prefix(saved))[:2])
assert list(strip_prefix(saved, "module")) == list(strip_prefix(saved))
assert torch.equal(net.encoder.module.weight, saved["module.encoder.module.weight"])

# %% [markdown]
# ### Keeping the best weights with `best = model.state_dict()`
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
