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
# - [Starting ranks from Python](launcher/): `torch.multiprocessing.spawn`,
#   the few lines that start ranks without `torchrun`, and what this chapter's
#   `run_on_ranks` adds to them.
# - [Distributed checkpoints: in the wild](in_the_wild/): what goes wrong in
#   practice, shown failing, then fixed.
#
# This page starts with the training script you launch with `torchrun`. The
# script picks its device itself: on a machine with GPUs each rank takes its own
# GPU and the `nccl` backend; without one, as on the machine that built this
# site, each rank works on the CPU with the `gloo` backend. The rest of the
# chapter runs the same functions on two CPU ranks to look inside them; the
# project's GPU tests run them with `nccl` on two GPUs (on a machine with fewer,
# they skip and say so).
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
# - `DDP(model)` wraps a model that sits on one device, this rank's GPU or the
#   CPU (for such a model `device_ids` may stay `None`). DDP copies rank 0's
#   weights to every rank when it is built, which is why each rank may build
#   its model from its own seed.
# - `DistributedSampler` gives each rank its own share of the data, from the
#   group's rank and world size. `set_epoch(epoch)` at the start of every epoch
#   gives a new shuffle, the same on all ranks.
# - `save_training_state` is called by *every* rank. `get_state_dict` gathers
#   the model's and the optimizer's state, whole, onto rank 0's CPU, by their
#   parameter names (a collective: for a sharded FSDP model each rank holds
#   only a slice, see [the sharded page](sharded/#one-file-from-a-sharded-model));
#   rank 0 writes, and a `barrier` keeps every rank from going on until the file
#   is complete. Each rank's random generators (the CPU's and its GPUs') go in
#   too, for models with dropout or random augmentation.
# - `load_training_state` is also called by every rank. It reads onto the
#   CPU, and `set_state_dict` puts each tensor on its parameter's device (for
#   FSDP, each rank keeps its slice).
# - `main` runs `gc.collect()` before `destroy_process_group()`: what training
#   left in reference cycles is then freed while the group is still up. Freed
#   at exit instead, after the group is gone, it sometimes aborts a rank
#   ("terminate called without an active exception").
# - `main` takes two arguments that `torchrun` never passes: a `device`, to
#   train in a group that already exists (the rest of the chapter runs it so),
#   and `load`, which the wrong way below replaces.
#
# What the short form leaves out on purpose: rank 0 writes each epoch's file
# with a plain `torch.save`, so a job killed while writing leaves that file
# half-written (the earlier epochs' files are intact); to overwrite one path
# safely, write a temporary file beside it and rename it, as
# [`save_checkpoint`](../save_load/checkpoints/) does.
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
print(sorted(os.listdir("torchrun_job")))

# %% [markdown]
# Each rank trained on its own share of the data, and rank 0 wrote a
# checkpoint after each epoch.

# %% [markdown]
# ## Every rank ends with the same weights
#
# A `torchrun` job cannot hand Python objects back to this notebook. To look
# inside the ranks, the page runs the same `main` with `run_on_ranks` (page
# machinery from `tutorials_pkg.launcher`, described on
# [the launcher's page](launcher/)): it starts one fresh process per rank with
# the variables `torchrun` sets, joins them in a `gloo` group, and returns what
# each rank returned. `train_ddp` calls `main` in that group and returns the
# weights, learning rate and random state each rank ended with.

# %%
from tutorials_pkg.distributed import train_ddp
from tutorials_pkg.launcher import run_on_ranks

results = run_on_ranks(train_ddp, "run")  # two CPU ranks, two epochs

same = all(torch.equal(results[0]["state_dict"][k], results[1]["state_dict"][k])
           for k in results[0]["state_dict"])
print("devices:", [result["device"] for result in results])
print("same weights on both ranks:", same)
assert same

# %% [markdown]
# The weights are equal to the last bit, though each rank saw only its own
# share of the data. `DistributedSampler`, given a rank and a world size by
# hand, shows the shares: different on the two ranks, and in a new order each
# epoch. During `backward`, DDP averages the gradients of all ranks, so every
# step is the step one process would take on the batches of both ranks
# together:

# %%
from torch.utils.data.distributed import DistributedSampler

from tutorials_pkg.distributed import optimizer_and_scheduler, tiny_model, toy_dataset, train_step

dataset = toy_dataset()
reference = tiny_model(seed=0)  # rank 0's initial weights, which DDP gave every rank
optimizer, scheduler = optimizer_and_scheduler(reference)
for epoch in (1, 2):
    shares = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, seed=0)
        sampler.set_epoch(epoch)
        shares.append(list(sampler))
    print(f"epoch {epoch}: rank 0 gets {shares[0]}, rank 1 gets {shares[1]}")
    for start in (0, 4):  # two steps of 4 samples per rank
        train_step(reference, optimizer, *dataset[shares[0][start:start + 4] + shares[1][start:start + 4]])
    scheduler.step()
close = all(torch.allclose(reference.state_dict()[k], results[0]["state_dict"][k], atol=1e-6)
            for k in results[0]["state_dict"])
print("same as one process on both ranks' batches:", close)
assert close

# %% [markdown]
# Without `set_epoch`, a `DistributedSampler` shuffles every epoch the same
# way:

# %%
sampler = DistributedSampler(dataset, num_replicas=2, rank=0, seed=0)
print("no set_epoch, one epoch: ", list(sampler))
print("no set_epoch, the next: ", list(sampler))
sampler.set_epoch(2)
print("set_epoch(2):           ", list(sampler))
assert list(sampler) == shares[0]

# %% [markdown]
# The checkpoint holds everything a resumed run needs. Its weights and the
# optimizer's state have the model's own keys: `get_state_dict` removed the
# `module.` that the DDP wrapper puts in front of every name. The random
# generators' states are one list per rank.

# %%
state = torch.load("run/epoch1.pt", weights_only=True)
print(list(state))
print("model:    ", list(state["model"]))
print("optimizer:", list(state["optimizer"]["state"]),
      "learning rate", state["optimizer"]["param_groups"][0]["lr"])
print("epoch:", state["epoch"], " random generator states, one list per rank:", len(state["rng"]))

# %% [markdown]
# ## Resuming: every rank loads
#
# A new job resumes from `epoch1.pt`: every rank calls `load_training_state`
# before wrapping its model and gets back the weights, the optimizer's
# momentum, the scheduler's step and its own random generators' state. The
# second epoch then runs exactly as in the uninterrupted run:

# %%
resumed = run_on_ranks(train_ddp, "resumed", 2, "run/epoch1.pt")

for rank, result in enumerate(resumed):
    rng_as_uninterrupted = torch.equal(result["rng"], results[rank]["rng"])
    print(f"rank {rank}: lr {result['lr']}, RNG as in the uninterrupted run: {rng_as_uninterrupted}")
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
# `load_on_rank0_only` does that, and tells the others the epoch:

# %%
from tutorials_pkg.distributed import load_on_rank0_only

show_source(load_on_rank0_only)

# %%
drifted = run_on_ranks(train_ddp, "rank0_only", 2, "run/epoch1.pt", load_on_rank0_only)

for rank, result in enumerate(drifted):
    rng_as_uninterrupted = torch.equal(result["rng"], results[rank]["rng"])
    print(f"rank {rank}: lr {result['lr']}, RNG as in the uninterrupted run: {rng_as_uninterrupted}")
gap = max((drifted[0]["state_dict"][k] - drifted[1]["state_dict"][k]).abs().max().item()
          for k in results[0]["state_dict"])
print(f"largest difference between the ranks' weights after one epoch: {gap:.4f}")
assert gap > 1e-3

# %% [markdown]
# Nothing fails. Both ranks start from the same weights, average the same
# gradients, and still apply different steps (rank 1 with twice the learning
# rate and no momentum yet), so after the first step each rank holds a
# different model, and the next checkpoint is rank 0's alone. Load on every
# rank.

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
# Save `get_state_dict(model, optimizer)` (or `model.module.state_dict()`) as
# `save_training_state` does. For files already saved with the prefix, torch's
# own `consume_prefix_in_state_dict_if_present` removes it (in place, and only
# where a key starts with it):

# %%
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

consume_prefix_in_state_dict_if_present(wrapper_state, "module.")
print(list(wrapper_state))
tiny_model().load_state_dict(wrapper_state)
