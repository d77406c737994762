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
# processes.
#
# It starts with the training script you launch with `torchrun`. The script
# picks its device itself: on a machine with GPUs each rank takes its own GPU
# and the `nccl` backend; without one, as on the machine that built this
# page, each rank works on the CPU with the `gloo` backend. The rest of the
# page runs the same functions on two CPU ranks to look inside them; the
# project's GPU tests run them with `nccl` on CUDA.
#
# Every output on this page was produced by running the code when the site was
# built, on the versions printed below.

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## The script `torchrun` starts
#
# `torchrun` starts one process per GPU and tells each one who it is through
# environment variables: `RANK` (its number among all processes),
# `LOCAL_RANK` (its number on its machine), `WORLD_SIZE`, and `MASTER_ADDR` /
# `MASTER_PORT` (where rank 0 waits for the others):
#
# ```bash
# torchrun --nproc-per-node=2 train.py checkpoints      # one machine, 2 GPUs
# torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 \
#          --master-addr=10.0.0.1 --master-port=29500 train.py checkpoints   # first of 2 machines
# ```
#
# Here is the whole script: `main` and everything it calls. Saved as
# `train.py` with `if __name__ == "__main__": main()` at the end, it is what
# the commands above run. (The module `tutorials_pkg.distributed` ends that
# way itself, so `torchrun --nproc-per-node=2 -m tutorials_pkg.distributed
# checkpoints` runs it too.)

# %%
import os
import tempfile

import torch

from tutorials_pkg.distributed import main
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())  # every file this page writes goes here
show_source(main)

# %% [markdown]
# What each part does:
#
# - `init_distributed` reads `LOCAL_RANK` and, where there are GPUs, calls
#   `torch.cuda.set_device` *before* `init_process_group`: NCCL and every later
#   CUDA call of the process then use that GPU, not GPU 0. `device_id=` binds
#   the group to the same GPU (NCCL then sets up its communicator at once, so a
#   broken setup fails here and not at the first collective). Without GPUs the
#   group uses `gloo` on the CPU.
# - `wrap_ddp` passes `device_ids=[index]` for a model on one GPU; for a model
#   on the CPU `device_ids` must stay `None`. DDP copies rank 0's weights to
#   every rank when it is built, which is why each rank may build its model
#   from its own seed.
# - `DistributedSampler` gives each rank its own share of the data, from the
#   group's rank and world size. `set_epoch(epoch)` at the start of every epoch
#   gives a new shuffle, the same on all ranks.
# - `save_training_state` is called by *every* rank: all of them gather the
#   state (for a sharded model that is a collective), rank 0 writes, and a
#   `barrier` keeps every rank from going on until the file is complete.
# - `load_training_state` is also called by every rank, each with
#   `map_location` set to its own device.
# - `main` runs `gc.collect()` before `destroy_process_group()`: what training
#   left in reference cycles is then freed while the group is still up. Freed
#   at exit instead, after the group is gone, it sometimes aborts a rank
#   ("terminate called without an active exception").
#
# Below, the block above is saved as `train.py` with that last line, and
# launched from this page (`python -m torch.distributed.run` is what the
# `torchrun` command runs; `--standalone` sets up the meeting point of the
# ranks on this machine, at a free port):

# %%
import subprocess
import sys
from pathlib import Path

from tutorials_pkg.source import source_with_imports

Path("train.py").write_text(source_with_imports(main) + '\n\nif __name__ == "__main__":\n    main()\n')
nproc = torch.cuda.device_count() or 2  # one process per GPU; two CPU processes without one
command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "train.py", "torchrun_job"]
job = subprocess.run(command, capture_output=True, text=True)
assert job.returncode == 0, job.stderr[-3000:]
print(job.stdout, end="")
print(sorted(os.listdir("torchrun_job")))

# %% [markdown]
# Each rank trained on its own share of the data, and rank 0 wrote a
# checkpoint after each epoch.

# %% [markdown]
# ## Every rank ends with the same weights
#
# A `torchrun` job cannot hand Python objects back to this notebook. To look
# inside the ranks, the page starts the same function, `train_ddp`, with
# `run_on_ranks` (from `tutorials_pkg.launcher`, shown at the end of the page):
# it spawns one fresh process per rank with the variables `torchrun` sets,
# joins them in a `gloo` group, and returns what each rank returned.

# %%
from tutorials_pkg.distributed import train_ddp
from tutorials_pkg.launcher import run_on_ranks

os.makedirs("run")
results = run_on_ranks(train_ddp, "run")  # two CPU ranks

for rank, result in enumerate(results):
    print(f"rank {rank} on {result['device']}: samples of epoch 0 {result['orders'][0]}, "
          f"of epoch 1 {result['orders'][1]}")
same = all(torch.equal(results[0]["state_dict"][k], results[1]["state_dict"][k])
           for k in results[0]["state_dict"])
print("same weights on both ranks:", same)
assert same

# %% [markdown]
# The two ranks saw different samples, and each epoch in a new order; the
# weights are equal to the last bit. During `backward`, DDP averages the
# gradients of all ranks, so every step is the step one process would take on
# the batches of both ranks together:

# %%
from tutorials_pkg.distributed import optimizer_and_scheduler, tiny_model, toy_dataset, train_step

reference = tiny_model(seed=0)  # rank 0's initial weights, which DDP gave every rank
optimizer, scheduler = optimizer_and_scheduler(reference)
dataset = toy_dataset()
for epoch in range(2):
    for start in (0, 4):  # two steps of 4 samples per rank
        batch = [i for result in results for i in result["orders"][epoch][start:start + 4]]
        train_step(reference, optimizer, *dataset[batch])
    scheduler.step()
close = all(torch.allclose(reference.state_dict()[k], results[0]["state_dict"][k], atol=1e-6)
            for k in results[0]["state_dict"])
print("same as one process on both ranks' batches:", close)
assert close

# %% [markdown]
# Without `set_epoch`, a `DistributedSampler` shuffles every epoch the same
# way (here rank 0's share, with the rank and world size given by hand):

# %%
from torch.utils.data.distributed import DistributedSampler

sampler = DistributedSampler(dataset, num_replicas=2, rank=0, seed=0)
print("epoch 0:           ", list(sampler))
print("epoch 1, forgotten:", list(sampler))
sampler.set_epoch(1)
print("epoch 1, set_epoch:", list(sampler))
assert list(sampler) == results[0]["orders"][1]

# %% [markdown]
# The checkpoint holds everything a resumed run needs. Its weights have the
# model's own keys: `get_model_state_dict` removed the `module.` that the DDP
# wrapper puts in front of every name. The random number generators' states
# are one per rank.

# %%
state = torch.load("run/epoch1.pt", weights_only=True)
print(list(state))
print("model:", list(state["model"]))
print("epoch:", state["epoch"], " learning rate:", state["optimizer"]["param_groups"][0]["lr"],
      " momentum buffers:", len(state["optimizer"]["state"]), " RNG states:", len(state["rng"]))

# %% [markdown]
# ## Resuming: every rank loads, each onto its own device
#
# A new job resumes from `epoch1.pt`: every rank calls `load_training_state`
# before wrapping its model, with `map_location` set to its own device
# (`cuda:<LOCAL_RANK>` on a GPU machine), and gets back the weights, the
# optimizer's momentum, the scheduler's step and its own random generator's
# state. The second epoch then runs exactly as in the uninterrupted run:

# %%
os.makedirs("resumed")
resumed = run_on_ranks(train_ddp, "resumed", 2, "run/epoch1.pt")

for rank, result in enumerate(resumed):
    start = result["at_start"]
    rng_as_saved = torch.equal(start["rng"], state["rng"][rank]["cpu"])
    print(f"rank {rank}: lr {start['lr']}, momentum buffers {start['momentum_buffers']}, "
          f"RNG as saved: {rng_as_saved}")
same = all(torch.equal(resumed[r]["state_dict"][k], results[r]["state_dict"][k])
           for r in range(2) for k in results[r]["state_dict"])
print("same weights as the uninterrupted run:", same)
assert same

# %% [markdown]
# ### Loading on rank 0 alone
#
# DDP copies rank 0's parameters and buffers to every rank when it is built.
# So for the *weights*, loading on rank 0 alone, before wrapping, would do.
# Nothing else travels: the optimizer's momentum, the scheduler's step and
# each rank's random generator stay what each rank built.
# `resume_on_rank0_only` does that:

# %%
from tutorials_pkg.distributed import resume_on_rank0_only

show_source(resume_on_rank0_only)

# %%
os.makedirs("rank0_only")
drifted = run_on_ranks(resume_on_rank0_only, "run/epoch1.pt", "rank0_only")

for rank, result in enumerate(drifted):
    start = result["at_start"]
    rng_as_saved = torch.equal(start["rng"], state["rng"][rank]["cpu"])
    print(f"rank {rank}: lr {start['lr']}, momentum buffers {start['momentum_buffers']}, "
          f"RNG as saved: {rng_as_saved}")
gap = max((drifted[0]["state_dict"][k] - drifted[1]["state_dict"][k]).abs().max().item()
          for k in results[0]["state_dict"])
print(f"largest difference between the ranks' weights after one epoch: {gap:.4f}")
assert gap > 1e-3

# %% [markdown]
# Nothing fails. Both ranks start from the same weights, average the same
# gradients, and still apply different steps (rank 1 with twice the learning
# rate and no momentum), so after the first step each rank holds a different
# model, and the next checkpoint is rank 0's alone. Load on every rank.

# %% [markdown]
# ## BatchNorm across ranks: `SyncBatchNorm`
#
# Under DDP, each rank's BatchNorm computes the batch statistics over its own
# batch only: with 4 images per GPU, statistics of 4 images.
# `nn.SyncBatchNorm.convert_sync_batchnorm(model)` replaces every BatchNorm
# layer with a `SyncBatchNorm` that keeps the same parameters and buffers and
# computes the statistics over the batches of all ranks. Convert before
# wrapping in DDP:

# %%
from tutorials_pkg.distributed import sync_batchnorm_step

show_source(sync_batchnorm_step)

# %% [markdown]
# DDP needs a process group; a group of one process, here in the notebook, is
# enough to try it (a `HashStore` in memory replaces the address and port):

# %%
import torch.distributed as dist
from torch import nn

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
synced = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)))
print(synced)

# %% [markdown]
# `SyncBatchNorm` needs the model on an accelerator: DDP refuses a model on
# the CPU that contains one, with a `ValueError`. (The GPU tests check that on CUDA every rank's running
# mean is that of the whole batch across the ranks.)

# %% tags=["raises-exception"] raises="ValueError"
from torch.nn.parallel import DistributedDataParallel as DDP

DDP(synced)

# %% [markdown]
# ## Parameters that forward never uses: `find_unused_parameters`
#
# The [summary chapter](../summary/) meets a model that keeps a whole `resnet18` as
# `self.base_model` and uses only its first three layers. Registered, its
# 11,689,512 parameters go into every `state_dict` (128 keys, where the model
# needs 6), and DDP expects a gradient for each of them. The same model in
# small, on `tiny_resnet`:

# %%
from tutorials_pkg.distributed import RegistersUnusedBaseModel, count_allreduced

show_source(RegistersUnusedBaseModel, count_allreduced)

# %% [markdown]
# `count_allreduced` registers a communication hook that records how many
# values each all-reduce carries, then does what DDP does without a hook. The
# first step runs; DDP waits for gradients that the unused parameters never
# get, so the bucket that holds them never becomes ready, and *nothing* is
# averaged:

# %%
images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
labels = torch.tensor([0, 1, 2, 3])
unused = DDP(RegistersUnusedBaseModel())
counts = count_allreduced(unused)
unused_optimizer = torch.optim.SGD(unused.parameters(), lr=0.1)
train_step(unused, unused_optimizer, images, labels)
print("values all-reduced in step 1:", counts)

# %% [markdown]
# The next step raises a `RuntimeError` that names the parameters which got
# no gradient (by index):

# %% tags=["raises-exception"] raises="RuntimeError"
train_step(unused, unused_optimizer, images, labels)

# %% [markdown]
# Two fixes. The first is the one the summary chapter gives: keep the base
# model a local variable, so that only the layers forward uses are registered.

# %%
from tutorials_pkg.distributed import StemAndHead

show_source(StemAndHead)

# %% [markdown]
# The second keeps the model and passes `find_unused_parameters=True`. That
# flag has a cost: every step, DDP walks the autograd graph from the outputs to
# find the parameters that got no gradient, and it still all-reduces them (as
# zeros), so every step carries the whole base model:

# %%
for name, model in (("base model a local", DDP(StemAndHead())),
                    ("find_unused_parameters", DDP(RegistersUnusedBaseModel(),
                                                   find_unused_parameters=True))):
    counts = count_allreduced(model)
    model_optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        train_step(model, model_optimizer, images, labels)
    print(f"{name:22}: {len(model.module.state_dict()):2} state_dict keys, "
          f"values all-reduced per step: {counts}")

# %% [markdown]
# Here 5,356 values instead of 322; with the tutorial's `resnet18`, its
# 11,689,512 parameters, 46.8 MB in float32, every step. Don't register what
# forward does not use; keep the flag for models whose forward really skips
# parameters on some steps.

# %% [markdown]
# ## `DataParallel` and DDP: both put `module.` in front of every key
#
# Many tutorials still train on several GPUs with `nn.DataParallel(model)`:
# one process, which copies the model to every GPU of its machine in each
# forward pass. PyTorch's own documentation recommends DDP instead, even on a
# single machine; its `DataParallel` docstring says so:

# %%
doc = " ".join(nn.DataParallel.__doc__.split())
start = doc.index("It is recommended")
print(doc[start:doc.index(".", doc.index("single node", start)) + 1])

# %% [markdown]
# Both wrappers keep the model as `.module`, so their `state_dict()` names
# every tensor `module.<name>`:

# %%
print("DataParallel:", list(nn.DataParallel(tiny_model()).state_dict()))
print("DDP:         ", list(DDP(tiny_model()).state_dict()))
wrapper_state = DDP(tiny_model()).state_dict()  # wrong: the wrapper's keys
dist.destroy_process_group()

# %% [markdown]
# A plain model, which is what you build for inference, has none of those
# keys, and `load_state_dict` fails with a `RuntimeError` listing the missing
# and the unexpected keys:

# %% tags=["raises-exception"] raises="RuntimeError"
tiny_model().load_state_dict(wrapper_state)

# %% [markdown]
# Save `get_model_state_dict(model)` (or `model.module.state_dict()`) as
# `save_training_state` does. For files already saved with the prefix, torch's
# own `consume_prefix_in_state_dict_if_present` removes it (in place, and only
# where a key starts with it):

# %%
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

consume_prefix_in_state_dict_if_present(wrapper_state, "module.")
print(list(wrapper_state))
tiny_model().load_state_dict(wrapper_state)

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
from tutorials_pkg.distributed import load_sharded, save_sharded

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
# A new job loads it, each rank into a model built with other weights. Whatever
# the wrapper, the keys are the plain model's: the file written on rank 0 from
# a DDP model and this checkpoint of an FSDP model both use the names of
# `tiny_model()` itself, as the last line checks.

# %%
loaded_shards = run_on_ranks(load_sharded, "sharded")
for rank, result in enumerate(loaded_shards):
    same = all(torch.equal(result["state_dict"][name], full[name]) for name in full)
    momentum = [round(v, 4) for v in result["optimizer"]["state"]["2.bias"]["momentum_buffer"].tolist()]
    print(f"rank {rank}: weights as saved: {same}; momentum of 2.bias: {momentum}")
    assert same
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

# %% [markdown]
# ## The launcher of this page: `run_on_ranks`
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
# ## What goes wrong in the wild
#
# ### Reading the file before rank 0 has written it
#
# Without a barrier, the other ranks do not wait for rank 0: they read at once.
# Here rank 0 takes 30 seconds before writing (a large checkpoint can take
# that long), and the function stands for code that saves on rank 0 and then
# loads on every rank:

# %%
from tutorials_pkg.distributed import load_without_barrier

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
# is `save_training_state` above: only rank 0 writes, and `dist.barrier()`
# holds every rank until the file is complete, which is why both ranks of the
# resumed run read the same state.

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
# ### A rank fails, and the others wait for it
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
# `save_training_state`, which both ranks went through after every epoch on
# this page. A wait outside any collective (a rank reading from a queue that
# stays empty, a lock never released) is not covered by that timeout;
# `run_on_ranks` stops the whole run after `timeout_s` and raises a
# `TimeoutError` naming the ranks still running.
