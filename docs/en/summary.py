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
# # Model summaries
#
# `print(model)` shows how a model is *built*; a summary shows what happens
# when it *runs*: every layer with the shapes it sees, its parameters, and the
# totals. It works by running one forward pass with a hook on every module.
# That is simple enough to get wrong, and the popular `torchsummary` package
# does get it wrong for a common kind of model. This page reproduces the bug,
# explains it, and builds a summary that lists each module once, counts each
# parameter once and leaves the model exactly as it found it.
#
# Every output on this page was produced by running the code when the site was
# built, on the versions printed below.

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## The torchsummary double count
#
# A model often keeps a part under a name of its own, `self.base_model`, and
# also inside a container that groups its stages. Both are registrations of the
# *same* module: one set of weights.

# %%
import torch
from torch import nn


class TwoNames(nn.Module):
    def __init__(self):
        super().__init__()
        self.base_model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stages = nn.ModuleList([self.base_model])  # the same module, a second name
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.base_model(x).mean((2, 3)))


model = TwoNames()
unique = sum(p.numel() for p in model.parameters())
print("parameters:", unique)

# %% [markdown]
# `torchsummary` 1.5.1 (the last release on PyPI) prints every layer of
# `base_model` twice, and its total adds their parameters twice:

# %%
import contextlib
import io
import re

from torchsummary import summary as torchsummary_summary

printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    torchsummary_summary(model, (3, 16, 16), device="cpu")
print(printed.getvalue())

total_line = re.search(r"Total params: ([\d,]+)", printed.getvalue())
reported = int(total_line.group(1).replace(",", ""))
base = sum(p.numel() for p in model.base_model.parameters())
assert reported == unique + base  # base_model counted once per name
print(f"torchsummary: {reported:,}; the model has {unique:,}")

# %% [markdown]
# ### Why: `model.apply` visits a module once per parent
#
# `torchsummary` registers its hook with `model.apply(register_hook)`.
# `Module.apply` calls the function on every child, recursively, and
# `children()` skips a repeated module only *within one parent*. `base_model`
# has two parents (the model and the `ModuleList`), so `apply` reaches it, and
# every layer inside it, twice. Each visit registers one more forward hook; in
# the forward pass every hook fires, and each adds a row and the layer's
# `weight` and `bias` to the total. `model.modules()` and
# `model.named_modules()`, by contrast, keep a set of the modules they have
# already seen and give each module once:

# %%
visits = []
model.apply(lambda module: visits.append(type(module).__name__))
print("apply visits:   ", visits)
print("modules() gives:", [type(m).__name__ for m in model.modules()])
assert visits.count("Conv2d") == 2
assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 1

# %% [markdown]
# ## A summary that counts each module once
#
# `tutorials_pkg.summary.summary` takes the model and exactly one of
# `input_size` (a shape *with* the batch dimension, as in `torchinfo`; random
# inputs are made on the model's device) or `input_data` (your own tensor, or a
# tuple of tensors). What it does differently:
#
# - one row per module, from `named_modules()` (each module once, under the
#   first name it was registered with; the other names are noted);
# - each parameter counted in the first row that owns it, so the rows add up to
#   `sum(p.numel() for p in model.parameters())`, tied weights and parameters
#   of the model itself included;
# - one pre-hook and one hook per module: the hooks count calls (a module
#   called twice in `forward` is marked) and record the shapes;
# - the forward pass runs in eval mode under `torch.no_grad()`, and each
#   module's own mode is put back afterwards; the hooks are removed in a
#   `finally`, so also when the forward pass fails.

# %%
from tutorials_pkg.summary import summary
from tutorials_pkg.source import show_source

show_source(summary)

# %%
result = summary(model, input_size=(1, 3, 16, 16))
print(result)
assert result.total_params == unique

# %% [markdown]
# The rows are data, too: `name`, `type`, `input_shape`, `output_shape`,
# `params`, `trainable_params`, `calls` (and `reused`, true when `calls > 1`),
# `aliases`:

# %%
conv_row = result.rows[2]
print(conv_row)
print("reused:", conv_row.reused)

# %% [markdown]
# ## ResNet-18, checked against torchinfo
#
# `torchinfo` is the maintained successor of `torchsummary`. On a plain model
# the two should agree, and both with the parameter count torchvision
# publishes for its ResNet-18 weights (11,689,512, in the weights' metadata,
# which needs no download). Freezing everything but the last layer, as for
# fine-tuning, makes the trainable count differ from the total:

# %%
import torchinfo
import torchvision

resnet = torchvision.models.resnet18(weights=None)
for name, param in resnet.named_parameters():
    param.requires_grad_(name.startswith("fc."))

ours = summary(resnet, input_size=(1, 3, 224, 224))
print(ours)

# %%
theirs = torchinfo.summary(resnet, input_size=(1, 3, 224, 224), verbose=0)
published = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["num_params"]
print(f"total:     ours {ours.total_params:,}  torchinfo {theirs.total_params:,}  "
      f"torchvision {published:,}")
print(f"trainable: ours {ours.trainable_params:,}  torchinfo {theirs.trainable_params:,}")
assert ours.total_params == theirs.total_params == published
assert ours.trainable_params == theirs.trainable_params == 512 * 1000 + 1000

# %% [markdown]
# ### Modules called more than once
#
# torchvision's `BasicBlock` has one `relu` module and calls it twice in its
# `forward`. A per-call summary would print it twice; here it is one row,
# marked `called 2x`:

# %%
print([row.name for row in ours.rows if row.reused])

# %% [markdown]
# ## Tied weights and a model's own parameters
#
# A language model often *ties* its output layer to its embedding: the two
# layers share one weight matrix. And a parameter can belong to the model
# itself rather than to any layer (a learnable scale, a class token). Summing
# each module's own parameters counts the tied matrix twice:

# %%
class TiedWithScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.decode = nn.Linear(4, 10)
        self.decode.weight = self.embed.weight  # one 10x4 matrix, two layers
        self.scale = nn.Parameter(torch.ones(4))  # owned by the model itself

    def forward(self, tokens):
        return self.decode(self.embed(tokens) * self.scale)


tied = TiedWithScale()
per_module = sum(p.numel() for m in tied.modules() for p in m.parameters(recurse=False))
unique_tied = sum(p.numel() for p in tied.parameters())
print("sum over modules:", per_module, " unique parameters:", unique_tied)
assert per_module == unique_tied + 10 * 4

# %% [markdown]
# The summary counts the matrix in the first row that owns it and says where
# the second row's weight comes from; the model's own `scale` is in the first
# row:

# %%
tied_summary = summary(tied, input_data=torch.tensor([[1, 2, 3]]))
print(tied_summary)
assert tied_summary.total_params == unique_tied == 10 * 4 + 10 + 4

# %% [markdown]
# ## What the memory estimate counts
#
# The last lines of the table are an estimate, not a measurement: the input;
# the output of every call of a leaf module (a module without children), which
# is roughly what training keeps for the backward pass at this batch size; and
# the parameters and buffers. `torchinfo` counts something else (the outputs
# of leaf layers *with* parameters, doubled for their gradients), so the two
# differ. For the real peak on a GPU, measure it:
# `torch.cuda.max_memory_allocated()`.

# %%
print(f"input {ours.input_bytes:,} B, leaf outputs {ours.output_bytes:,} B, "
      f"parameters {ours.param_bytes:,} B, buffers {ours.buffer_bytes:,} B")
assert ours.param_bytes == 4 * published  # float32: 4 bytes a parameter

# %% [markdown]
# ## The model is left as it was
#
# A summary must not change the model it describes. Here is a model in
# training mode, with one part frozen in eval mode (as you might freeze a
# pretrained stem): after the summary every module has its own mode back, and
# no BatchNorm running statistic has moved.

# %%
probe = torchvision.models.resnet18(weights=None)
probe.layer1.eval()
modes = [m.training for m in probe.modules()]
buffers = {name: b.clone() for name, b in probe.named_buffers()}

summary(probe, input_size=(2, 3, 64, 64))

assert [m.training for m in probe.modules()] == modes
assert probe.training and not probe.layer1.training
assert all(torch.equal(b, buffers[name]) for name, b in probe.named_buffers())
print("modes and all", len(buffers), "buffers unchanged")

# %% [markdown]
# ## What goes wrong in the wild
#
# ### A slice of a `Sequential` is a second name
#
# The double count needs no `ModuleList`: slicing an `nn.Sequential` makes a
# new `Sequential` that holds the *same* layers. Keeping the slice as an
# attribute, a handy shortcut to the features, registers every layer in it
# twice:

# %%
from tutorials_pkg.demo_models import tiny_resnet


class WithFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny_resnet()
        self.features = self.net[:5]  # shares the first five layers

    def forward(self, x):
        return self.net(x)


aliased = WithFeatures()
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    torchsummary_summary(aliased, (3, 16, 16), device="cpu")
total_line = re.search(r"Total params: ([\d,]+)", printed.getvalue())
reported = int(total_line.group(1).replace(",", ""))
unique_aliased = sum(p.numel() for p in aliased.parameters())
print(f"torchsummary: {reported:,}; the model has {unique_aliased:,}")
sliced = sum(p.numel() for p in aliased.features.parameters())
assert reported == unique_aliased + sliced  # the shared layers counted twice

# %% [markdown]
# Counting each module and each parameter once gives the right number, and
# the table says where else each layer is registered:

# %%
fixed = summary(aliased, input_size=(1, 3, 16, 16))
print("\n".join(str(fixed).splitlines()[:6]))
assert fixed.total_params == unique_aliased

# %% [markdown]
# ### A summary in training mode moves the BatchNorm statistics
#
# `torchsummary` runs its forward pass in whatever mode the model is in, with
# autograd on. In training mode every BatchNorm updates its running mean and
# variance from the random input: the model you summarised is no longer the
# model you had.

# %%
victim = TwoNames()
running_mean = victim.base_model[1].running_mean.clone()
with contextlib.redirect_stdout(io.StringIO()):
    torchsummary_summary(victim, (3, 16, 16), device="cpu")
moved = (victim.base_model[1].running_mean - running_mean).abs().max().item()
print("running_mean moved by up to", moved)
print("num_batches_tracked:", victim.base_model[1].num_batches_tracked.item())
assert moved > 0 and victim.base_model[1].num_batches_tracked.item() == 1

# %% [markdown]
# `summary` runs in eval mode under `torch.no_grad()`, as the section above
# shows: the statistics stay where they were.

# %%
victim = TwoNames()
running_mean = victim.base_model[1].running_mean.clone()
summary(victim, input_size=(1, 3, 16, 16))
assert torch.equal(victim.base_model[1].running_mean, running_mean)
assert victim.base_model[1].num_batches_tracked.item() == 0 and victim.training

# %% [markdown]
# ### `model.eval()` without the way back
#
# A hand-written summary that calls `model.eval()` and forgets to switch back
# leaves the model in eval mode: training continues with BatchNorm frozen and
# dropout off, and nothing says so. Calling `model.train()` afterwards is not
# right either: it also switches on the parts you had frozen in eval mode.

# %%
def shapes_in_eval(model, x):  # the wrong way: eval(), and no way back
    model.eval()
    with torch.no_grad():
        return model(x).shape


frozen_stem = torchvision.models.resnet18(weights=None)
frozen_stem.bn1.eval()
shapes_in_eval(frozen_stem, torch.randn(1, 3, 64, 64))
assert not frozen_stem.training  # still in eval mode: the next epoch trains wrongly
frozen_stem.train()
assert frozen_stem.bn1.training  # and train() un-froze the stem's BatchNorm

# %% [markdown]
# `summary` remembers each module's own mode and restores it module by module,
# with this context manager:

# %%
from tutorials_pkg.summary import eval_mode

show_source(eval_mode)

# %%
frozen_stem.bn1.eval()
summary(frozen_stem, input_size=(1, 3, 64, 64))
assert frozen_stem.training and not frozen_stem.bn1.training

# %% [markdown]
# ### An input too small for the model
#
# Every pooling layer halves the picture. SqueezeNet 1.1 given a 16×16 input
# has nothing left by its third max-pool. PyTorch's own message comes from
# deep inside the pooling layer; `summary` raises a `ValueError` that names the
# layer that failed and the input shape it was given:

# %% tags=["raises-exception"] raises="ValueError"
squeezenet = torchvision.models.squeezenet1_1(weights=None)
summary(squeezenet, input_size=(1, 3, 16, 16))

# %% [markdown]
# The hooks are gone and the model is unchanged, so a larger input just works;
# the count matches the one torchvision publishes for SqueezeNet 1.1:

# %%
small = summary(squeezenet, input_size=(1, 3, 64, 64))
print(f"{small.total_params:,}")
assert all(not m._forward_hooks and not m._forward_pre_hooks for m in squeezenet.modules())
published = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["num_params"]
assert small.total_params == published

# %% [markdown]
# ### Both kinds of input, or neither
#
# `input_size` and `input_data` are alternatives. Passing both (or neither)
# raises a `ValueError` instead of silently preferring one:

# %% tags=["raises-exception"] raises="ValueError"
summary(squeezenet, input_size=(1, 3, 64, 64), input_data=torch.randn(1, 3, 64, 64))
