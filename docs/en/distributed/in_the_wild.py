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
# # Distributed checkpoints: in the wild
#
# The last page of the chapter: what goes wrong in practice. Each section
# makes the mistake happen, then gives the fix; the launcher of the
# [previous page](../launcher/) ends each broken run with a clear error.
#
# ## Reading the file before rank 0 has written it
#
# Without a barrier, the other ranks do not wait for rank 0: they read at once.
# Here rank 0 takes 30 seconds before writing (a large checkpoint can take
# that long), and the function stands for code that saves on rank 0 and then
# loads on every rank:

# %%
import os
import tempfile

import torch

from tutorials_pkg.distributed import load_without_barrier
from tutorials_pkg.launcher import run_on_ranks
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())  # every file this page writes goes here
show_source(load_without_barrier)

# %% [markdown]
# Rank 1 finds no file and fails with `FileNotFoundError`; the launcher stops
# rank 0 (without waiting out its 30 seconds) and raises a `RankFailedError`
# that names the rank and its error:

# %% tags=["raises-exception"] raises="RankFailedError"
run_on_ranks(load_without_barrier, "no_barrier.pt")

# %% [markdown]
# With a checkpoint from an earlier epoch at the same path, the same race is
# silent: rank 1 reads the old weights, or a half-written file. The mirror
# mistake, every rank writing the same path at the same time, gives a file
# that is whichever write finished last, or a corrupt mix of several. The fix
# is `save_training_state` of the [first page](../#the-script-torchrun-starts):
# only rank 0 writes, and `dist.barrier()` holds every rank until the file is
# complete, which is why both ranks of the
# [resumed run](../#resuming-every-rank-loads) read the same state.

# %% [markdown]
# ## Loading without `map_location`
#
# A checkpoint records, for every tensor, the device it was saved from, and
# `torch.load` without `map_location` creates each tensor there again.
# `storage_locations` reads those records:

# %%
from tutorials_pkg.distributed import storage_locations

show_source(storage_locations)

# %% [markdown]
# Take the checkpoint of the [first page](../#the-script-torchrun-starts):
# here `main` trains one epoch in a group of one process, in this notebook
# (a `HashStore` in memory replaces the address and port), and rank 0 writes
# `run/epoch1.pt`:

# %%
import torch.distributed as dist

from tutorials_pkg.distributed import main

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
main(["run", "--epochs", "1"], device=torch.device("cpu"))  # in this group; main leaves it
print(storage_locations("run/epoch1.pt"))
unmapped = torch.load("run/epoch1.pt", weights_only=True)
assert {str(t.device) for t in unmapped["model"].values()} <= set(storage_locations("run/epoch1.pt"))

# %% [markdown]
# This file says `cpu` even when a GPU job saves it: `save_training_state`
# gathers everything onto rank 0's CPU (`cpu_offload=True`). A file saved with
# `torch.save(model.state_dict(), path)` from a GPU job says `cuda:0` for every
# tensor of rank 0's model. Loaded without `map_location` on a machine with 8
# GPUs, every rank then creates those tensors on GPU 0: eight copies on one
# GPU, which can run out of memory while the other seven hold none. On a
# machine without a GPU the same load fails with a `RuntimeError` ("Attempting
# to deserialize object on a CUDA device but torch.cuda.is_available() is
# False", raised in `torch/serialization.py`). Read onto the CPU, as
# `load_training_state` does (`set_state_dict` then puts each tensor on its
# parameter's device), or give each rank its own device; a dict remaps only the
# locations it names, for example `{"cuda:0": f"cuda:{local_rank}"}`.

# %% [markdown]
# ## A rank fails, and the others wait for it
#
# A rank that raises leaves the others waiting in the next collective for a
# partner that will never come:

# %%
from tutorials_pkg.distributed import fail_on_rank

show_source(fail_on_rank)

# %% [markdown]
# `run_on_ranks` notices the failed rank, torch stops the others, and the
# `RankFailedError` names every rank that failed, the first to fail first, each
# with its exception. Rank 0 either saw its partner vanish (its own
# `RuntimeError`, a moment later, on a second line) or was stopped while
# waiting; either way rank 1 comes first. The error carries each rank's
# traceback, printed with it where Python prints whole tracebacks (in a
# terminal); the cell prints the functions rank 1's passes through:

# %%
import multiprocessing

from tutorials_pkg.launcher import RankFailedError

try:
    run_on_ranks(fail_on_rank)
except RankFailedError as error:
    print(str(error).splitlines()[0])  # the first to fail (a line for rank 0 may follow)
    frames = [line.rpartition(" in ")[2] for line in error.traceback.splitlines()
              if line.startswith("  File ")]
    print("its traceback:", " -> ".join(frames))
print("processes left:", multiprocessing.active_children())

# %% [markdown]
# ## A barrier only rank 0 reaches
#
# A collective must be called by every rank, in the same order. A `barrier`
# indented into `if rank == 0:` breaks that: rank 0 waits in the barrier, the
# others go on to their next collective (here an all-reduce of the loss).

# %%
from tutorials_pkg.distributed import save_with_barrier_inside_if

show_source(save_with_barrier_inside_if)

# %% [markdown]
# What happens next depends on the backend:
#
# - **gloo** (the CPU ranks here): a barrier is an operation of its own. Rank 0
#   waits in it, rank 1 waits in its all-reduce, neither is the other's partner,
#   and both wait until the group's timeout.
# - **NCCL** (GPUs): a barrier is an all-reduce of one number. Rank 1's
#   all-reduce pairs with it, so rank 1 goes on with a wrong sum, and no error;
#   rank 0 then waits in its own all-reduce for a partner that never comes,
#   until NCCL's watchdog ends the process at the timeout. The project's GPU
#   tests show both on two GPUs (`test_a_barrier_only_rank_0_reaches`, marked
#   `gpu`).
#
# The timeout is the process group's; by default:

# %%
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

print("gloo:", default_pg_timeout, " nccl:", default_pg_nccl_timeout)

# %% [markdown]
# Up to half an hour of a cluster doing nothing. `run_on_ranks` passes
# `collective_timeout_s` to `init_process_group(timeout=...)`; with 2 seconds
# the gloo ranks give up quickly, and the run ends with a `RankFailedError`
# whose message says that an operation timed out (which rank times out first
# varies from run to run):

# %%
try:
    run_on_ranks(save_with_barrier_inside_if, "inside_if.pt", collective_timeout_s=2)
except RankFailedError as error:
    print("a collective timed out:", "Timed out waiting 2000ms" in str(error))

# %% [markdown]
# The fix is the barrier outside the `if`, reached by every rank, as in
# `save_training_state` of the [first page](../#the-script-torchrun-starts).
# A wait outside any collective (a rank reading from a queue that stays empty,
# a lock never released) is not covered by that timeout; `run_on_ranks` stops
# the whole run after `timeout_s` and raises a `TimeoutError` naming the ranks
# still running.
