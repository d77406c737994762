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
# read back. This chapter answers them with code that really runs in several
# processes, in five pages:
#
# - This page: the training script `torchrun` starts, why every rank ends with
#   the same weights, how every rank loads when training resumes, and the
#   `module.` that `DataParallel` and DDP put in front of every key.
# - [DDP: SyncBatchNorm and unused parameters](sync_and_unused/): BatchNorm
#   across ranks, and parameters that forward never uses.
# - [Sharded checkpoints: DCP and one file](sharded/): sharded saves with
#   `torch.distributed.checkpoint`, and from shards to one file and back.
# - [This chapter's launcher: run_on_ranks](launcher/): how the chapter runs a
#   function in several processes, and its code.
# - [Distributed checkpoints: in the wild](in_the_wild/): what goes wrong in
#   practice, shown failing, then fixed.
#
# This page starts with the training script you launch with `torchrun`. The
# script picks its device itself: on a machine with GPUs each rank takes its own
# GPU and the `nccl` backend; without one, as on the machine that built this
# site, each rank works on the CPU with the `gloo` backend. The rest of the
# chapter runs the same functions on two CPU ranks to look inside them; the
# project's GPU tests run them with `nccl` on CUDA.
#
# Every output in this chapter was produced by running the code when the site
# was built, on the versions printed below.

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
# `run_on_ranks` (from `tutorials_pkg.launcher`, shown on
# [the launcher's page](launcher/)):
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
# ## `DataParallel` and DDP: both put `module.` in front of every key
#
# Many tutorials still train on several GPUs with `nn.DataParallel(model)`:
# one process, which copies the model to every GPU of its machine in each
# forward pass. PyTorch's own documentation recommends DDP instead, even on a
# single machine; its `DataParallel` docstring says so:

# %%
from torch import nn

doc = " ".join(nn.DataParallel.__doc__.split())
start = doc.index("It is recommended")
print(doc[start:doc.index(".", doc.index("single node", start)) + 1])

# %% [markdown]
# Both wrappers keep the model as `.module`, so their `state_dict()` names
# every tensor `module.<name>`. DDP needs a process group; a group of one
# process, here in the notebook, is enough to try it (a `HashStore` in memory
# replaces the address and port):

# %%
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
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
