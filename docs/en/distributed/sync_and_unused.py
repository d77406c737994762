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
# # DDP: SyncBatchNorm and unused parameters
#
# The [previous page](../) saved and resumed checkpoints under DDP. This page
# looks at two things DDP asks of the model itself: a BatchNorm that should
# compute its statistics across ranks must become a `SyncBatchNorm`, and
# parameters that forward never uses keep DDP waiting for their gradients.

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
import torch

from tutorials_pkg.distributed import sync_batchnorm_step
from tutorials_pkg.source import show_source

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
# the CPU that contains one, with a `ValueError`. (The project's GPU tests check,
# on two GPUs, that every rank's running mean is that of the whole batch across
# the ranks; on a machine with fewer GPUs they skip and say so.)

# %% tags=["raises-exception"] raises="ValueError"
from torch.nn.parallel import DistributedDataParallel as DDP

DDP(synced)

# %% [markdown]
# ## Parameters that forward never uses: `find_unused_parameters`
#
# The [summary chapter](../../summary/) meets a model that keeps a whole `resnet18` as
# `self.base_model` and uses only its first three layers. Registered, its
# 11,689,512 parameters go into every `state_dict` (128 keys, where the model
# needs 6), and DDP expects a gradient for each of them. The same model in
# small, on `tiny_resnet`:

# %%
from tutorials_pkg.demo_models import RegistersUnusedBaseModel
from tutorials_pkg.distributed import count_allreduced, train_step

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
from tutorials_pkg.demo_models import StemAndHead

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
dist.destroy_process_group()

# %% [markdown]
# Here 5,356 values instead of 322; with the tutorial's `resnet18`, its
# 11,689,512 parameters, 46.8 MB in float32, every step. Don't register what
# forward does not use; keep the flag for models whose forward really skips
# parameters on some steps.
