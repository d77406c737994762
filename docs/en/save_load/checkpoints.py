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
# # Saving and loading: checkpoints
#
# The second page of the chapter on saving and loading. [The first
# page](../) showed why to save a `state_dict` rather than the whole model;
# this one writes it into a checkpoint that a crash cannot break, and [the
# next page](../loading/) reads it back with `load_checkpoint`, whatever
# wrapper or device it was saved from.

# %% [markdown]
# The examples start where [the first page](../) did: a small classifier
# for scikit-learn's 8×8 handwritten digits, trained one step from the same
# seed. Every file goes into a new temporary directory, which becomes the
# working directory. Last, the versions this page runs on.

# %%
import os
import tempfile

import torch
from torch import nn

from tutorials_pkg.digits import digits_classifier, load_digits_tensors
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.save_load import load_checkpoint
from tutorials_pkg.source import show_source

x, y = load_digits_tensors(flatten=True)
torch.manual_seed(0)
model = digits_classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
optimizer.step()
model.eval()
os.chdir(tempfile.mkdtemp())

print(describe_runtime())

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
# `load_checkpoint`, the loader of this chapter, gives a `TruncatedCheckpointError`
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
#     c["check: weights_only loads it?"] --> s["torch.save to .ckpt.pt.tmp"] --> f["flush + fsync"] --> r["os.replace(tmp, ckpt.pt)"]
#     c -. refused .-> old(["ckpt.pt: the previous checkpoint, intact"])
#     s -. crash .-> old
#     f -. crash .-> old
# ```
#
# Before anything is written, `check_loads_with_weights_only` saves the
# checkpoint without the tensors' bytes (`torch.serialization.skip_data`) and
# loads it back with `weights_only=True` onto the meta device: anything
# `load_checkpoint` would refuse is refused now, with torch's own message, and
# the check allocates no memory, on the CPU or on a GPU. The temporary file has
# one fixed name, `.ckpt.pt.tmp`, so what a killed save leaves is simply
# replaced by the next save. Through a symbolic link it replaces the file the
# link points to and keeps that file's permissions, as `torch.save` does; its
# errors name your path, not the temporary one; and the temporary name is cut
# to 200 bytes (between characters), so a long but valid file name saves.
# `torch.save` also stores a CRC-32 of every tensor's bytes in the file, which
# `load_checkpoint` checks ([next page](../loading/#a-damaged-file)).

# %%
from tutorials_pkg.save_load import save_checkpoint

show_source(save_checkpoint)

# %% [markdown]
# What it leaves out on purpose: two processes saving the same path at once
# share the temporary file and can mix their bytes (let one process, such as
# rank 0, write), and it does not `fsync` the folder, so after a power cut the
# checkpoint you find may be the previous one.
#
# ### A save that fails half-way
#
# To see it work, save once, then make the next save fail half-way: the
# stand-in for `torch.save` below writes half the bytes of the checkpoint and
# then raises the `OSError` a full disk gives.

# %% tags=["raises-exception"] raises="OSError"
import errno
from unittest import mock

save_checkpoint("ckpt.pt", model, optimizer, epoch=1)
real_save = torch.save


def disk_full_half_way(obj, file):
    if not str(file.name).endswith(".tmp"):  # the check's pickle, before the write: let it pass
        return real_save(obj, file)
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
# ### Killed saves, links and permissions
#
# A process killed with `SIGKILL` (or by the out-of-memory killer) cannot
# remove its temporary file. Because the name is fixed, at most one such file
# exists per checkpoint, and the next save writes over it and renames it away.
# Below, a checkpoint is saved through a link `latest.pt`, its file gets the
# permissions `0600`, and a stand-in for a killed save's leftover is put beside
# it; after the next save the link is still a link, the file still `0600`, and
# the leftover gone:

# %%
os.makedirs("run-1")
os.symlink("run-1/ckpt.pt", "latest.pt")
save_checkpoint("latest.pt", model, epoch=1)
os.chmod("run-1/ckpt.pt", 0o600)
with open("run-1/.ckpt.pt.tmp", "wb") as file:  # what a killed save leaves
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
# resumes. `save_checkpoint` refuses them at once with torch's own
# `UnpicklingError`, which names the first global it would not load (here
# numpy's scalar type), and leaves the old file as it was:

# %% tags=["raises-exception"] raises="UnpicklingError"
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
