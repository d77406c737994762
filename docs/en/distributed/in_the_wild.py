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
# [resumed run](../#resuming-every-rank-loads-each-onto-its-own-device) read
# the same state.

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
# Take the training of the [first page](../#every-rank-ends-with-the-same-weights):
# `train_ddp` on two CPU ranks for one epoch, then the checkpoint rank 0 wrote:

# %%
from tutorials_pkg.distributed import train_ddp

os.makedirs("run")
run_on_ranks(train_ddp, "run", 1)  # one epoch: rank 0 writes run/epoch1.pt
print(storage_locations("run/epoch1.pt"))
unmapped = torch.load("run/epoch1.pt", weights_only=True)
assert {str(t.device) for t in unmapped["model"].values()} <= set(storage_locations("run/epoch1.pt"))

# %% [markdown]
# Our ranks trained on the CPU, so the file says `cpu`. A file saved from a GPU
# job says `cuda:0` for what rank 0 kept on its GPU (here the optimizer's
# momentum; the weights were gathered to the CPU). Loaded without
# `map_location` on a machine with 8 GPUs, every rank then creates those
# tensors on GPU 0: eight copies on one GPU, which can run out of memory while
# the other seven hold none. On a machine without a GPU the same load fails
# with a `RuntimeError` ("Attempting to deserialize object on a CUDA device but
# torch.cuda.is_available() is False", raised in `torch/serialization.py`).
# Give each rank its own device, as `load_training_state` does; a dict remaps
# only the locations it names, for example `{"cuda:0": f"cuda:{local_rank}"}`.

# %% [markdown]
# ## A rank fails, and the others wait for it
#
# A rank that raises leaves the others waiting in the next collective for a
# partner that will never come:

# %%
from tutorials_pkg.distributed import fail_on_rank

show_source(fail_on_rank)

# %% [markdown]
# `run_on_ranks` notices the failed rank, stops the others, and raises a
# `RankFailedError` that lists the failed ranks, the first to fail first, and
# the ranks it stopped. Rank 0 either saw its partner vanish (its own
# `RuntimeError`, with the peer's address and port) or was stopped while
# waiting; the cell prints what does not depend on which. (Where Python prints
# full tracebacks, as in a terminal, each rank's own traceback comes with the
# error, chained as its cause.)

# %%
import multiprocessing

from tutorials_pkg.launcher import RankFailedError

try:
    run_on_ranks(fail_on_rank)
except RankFailedError as error:
    first = next(iter(error.failures))
    print(f"first to fail: rank {first} with {error.failures[first]}")
    print("ranks that ended without a result:", sorted({*error.failures, *error.stopped}))
print("processes left:", multiprocessing.active_children())

# %% [markdown]
# ## A barrier only rank 0 reaches
#
# A collective must be called by every rank, in the same order. A `barrier`
# indented into `if rank == 0:` breaks that: rank 0 waits in the barrier, the
# others go on to their next collective, and each waits for the other.

# %%
from tutorials_pkg.distributed import save_with_barrier_inside_if

show_source(save_with_barrier_inside_if)

# %% [markdown]
# How long they wait is the process group's timeout; by default:

# %%
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

print("gloo:", default_pg_timeout, " nccl:", default_pg_nccl_timeout)

# %% [markdown]
# Up to half an hour of a cluster doing nothing. `run_on_ranks` passes
# `collective_timeout_s` to `init_process_group(timeout=...)`; with 2 seconds
# the ranks give up quickly, and the run ends with a `RankFailedError` whose
# messages say that an operation timed out (which rank times out first varies
# from run to run; the other then loses its partner):

# %%
try:
    run_on_ranks(save_with_barrier_inside_if, "inside_if.pt", collective_timeout_s=2)
except RankFailedError as error:
    print("a collective timed out:",
          any("Timed out waiting 2000ms" in message for message in error.failures.values()))
    print("ranks that ended without a result:", sorted({*error.failures, *error.stopped}))

# %% [markdown]
# The fix is the barrier outside the `if`, reached by every rank, as in
# `save_training_state` of the [first page](../#the-script-torchrun-starts),
# which both ranks of the training run on this page went through. A wait outside any collective (a rank reading from a queue that
# stays empty, a lock never released) is not covered by that timeout;
# `run_on_ranks` stops the whole run after `timeout_s` and raises a
# `TimeoutError` naming the ranks still running.
