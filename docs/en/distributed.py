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
# # Checkpoints with DDP and sharded checkpoints
#
# When training runs in several processes, one per GPU, each process (a
# *rank*) holds either a full copy of the model (DDP) or a slice of it
# (FSDP). Saving and loading then raise three new questions: who writes the
# file, who waits for it, and on which device the tensors land when they are
# read back. This page answers them with code that really runs in several
# processes: two ranks on the CPU, talking through PyTorch's `gloo` backend.
# The same code runs on GPUs with the `nccl` backend.
#
# Every output on this page was produced by running the code when the site was
# built, on the versions printed below.

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## Starting the ranks
#
# On a cluster, `torchrun` starts one process per GPU and tells each one who
# it is through environment variables (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
# `MASTER_ADDR`, `MASTER_PORT`):
#
# ```bash
# torchrun --nproc-per-node=2 train.py                   # one machine, 2 GPUs
# torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 \
#          --master-addr=10.0.0.1 --master-port=29500 train.py   # on the first of 2 machines
# ```
#
# and every rank of `train.py` joins the same process group before any
# collective call (`all_reduce`, `barrier`, ...), and leaves it at the end:
#
# ```python
# dist.init_process_group("nccl")   # reads the variables torchrun set
# torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
# ...                               # what the functions on this page do
# dist.destroy_process_group()
# ```
#
# A notebook cannot be started by `torchrun`, so this page starts the ranks
# itself with `run_on_ranks`. It spawns one fresh Python process per rank, sets
# the variables `torchrun` would set (the port is a free one), joins them into
# a `gloo` group, and runs `fn(rank, world_size, *args)` in each. Each rank
# writes its result, or its error and traceback, to a temporary folder, which
# is how the results come back. Whatever happens, no process outlives the call:
# when a rank fails the others are stopped, and a run that is not over after
# `timeout_s` is stopped too.
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
#     P->>P: stop what still runs; return the results or raise
# ```
#
# The launcher, with every helper it uses:

# %%
import os
import tempfile

import torch

from tutorials_pkg.launcher import run_on_ranks
from tutorials_pkg.source import show_source

workdir = tempfile.mkdtemp()  # every checkpoint of this page goes here
show_source(run_on_ranks)

# %% [markdown]
# Spawned processes start a new interpreter and import `fn` by its module and
# name, so `fn` must be defined at the top level of a module. A function
# defined in a notebook cell cannot be found there; rather than letting every
# rank crash, `run_on_ranks` refuses it at once with a `TypeError`:

# %% tags=["raises-exception"] raises="TypeError"
def which_rank(rank, world_size):
    return rank

run_on_ranks(which_rank)

# %% [markdown]
# In a script, the same function works, provided the script calls
# `run_on_ranks` under `if __name__ == "__main__":` (each spawned process
# imports the script, and would otherwise start the ranks again).

# %% [markdown]
# ## A DDP training step, saved on rank 0
#
# `DistributedDataParallel` keeps a full copy of the model on every rank. At
# construction it copies rank 0's weights to all ranks; during `backward` it
# averages the gradients of all ranks, so after `optimizer.step()` every copy
# is the same again. Each rank then holds the whole model, and one of them is
# enough to write the checkpoint: rank 0, by convention. `save_on_rank0` is
# called by *every* rank: the state dict is gathered by all of them (for a
# sharded model that is a collective), rank 0 writes, and the `barrier` keeps
# every rank from going on until the file is complete.

# %%
from tutorials_pkg.distributed import train_and_save_on_rank0

show_source(train_and_save_on_rank0)

# %% [markdown]
# Two ranks, each with its own batch of data:

# %%
weights_path = os.path.join(workdir, "weights.pt")
results = run_on_ranks(train_and_save_on_rank0, weights_path)

for rank, result in enumerate(results):
    first_row = [round(v, 4) for v in result["state_dict"]["0.weight"][0].tolist()]
    print(f"rank {rank}: loss {result['loss']:.4f}, 0.weight[0] = {first_row}")
same = all(torch.equal(a, b) for a, b in zip(results[0]["state_dict"].values(),
                                              results[1]["state_dict"].values()))
print("same weights on both ranks:", same)
assert same

# %% [markdown]
# The losses differ (different data), the weights are equal to the last bit.
# They are also what a single process computes when it steps on the mean of
# the two ranks' losses, from rank 0's initial weights:

# %%
import torch.nn.functional as F

from tutorials_pkg.distributed import rank_batch, tiny_model

reference = tiny_model(seed=0)
mean_loss = sum(F.cross_entropy(reference(x), y) for x, y in map(rank_batch, range(2))) / 2
mean_loss.backward()
with torch.no_grad():
    for parameter in reference.parameters():
        parameter -= 0.1 * parameter.grad  # SGD, lr=0.1
close = all(torch.allclose(a, b, atol=1e-6)
            for a, b in zip(reference.state_dict().values(), results[0]["state_dict"].values()))
print("same as one process on the mean loss:", close)
assert close

# %% [markdown]
# The file holds the model's own keys: `get_model_state_dict` removed the
# `module.` that the DDP wrapper puts in front of every name.

# %%
saved = torch.load(weights_path, weights_only=True)
print(list(saved))

# %% [markdown]
# ## Loading on every rank with `map_location`
#
# A new job (resuming, or evaluating) loads the file on every rank. Each rank
# passes `map_location`, the device the tensors should be created on: its own
# GPU, `cuda:<LOCAL_RANK>`, or the CPU when there is no GPU, as here.

# %%
from tutorials_pkg.distributed import load_on_every_rank

show_source(load_on_every_rank)

# %%
loaded = run_on_ranks(load_on_every_rank, weights_path)
for rank, result in enumerate(loaded):
    equal = all(torch.equal(result["state_dict"][name], saved[name]) for name in saved)
    print(f"rank {rank}: on {result['device']}, keys {result['keys']}, equal to the file: {equal}")
    assert equal

# %% [markdown]
# Under DDP, loading on rank 0 alone would do (the wrapper copies rank 0's
# weights to the others when it is built), but loading everywhere costs little
# and is what sharded models need.

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
# the plain model's keys.
#
# Loading is the mirror image, with one difference: `dcp.load` does not return
# a state dict, it fills the one it is given, in place. So each rank first
# builds the model and optimizer (sharded the same way, or differently: DCP
# reshards on load), asks them for their state dict, lets `dcp.load` fill it,
# and hands it back with `set_model_state_dict` / `set_optimizer_state_dict`.

# %%
from tutorials_pkg.distributed import load_sharded, save_sharded

show_source(save_sharded, load_sharded)

# %%
sharded_dir = os.path.join(workdir, "sharded")
saved_shards = run_on_ranks(save_sharded, sharded_dir)
full = saved_shards[0]["state_dict"]

print("whole model:", {name: tuple(t.shape) for name, t in full.items()})
for rank, result in enumerate(saved_shards):
    print(f"rank {rank} held:", result["local_shapes"])
for name in sorted(os.listdir(sharded_dir)):
    print(f"{name:14} {os.path.getsize(os.path.join(sharded_dir, name)):5} bytes")

# %% [markdown]
# A new job loads it, each rank into a model built with other weights. Whatever
# the wrapper, the keys are the plain model's: the file written on rank 0 from
# a DDP model and this checkpoint of an FSDP model both use the names of
# `tiny_model()` itself, as the last line checks.

# %%
loaded_shards = run_on_ranks(load_sharded, sharded_dir)
for rank, result in enumerate(loaded_shards):
    same = all(torch.equal(result["state_dict"][name], full[name]) for name in full)
    momentum = [round(v, 4) for v in result["optimizer"]["state"]["2.bias"]["momentum_buffer"].tolist()]
    print(f"rank {rank}: weights as saved: {same}; momentum of 2.bias: {momentum}")
    assert same
assert list(saved) == list(full) == list(tiny_model().state_dict())  # the plain model's keys

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

one_file = os.path.join(workdir, "one_file.pt")
dcp_to_torch_save(sharded_dir, one_file)
checkpoint = torch.load(one_file, weights_only=True)
print(list(checkpoint), list(checkpoint["model"]))

model = tiny_model(seed=3)
print(model.load_state_dict(checkpoint["model"]))
assert all(torch.equal(model.state_dict()[name], full[name]) for name in full)

# %% [markdown]
# `torch_save_to_dcp` goes the other way, for example to start a sharded run
# from a checkpoint saved in one file:

# %%
back_dir = os.path.join(workdir, "sharded_again")
torch_save_to_dcp(one_file, back_dir)
print(sorted(os.listdir(back_dir)))

# %% [markdown]
# Without converting anything, `dcp.load` can also read a sharded checkpoint
# straight into an ordinary model in one process, with no process group:

# %%
from tutorials_pkg.distributed import load_sharded_into_plain_model

show_source(load_sharded_into_plain_model)

# %%
for folder in (sharded_dir, back_dir):
    model = load_sharded_into_plain_model(folder, tiny_model(seed=4))
    same = all(torch.equal(model.state_dict()[name], full[name]) for name in full)
    print(f"{os.path.basename(folder)}: weights as saved: {same}")
    assert same

# %% [markdown]
# ## What goes wrong in the wild
#
# ### Reading the file before rank 0 has written it
#
# Without a barrier, the other ranks do not wait for rank 0: they read at once.
# Here rank 0 takes a second before writing (a large checkpoint takes that
# long), and the function stands for code that saves on rank 0 and then loads
# on every rank:

# %%
from tutorials_pkg.distributed import load_without_barrier

show_source(load_without_barrier)

# %% [markdown]
# Rank 1 finds no file and fails with `FileNotFoundError`; the launcher stops
# the run and raises a `RankFailedError` that names the rank and its error:

# %% tags=["raises-exception"] raises="RankFailedError"
run_on_ranks(load_without_barrier, os.path.join(workdir, "no_barrier.pt"))

# %% [markdown]
# With a checkpoint from an earlier epoch at the same path, the same race is
# silent: rank 1 reads the old weights, or a half-written file. The mirror
# mistake, every rank writing the same path at the same time, gives a file
# that is whichever write finished last, or a corrupt mix of several. The fix
# is `save_on_rank0` above: only rank 0 writes, and `dist.barrier()` holds
# every rank until the file is complete, which is why every rank read the same
# weights in the section on loading.

# %% [markdown]
# ### Saving the DDP wrapper: `module.` in every key
#
# `model.state_dict()` on the DDP wrapper names every tensor `module.<name>`.
# DDP needs a process group, and a group of one process is enough to see it,
# here in this notebook (a `HashStore` in memory replaces the address and port):

# %%
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
wrapper_path = os.path.join(workdir, "wrapper.pt")
torch.save(DDP(tiny_model()).state_dict(), wrapper_path)  # wrong: the wrapper's keys
dist.destroy_process_group()

wrapper_state = torch.load(wrapper_path, weights_only=True)
print(list(wrapper_state))

# %% [markdown]
# A plain model, which is what you build for inference, has none of those
# keys, and `load_state_dict` fails with a `RuntimeError` listing the missing
# and the unexpected keys:

# %% tags=["raises-exception"] raises="RuntimeError"
tiny_model().load_state_dict(wrapper_state)

# %% [markdown]
# Save `get_model_state_dict(model)` (or `model.module.state_dict()`) as
# `save_on_rank0` does. For files already saved with the prefix, torch's own
# `consume_prefix_in_state_dict_if_present` removes it (in place, and only
# where a key starts with it):

# %%
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

consume_prefix_in_state_dict_if_present(wrapper_state, "module.")
print(list(wrapper_state))
tiny_model().load_state_dict(wrapper_state)

# %% [markdown]
# ### Loading without `map_location`
#
# A checkpoint records, for every tensor, the device it was saved from, and
# `torch.load` without `map_location` creates each tensor there again.
# `storage_locations` reads those records:

# %%
from tutorials_pkg.distributed import storage_locations

show_source(storage_locations)

# %%
print(storage_locations(weights_path))
unmapped = torch.load(weights_path, weights_only=True)
assert {str(t.device) for t in unmapped.values()} == set(storage_locations(weights_path))

# %% [markdown]
# Our rank 0 trained on the CPU, so the file says `cpu`. A file saved from a
# GPU job says `cuda:0`. Loaded without `map_location` on a machine with 8
# GPUs, every rank then creates its copy on GPU 0: eight copies on one GPU,
# which can run out of memory while the other seven hold none. On a machine
# without a GPU the same load fails with a `RuntimeError` ("Attempting to
# deserialize object on a CUDA device but torch.cuda.is_available() is False",
# raised in `torch/serialization.py`). Give each rank its own device, as
# `load_on_every_rank` does; a dict remaps only the locations it names, for
# example `{"cuda:0": f"cuda:{local_rank}"}`:

# %%
from tutorials_pkg.distributed import rank_device

for local_rank in range(2):
    device = rank_device(local_rank)  # cuda:<local_rank> on a GPU machine
    state = torch.load(weights_path, map_location=device, weights_only=True)
    print(f"local rank {local_rank}:", {str(t.device) for t in state.values()})

# %% [markdown]
# ### A rank fails, and the others wait for it
#
# A rank that raises leaves the others waiting in the next collective for a
# partner that will never come:

# %%
from tutorials_pkg.distributed import fail_on_rank

show_source(fail_on_rank)

# %% [markdown]
# `run_on_ranks` notices the failed rank, stops the others, and raises a
# `RankFailedError` that lists the failed ranks, the first to fail first: rank
# 1 with its `ValueError`, then, if it got that far before being stopped, rank
# 0, whose `all_reduce` lost its partner. (Where Python prints full
# tracebacks, as in a terminal, each rank's own traceback comes with it,
# chained as the error's cause.)

# %% tags=["raises-exception"] raises="RankFailedError"
run_on_ranks(fail_on_rank)

# %% [markdown]
# No process is left behind:

# %%
import multiprocessing

print("processes left:", multiprocessing.active_children())

# %% [markdown]
# ### A barrier only rank 0 reaches
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
# messages say which operation timed out:

# %% tags=["raises-exception"] raises="RankFailedError"
run_on_ranks(save_with_barrier_inside_if, os.path.join(workdir, "inside_if.pt"),
             collective_timeout_s=2)

# %% [markdown]
# The fix is the barrier outside the `if`, reached by every rank, as in
# `save_on_rank0`, which both ranks went through in the first run on this
# page. A wait outside any collective (a rank reading from a queue
# that stays empty, a lock never released) is not covered by that timeout;
# `run_on_ranks` stops the whole run after `timeout_s` and raises a
# `TimeoutError` naming the ranks still running.
