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
# # This chapter's launcher: `run_on_ranks`
#
# From the [first page](../) on, this chapter runs functions in several
# processes with `run_on_ranks`; the sharded checkpoints of the
# [previous page](../sharded/) were saved and loaded that way too. This page
# shows its code, and what it asks of the function it runs.
#
# ## What it does, and what it promises
#
# `run_on_ranks(fn, *args)` spawns one fresh Python process per rank, sets
# the variables `torchrun` would set (the port is a free one), joins the ranks
# in a `gloo` group (`backend="nccl"` on GPUs, or `None` to let `fn` join one
# itself as a `torchrun` script does), and runs `fn(rank, world_size, *args)`
# in each. It keeps three promises, which a home-made launcher easily breaks:
#
# - Each rank writes its result, or its error and traceback, to a temporary
#   name and renames it once complete, so a rank stopped while writing leaves
#   no half file: the caller gets that rank's real error, or the
#   `TimeoutError` of a run that outlived `timeout_s`, never an `EOFError`.
# - Each rank runs in a session of its own, and stopping a rank stops every
#   process it started (a `subprocess.Popen`, a forked child), so none of them
#   outlives the call or keeps the caller's output pipes open.
# - A result that could not come back (a numpy array, a lambda) is refused in
#   the rank, with a `TypeError` naming the rank and where in the result it
#   sits, instead of an unpickling error in the caller.
#
# ```mermaid
# sequenceDiagram
#     participant P as this process
#     participant R0 as rank 0
#     participant R1 as rank 1
#     P->>R0: spawn run_rank(0, ...)
#     P->>R1: spawn run_rank(1, ...)
#     R0-->R1: init_process_group("gloo") at MASTER_ADDR:MASTER_PORT
#     R0->>R0: fn(0, 2, *args)
#     R1->>R1: fn(1, 2, *args)
#     R0-->>P: rank0.pt (result or error)
#     R1-->>P: rank1.pt (result or error)
#     P->>P: stop what still runs, then return the results or raise
# ```
#
# The launcher, with every helper it uses:

# %%
from tutorials_pkg.distributed import run_on_ranks  # defined in tutorials_pkg.launcher
from tutorials_pkg.source import show_source

show_source(run_on_ranks)

# %% [markdown]
# ## Only functions defined in a module
#
# Spawned processes start a new interpreter and import `fn` by its module and
# name, so `fn` must be defined at the top level of a module. A function
# defined in a notebook cell cannot be found there; rather than letting every
# rank crash, `run_on_ranks` refuses it at once with a `TypeError`:

# %% tags=["raises-exception"] raises="TypeError"
def which_rank(rank, world_size):
    return rank

run_on_ranks(which_rank)

# %% [markdown]
# ## In a script
#
# In a script, the same function works, provided the script calls
# `run_on_ranks` under `if __name__ == "__main__":` (each spawned process
# imports the script, and would otherwise start the ranks again).
