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
# # Saving and loading: fast loading, GPUs
#
# The fifth page of the chapter on saving and loading. [The previous
# page](../fine_tune_and_resume/) fine-tuned and resumed; this one loads a
# large model's checkpoint at the speed of the disk, and shows how to choose
# the GPUs from a script so that the choice holds.

# %% [markdown]
# Every file goes into a new temporary directory, which becomes the working
# directory. Last, the versions this page runs on, which the timings below
# were measured with.

# %%
import os
import subprocess
import sys
import tempfile

import torch
from torch import nn

from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.save_load import load_checkpoint, save_checkpoint
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())

print(describe_runtime())

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
#   parameters instead of copying into the (data-less) meta ones (see
#   [the previous page](../fine_tune_and_resume/#assigntrue-the-files-tensors-become-the-parameters)).
#
# `load_on_meta` does the three, with `load_weights` from [the loading
# page](../loading/#loading-a-checkpoint-load_checkpoint), so a checkpoint
# saved through a wrapper loads too:

# %%
from tutorials_pkg.save_load import load_on_meta

show_source(load_on_meta)

# %% [markdown]
# `assign=True` assigns each name of the `state_dict` its own tensor, so two
# layers that shared one weight (an embedding and the output layer of a
# language model) would come back as two copies, and training would move them
# apart. `load_weights` ties them again, as the model's code tied them; here a
# tied model saved through `DataParallel`:

# %%
from tutorials_pkg.demo_models import TiedEmbeddingNet

save_checkpoint("tied.pt", nn.DataParallel(TiedEmbeddingNet()))
tied = load_on_meta("tied.pt", TiedEmbeddingNet)
print(tied.out.weight is tied.embed.weight, len(list(tied.parameters())))

# %% [markdown]
# A mapped file is read one page fault at a time, though: when the file is
# not in the operating system's page cache (a cold cache), each first touch
# of a page waits for the disk, and a model touched page by page reads
# slower than one sequential read of the file. So call `warm_page_cache` first:
# it reads the whole file once, sequentially, with `os.sendfile` to
# `/dev/null` (what `cat file > /dev/null` does, without copying the bytes
# into Python), unless `in_page_cache` finds it there already, which costs
# some tens of microseconds. Then mapping it needs no disk access at all.

# %%
from tutorials_pkg.save_load import in_page_cache, warm_page_cache

show_source(warm_page_cache, in_page_cache)

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
from tutorials_pkg.save_load import drop_from_page_cache, touch_every_page


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
    touch_every_page(load_on_meta("large.pt", large))


def mapped_after_warming():
    warm_page_cache("large.pt")
    touch_every_page(load_on_meta("large.pt", large))


loads = {"read the bytes (floor)": read_the_bytes, "build + torch.load + copy": usual_load,
         "load_on_meta (meta + mmap + assign)": mapped_without_warming,
         "warm_page_cache + load_on_meta": mapped_after_warming}
warm = [statistics.median(runs) for runs in seconds_each(list(loads.values()), repeats=5)]
drop_from_page_cache("large.pt")
print("dropped from the page cache:", not in_page_cache("large.pt"))
cold = [statistics.median(runs) for runs in seconds_each(
    list(loads.values()), repeats=5, before=lambda: drop_from_page_cache("large.pt"))]

print(f"{'':36} {'warm s':>8} {'x floor':>8} {'cold s':>8} {'x floor':>8}")
for name, w, c in zip(loads, warm, cold):
    print(f"{name:36} {w:8.3f} {w / warm[0]:8.2f} {c:8.3f} {c / cold[0]:8.2f}")

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
# only part of its weights: then `load_on_meta` alone reads only the pages
# that are touched. A file larger than the free memory is read ahead in vain
# (its first pages are evicted before the model uses them): there, too, skip
# `warm_page_cache`.
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
# One more detail of the variable's syntax. A tutorial writes `'0, 1'`, with a
# space; is that read as two GPUs? CUDA reads each comma-separated entry like
# C's `strtoul`, which skips leading spaces and stops at the first character
# that is not a digit, and stops the list at the first entry it cannot read.
# torch keeps a copy of that reading (to count GPUs without starting CUDA), so
# it can be shown on any machine: a space after the comma is harmless, but a
# space or a semicolon instead of the comma leaves one GPU, silently.
# `select_gpus` refuses those two:

# %%
def gpus_torch_reads(value):
    os.environ["CUDA_VISIBLE_DEVICES"] = value
    try:
        return torch.cuda._parse_visible_devices()  # private: torch's copy of CUDA's reading
    finally:
        del os.environ["CUDA_VISIBLE_DEVICES"]


saved_value = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
for value in ["0,1", "0, 1", "0 1", "0;1"]:
    print(f"CUDA_VISIBLE_DEVICES={value!r:7} -> GPUs {gpus_torch_reads(value)}")
if saved_value is not None:
    os.environ["CUDA_VISIBLE_DEVICES"] = saved_value
