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
# # Starting ranks from Python: `torch.multiprocessing`
#
# `torchrun` starts the ranks from the command line. From Python (a script, a
# test, this notebook), `torch.multiprocessing.spawn` starts them:
# `mp.spawn(fn, args, nprocs)` runs `fn(i, *args)` in `nprocs` new processes,
# each a fresh interpreter, and waits for them. Each rank then needs what
# `torchrun` would have given it: the variables `init_process_group` reads
# (`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`; `init_distributed` of the
# [first page](../) also reads `LOCAL_RANK`), and a group to join. These are
# the few lines:

# %%
import os
import tempfile

import torch

from tutorials_pkg.distributed import spawn_ranks
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())  # every file this page writes goes here
show_source(spawn_ranks)

# %% [markdown]
# Here they run `save_sharded_run` of the [previous page](../sharded/), one
# rank per GPU (two CPU ranks without one); each rank writes its shard:

# %%
from tutorials_pkg.distributed import save_sharded_run

spawn_ranks(save_sharded_run, "spawned", world_size=torch.cuda.device_count() or 2)
print(sorted(os.listdir("spawned")))

# %% [markdown]
# When a rank raises, `mp.spawn` stops the other ranks and raises
# `ProcessRaisedException` here, with that rank's traceback; a rank that dies
# without one (killed by the out-of-memory killer, say) gives
# `ProcessExitedException`. Three things it does not do: hand back what `fn`
# returns, give up after a deadline (a rank waiting for a partner that never
# comes waits as long as the group's timeout, 30 minutes by default), and stop
# the processes a rank started itself.
#
# ## What this chapter's `run_on_ranks` adds
#
# The pages and tests of this chapter need those three, so they use
# `run_on_ranks` instead: page machinery, not a recipe, in
# `tutorials_pkg/launcher.py`,
# built on `torch.multiprocessing.start_processes` (what `mp.spawn` calls).
# `run_on_ranks(fn, *args)` runs `fn(rank, world_size, *args)` on every rank in
# a `gloo` group (`backend="nccl"` on GPUs, or `None` to let `fn` join one
# itself), returns what each rank returned, and keeps three promises:
#
# - A failing rank is named with its traceback: `RankFailedError` names every
#   rank that failed, the first to fail first, each with its exception; their
#   tracebacks are the error's cause. (torch names the first exit it notices;
#   often that is a rank that only lost its partner.)
# - Nothing outlives the call: each rank leads a process group of its own, and
#   at the end every group is killed, with whatever the rank started in it (a
#   `subprocess.Popen`, a forked child).
# - A timeout is an error: a run still going after `timeout_s` is stopped and
#   raises `TimeoutError`; `collective_timeout_s` bounds every collective of the
#   group, so ranks that wait for each other give up sooner.
#
# ```mermaid
# sequenceDiagram
#     participant P as this process
#     participant R0 as rank 0
#     participant R1 as rank 1
#     P->>R0: start_processes: fn(0, 2, *args)
#     P->>R1: fn(1, 2, *args)
#     R0-->R1: init_process_group at MASTER_ADDR:MASTER_PORT
#     R0-->>P: its result, or its traceback
#     R1-->>P: its result, or its traceback
#     P->>P: kill each rank's process group, then return the results or raise
# ```
#
# Each rank gets every variable `torchrun` documents, with the values
# `torchrun --standalone` gives them (the port is a free one):

# %%
from tutorials_pkg.launcher import torchrun_variables

for name, value in torchrun_variables(rank=1, world_size=2, port=29500).items():
    print(f"{name:27} {value}")

# %% [markdown]
# ## Only functions defined in a module
#
# The new processes start a fresh interpreter and import `fn` by its module
# and name, so `fn` must be defined at the top level of a module. A function
# defined in a notebook cell cannot be found there: with `mp.spawn`, every
# rank dies while starting (`ProcessExitedException`). `run_on_ranks` refuses
# it at once with a `TypeError`:

# %% tags=["raises-exception"] raises="TypeError"
from tutorials_pkg.distributed import run_on_ranks  # defined in tutorials_pkg.launcher


def which_rank(rank, world_size):
    return rank

run_on_ranks(which_rank)

# %% [markdown]
# ## In a script
#
# In a script, the same functions work, provided the script calls
# `spawn_ranks` (or `mp.spawn`, or `run_on_ranks`) under
# `if __name__ == "__main__":` (each new process imports the script, and would
# otherwise start the ranks again).
