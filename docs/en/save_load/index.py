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
# chapter saves and loads the way PyTorch recommends (a `state_dict`, read back
# with `weights_only=True`), writes checkpoints that a crash cannot break,
# loads a checkpoint whatever wrapper it was saved from, loads a pretrained
# checkpoint into a model with a new head, resumes training to the exact same
# numbers, and loads large files at the speed of the disk. It ends with the
# mistakes that silently keep random weights.
#
# The chapter has six pages:
#
# 1. This page: what a `state_dict` is, why to save it rather than the whole
#    model, refusing a file that would run code, and the safetensors format.
# 2. [Checkpoints](checkpoints/): writing a checkpoint that survives a crash.
# 3. [Loading](loading/): reading a checkpoint back with `load_checkpoint`,
#    whatever wrapper or device it was saved from.
# 4. [Fine-tune and resume](fine_tune_and_resume/): loading pretrained weights
#    to fine-tune, and resuming training exactly.
# 5. [Fast loading, GPUs](fast_loading/): loading large models fast, and
#    choosing GPUs with `CUDA_VISIBLE_DEVICES`.
# 6. [In the wild](in_the_wild/): the mistakes met in practice that silently
#    keep random weights.
#
# Every output in this chapter was produced by running the code when the site
# was built, on the versions printed below.

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
# ## Refusing a file that would run code
#
# A pickle can tell the loader to call any function it can import, with any
# arguments. Here a checkpoint carries, next to real weights, an object whose
# pickled form says "call `os.makedirs(...)`"; a real attack would call
# something worse. `load_checkpoint` (the chapter's loader, on [the third
# page](loading/#loading-a-checkpoint-load_checkpoint)) reads with
# `weights_only=True`, so it fails with an `UnpicklingError` before anything
# is called:

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
# a training checkpoint with optimizer state stays a `torch.save` file (the
# [next page](checkpoints/) writes one).

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
