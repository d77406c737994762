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
# # Sharded checkpoints: DCP and one file
#
# On the [first page](../) and the [previous one](../sync_and_unused/), DDP
# gives every rank the whole model, and rank 0 writes the checkpoint as one
# file. This page shards the model, so that each rank writes only the slice it
# holds, then turns such a checkpoint into one file and back.

# %% [markdown]
# ## Sharded checkpoints with `torch.distributed.checkpoint`
#
# A model too large for one device is *sharded*: with FSDP2's `fully_shard`,
# each parameter is cut along its first dimension and each rank keeps only its
# slice. No rank holds the whole model, so no rank can write it to one file
# (not without gathering it first, which may not fit). The distributed
# checkpoint package (DCP, `torch.distributed.checkpoint`) writes a folder
# instead: each rank writes the slices it holds, and rank 0 adds a `.metadata`
# file that says which part of which tensor is where.
#
# ```mermaid
# flowchart LR
#     W["0.weight, 8×4"] -- "rows 0–3" --> R0["rank 0"] --> F0["__0_0.distcp"]
#     W -- "rows 4–7" --> R1["rank 1"] --> F1["__1_0.distcp"]
#     R0 --> M[".metadata"]
# ```
#
# The state dict comes from `get_model_state_dict` and
# `get_optimizer_state_dict` (in `torch.distributed.checkpoint.state_dict`):
# they work the same for a plain model, DDP and FSDP, and name every tensor by
# the plain model's keys. The device mesh is made on the rank's device type
# (`cuda` under nccl, `cpu` here).
#
# Loading is the mirror image, with one difference: `dcp.load` does not return
# a state dict, it fills the one it is given, in place. So each rank first
# builds the model and optimizer (sharded the same way, or differently: DCP
# reshards on load), asks them for their state dict, lets `dcp.load` fill it,
# and hands it back with `set_model_state_dict` / `set_optimizer_state_dict`.

# %%
import os
import tempfile

import torch

from tutorials_pkg.distributed import load_sharded, save_sharded
from tutorials_pkg.launcher import run_on_ranks
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())  # every file this page writes goes here
show_source(save_sharded, load_sharded)

# %%
saved_shards = run_on_ranks(save_sharded, "sharded")
full = saved_shards[0]["state_dict"]

print("whole model:", {name: tuple(t.shape) for name, t in full.items()})
for rank, result in enumerate(saved_shards):
    print(f"rank {rank} held:", result["local_shapes"])
for name in sorted(os.listdir("sharded")):
    print(f"{name:14} {os.path.getsize(os.path.join('sharded', name)):5} bytes")

# %% [markdown]
# A new job loads it, each rank into a model built with other weights:

# %%
loaded_shards = run_on_ranks(load_sharded, "sharded")
for rank, result in enumerate(loaded_shards):
    same = all(torch.equal(result["state_dict"][name], full[name]) for name in full)
    momentum = [round(v, 4) for v in result["optimizer"]["state"]["2.bias"]["momentum_buffer"].tolist()]
    print(f"rank {rank}: weights as saved: {same}; momentum of 2.bias: {momentum}")
    assert same

# %% [markdown]
# Whatever the wrapper, the keys are the plain model's: the file written on
# rank 0 from a DDP model (here by `train_ddp` of the [first page](../), for one
# epoch) and this checkpoint of an FSDP model both use the names of
# `tiny_model()` itself, as the last line checks:

# %%
from tutorials_pkg.distributed import tiny_model, train_ddp

os.makedirs("run")
run_on_ranks(train_ddp, "run", 1)  # DDP training, one epoch: rank 0 writes run/epoch1.pt
state = torch.load("run/epoch1.pt", weights_only=True)
assert list(state["model"]) == list(full) == list(tiny_model().state_dict())  # the plain model's keys

# %% [markdown]
# ## From a sharded checkpoint to one file, and back
#
# To hand a model to someone without a cluster, turn the folder into one
# `torch.save` file with `dcp_to_torch_save` (from
# `torch.distributed.checkpoint.format_utils`; it reads everything into one
# process, so run it on one rank or offline). The same module converts from
# the command line: `python -m torch.distributed.checkpoint.format_utils
# dcp_to_torch <folder> <file>`.

# %%
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp

dcp_to_torch_save("sharded", "one_file.pt")
checkpoint = torch.load("one_file.pt", weights_only=True)
print(list(checkpoint), list(checkpoint["model"]))

model = tiny_model(seed=3)
print(model.load_state_dict(checkpoint["model"]))
assert all(torch.equal(model.state_dict()[name], full[name]) for name in full)

# %% [markdown]
# `torch_save_to_dcp` goes the other way, for example to start a sharded run
# from a checkpoint saved in one file:

# %%
torch_save_to_dcp("one_file.pt", "sharded_again")
print(sorted(os.listdir("sharded_again")))

# %% [markdown]
# Without converting anything, `dcp.load` can also read a sharded checkpoint
# straight into an ordinary model in one process, with no process group:

# %%
from tutorials_pkg.distributed import load_sharded_into_plain_model

show_source(load_sharded_into_plain_model)

# %%
for folder in ("sharded", "sharded_again"):
    model = load_sharded_into_plain_model(folder, tiny_model(seed=4))
    same = all(torch.equal(model.state_dict()[name], full[name]) for name in full)
    print(f"{folder}: weights as saved: {same}")
    assert same
