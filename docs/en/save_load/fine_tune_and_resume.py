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
# # Saving and loading: fine-tune and resume
#
# The fourth page of the chapter on saving and loading. [The previous
# page](../loading/) loaded checkpoints that fit the model exactly; this
# one loads a pretrained checkpoint into a model with a new head, then resumes
# a training run from a checkpoint to the exact same numbers.

# %% [markdown]
# Every file goes into a new temporary directory, which becomes the working
# directory. The resumed run trains on scikit-learn's 8×8 handwritten digits,
# as on the other pages. Last, the versions this page runs on.

# %%
import os
import tempfile

import torch

from tutorials_pkg.digits import load_digits_tensors
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.save_load import load_checkpoint, save_checkpoint
from tutorials_pkg.source import show_source

x, y = load_digits_tensors(flatten=True)
os.chdir(tempfile.mkdtemp())

print(describe_runtime())

# %% [markdown]
# ## Loading to fine-tune
#
# The most common load in practice puts a checkpoint trained for one task into
# a model for another: a 1000-class ImageNet ResNet-18 into a model for 10
# classes. The backbone fits and the classification head does not, so
# [`load_checkpoint`](../loading/#a-checkpoint-that-does-not-fit) refuses it with a `CheckpointMismatchError`, also with
# `strict=False` (which skips missing and unexpected keys, never a wrong
# shape):

# %% tags=["raises-exception"] raises="CheckpointMismatchError"
from torchvision.models import resnet18

torch.manual_seed(0)
torch.save(resnet18(num_classes=1000).state_dict(), "imagenet.pt")  # stands in for a downloaded file
finetuned = resnet18(num_classes=10)
load_checkpoint("imagenet.pt", finetuned, strict=False)

# %% [markdown]
# `filter_state_dict` keeps the entries whose name (after the wrapper
# prefixes) and shape fit the model, and says why it dropped each other one:

# %%
from tutorials_pkg.save_load import filter_state_dict

show_source(filter_state_dict)

# %% [markdown]
# Then `load_state_dict(kept, strict=False)` loads what was kept. It returns
# an `IncompatibleKeys` pair that reads: `missing_keys` are the model's
# entries the file did not fill, so those layers keep their random
# initialisation and start from scratch (here the new head, `fc`);
# `unexpected_keys` are entries of the file the model has no place for (none
# here, since `filter_state_dict` dropped them).

# %%
kept, dropped = filter_state_dict(torch.load("imagenet.pt"), finetuned)
print(len(kept), "entries kept;", dropped)
result = finetuned.load_state_dict(kept, strict=False)
print(result)
assert result.missing_keys == ["fc.weight", "fc.bias"] and not result.unexpected_keys

# %% [markdown]
# ### `assign=True`: the file's tensors become the parameters
#
# By default `load_state_dict` copies each value into the model's existing
# tensor, which keeps that tensor's dtype and device. With `assign=True` the
# loaded tensor itself becomes the parameter (only `requires_grad` is taken
# from the model). Two consequences: a checkpoint saved in float16 makes a
# float16 model, and tensors from `torch.load(mmap=True)` stay memory-mapped
# from the file instead of being copied:

# %%
half = {key: value.half() for key, value in resnet18(num_classes=10).state_dict().items()
        if value.is_floating_point()}
copied, assigned = resnet18(num_classes=10), resnet18(num_classes=10)
copied.load_state_dict(half, strict=False)
assigned.load_state_dict(half, strict=False, assign=True)
print("copy:", copied.fc.weight.dtype, " assign:", assigned.fc.weight.dtype)

mapped = torch.load("imagenet.pt", mmap=True)
copied, assigned = resnet18(num_classes=1000), resnet18(num_classes=1000)
copied.load_state_dict(mapped)
assigned.load_state_dict(mapped, assign=True)
print("shares the mapped memory: copy", copied.fc.weight.data_ptr() == mapped["fc.weight"].data_ptr(),
      " assign", assigned.fc.weight.data_ptr() == mapped["fc.weight"].data_ptr())

# %% [markdown]
# So build the optimizer after the load. One built before holds the old
# parameter objects, which `assign=True` replaced: it steps tensors the model
# no longer uses, and the model does not learn.

# %%
model_first = resnet18(num_classes=1000)
too_early = torch.optim.SGD(model_first.parameters(), lr=0.1)
model_first.load_state_dict(torch.load("imagenet.pt"), assign=True)
before = model_first.fc.weight.detach().clone()
model_first(torch.randn(2, 3, 64, 64)).sum().backward()
too_early.step()
print("optimizer holds the model's fc.weight:", too_early.param_groups[0]["params"][-2] is model_first.fc.weight)
assert torch.equal(model_first.fc.weight, before)  # the step changed nothing in the model

after_load = torch.optim.SGD(model_first.parameters(), lr=0.1)  # the fix
after_load.step()
assert not torch.equal(model_first.fc.weight, before)

# %% [markdown]
# ## Resuming training exactly
#
# To continue a run as if it had never stopped, a checkpoint needs more than
# the weights: the optimizer's state (Adam's moving averages), the learning
# rate scheduler's position, the epoch, and the random states that decide the
# data order and the dropout masks. A `Run` holds the four objects a run
# changes as it goes:

# %%
from tutorials_pkg.save_load import Run, digits_run, train_run

show_source(Run, digits_run, train_run)

# %% [markdown]
# First a run of 4 epochs without a stop:

# %%
straight = train_run(digits_run(seed=0), x, y, 4, [])
print([round(loss, 4) for loss in straight])

# %% [markdown]
# `run_state` collects what the checkpoint needs besides the model and the
# optimizer, and `restore_run_state` puts it back:

# %%
from tutorials_pkg.save_load import restore_run_state, run_state

show_source(run_state, restore_run_state)

# %% [markdown]
# Then the same run stopped after 2 epochs, saved, and continued by new
# objects, created with a different seed so that everything they end up with
# must come from the checkpoint:

# %%
run = digits_run(seed=0)
losses = train_run(run, x, y, 2, [])
save_checkpoint("resume.pt", run.model, run.optimizer, epoch=2, losses=losses, **run_state(run))

run = digits_run(seed=123)
meta = load_checkpoint("resume.pt", run.model, run.optimizer)
restore_run_state(run, meta)
resumed = train_run(run, x, y, 4 - meta["epoch"], list(meta["losses"]))
print([round(loss, 4) for loss in resumed])
assert resumed == straight  # exactly, not approximately

# %% [markdown]
# Leave the optimizer's state out (a common shortcut: weights only) and the
# resumed run is a different run from epoch 3 on, because Adam starts its
# averages from zero again; leave the random states out and the data come in
# another order. On a GPU, bit-for-bit equality also needs deterministic kernels
# (`torch.use_deterministic_algorithms(True)`) and the CUDA random states
# (`torch.cuda.get_rng_state_all()`); a `DataLoader` with workers needs its
# own generator saved the same way.
