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
# holds; then it saves a sharded model to one file, and turns a sharded
# checkpoint into one file and back.

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
# The state dicts come from `get_state_dict(model, optimizer)` (in
# `torch.distributed.checkpoint.state_dict`): it works the same for a plain
# model, DDP and FSDP, and names every tensor, the optimizer's too, by the
# plain model's keys. The device mesh is made on the rank's device type
# (`cuda` under nccl, `cpu` here).
#
# Loading is the mirror image, with one difference: `dcp.load` does not return
# a state dict, it fills the one it is given, in place. So each rank first
# builds the model and optimizer (sharded the same way, or differently: DCP
# reshards on load), asks them for their state dicts, lets `dcp.load` fill
# them, and hands them back with `set_state_dict`.

# %%
import os
import tempfile

import torch

from tutorials_pkg.distributed import load_sharded, save_sharded, shard_model
from tutorials_pkg.launcher import run_on_ranks
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())  # every file this page writes goes here
show_source(shard_model, save_sharded, load_sharded)

# %% [markdown]
# `save_sharded_run` builds the sharded model on each rank, trains it one step
# and calls `save_sharded`:

# %%
from tutorials_pkg.distributed import save_sharded_run

saved_shards = run_on_ranks(save_sharded_run, "sharded")
full = saved_shards[0]["state_dict"]

print("whole model:", {name: tuple(t.shape) for name, t in full.items()})
for rank, result in enumerate(saved_shards):
    print(f"rank {rank} held:", result["local_shapes"])
for name in sorted(os.listdir("sharded")):
    print(f"{name:14} {os.path.getsize(os.path.join('sharded', name)):5} bytes")

# %% [markdown]
# A new job loads it (`load_sharded_run`), each rank into a model built with
# other weights:

# %%
from tutorials_pkg.distributed import load_sharded_run

loaded_shards = run_on_ranks(load_sharded_run, "sharded")
for rank, result in enumerate(loaded_shards):
    same = all(torch.equal(result["state_dict"][name], full[name]) for name in full)
    momentum = [round(v, 4) for v in result["optimizer"]["state"]["2.bias"]["momentum_buffer"].tolist()]
    print(f"rank {rank}: weights as saved: {same}; momentum of 2.bias: {momentum}")
    assert same

# %% [markdown]
# ## One file from a sharded model
#
# `save_training_state` of the [first page](../#the-script-torchrun-starts)
# works for a sharded model too. `get_state_dict` with `full_state_dict=True`
# and `cpu_offload=True` gathers every rank's slices into whole tensors on
# rank 0's CPU, the optimizer's momentum included, and `load_training_state`'s
# `set_state_dict` gives each rank its slice back. (`optimizer.state_dict()`
# would not do: on a sharded model it holds this rank's slices only, so rank 0
# would save half of the momentum.) `one_file_from_shards` trains a sharded
# model one step, saves it with `save_training_state`, loads the file into a new
# sharded model built with other weights, and takes one more step with each:

# %%
from tutorials_pkg.distributed import one_file_from_shards, tiny_model

both = run_on_ranks(one_file_from_shards, "sharded_state.pt")
state = torch.load("sharded_state.pt", weights_only=True)
print("in the file:", {name: tuple(t.shape) for name, t in state["model"].items()})
print("momentum of 2.bias in the file:",
      [round(v, 4) for v in state["optimizer"]["state"]["2.bias"]["momentum_buffer"].tolist()])
for rank, result in enumerate(both):
    (saved, saved_optimizer), (loaded, loaded_optimizer) = result["saved"], result["loaded"]
    same = all(torch.equal(saved[k], loaded[k]) and torch.equal(
        saved_optimizer["state"][k]["momentum_buffer"], loaded_optimizer["state"][k]["momentum_buffer"])
        for k in saved)
    print(f"rank {rank}: weights and momentum as saved: {same}; "
          f"next step's loss, saved and loaded model: {[round(v, 4) for v in result['next_losses']]}")
    assert same and result["next_losses"][0] == result["next_losses"][1]

# %% [markdown]
# The file holds the whole tensors, and the resumed model takes exactly the
# step the saved one takes. Gathering needs rank 0 to hold the whole model in
# CPU memory; where it does not fit, DCP's sharded save above is the way. Either
# way, the keys are the plain model's, as in the file of a DDP model on the
# first page:

# %%
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
