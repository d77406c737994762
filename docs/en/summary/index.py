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
# The idea is simple, and the details are easy to get wrong: the popular
# `torchsummary` package prints some layers twice for a common kind of model.
# This page reproduces that report, fixes the model behind it, and builds a
# summary that lists each module once, counts each parameter once and leaves
# the model exactly as it found it.
#
# Every output on this page was produced by running the code when the site was
# built, on the versions printed below.

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## The torchsummary double count
#
# A widely read question about `torchsummary` comes with a model like this
# one: it builds a resnet18, keeps it as `self.base_model`, and takes its first
# three layers (`conv1`, `bn1`, `relu`) into a `Sequential` called `layer0`.
# `forward` uses `layer0` only.

# %%
from tutorials_pkg.demo_models import ResNet18StemKeepingBaseModel
from tutorials_pkg.source import show_source

show_source(ResNet18StemKeepingBaseModel)

# %% [markdown]
# `torchsummary` 1.5.1 (the last release on PyPI) prints each of the three
# layers twice, and its total adds their parameters twice: 19,072 for the
# 9,536 that `forward` uses.

# %%
import contextlib
import io
import re

import torch
from torch import nn
from torchsummary import summary as torchsummary_summary

torch.manual_seed(0)
kept = ResNet18StemKeepingBaseModel()
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    torchsummary_summary(kept, (3, 32, 32), device="cpu")
print(printed.getvalue())

total_line = re.search(r"Total params: ([\d,]+)", printed.getvalue())
reported = int(total_line.group(1).replace(",", ""))
used = sum(p.numel() for p in kept.layer0.parameters())
assert reported == 2 * used == 19_072  # conv1, bn1 and relu hooked once per parent

# %% [markdown]
# ### Why: `model.apply` visits a module once per parent
#
# `torchsummary` registers its hook with `model.apply(register_hook)`.
# `Module.apply` calls the function on every child, recursively, and
# `children()` skips a repeated module only *within one parent*. `conv1`,
# `bn1` and `relu` have two parents (`base_model` and `layer0`), so `apply`
# reaches each of them twice. Each visit registers one more forward hook; in
# the forward pass every hook fires, and each adds a row and the layer's
# `weight` and `bias` to the total. `model.modules()` and
# `model.named_modules()`, by contrast, keep a set of the modules they have
# already seen and give each module once:

# %%
visits = []
kept.apply(lambda module: visits.append(type(module).__name__))
print("apply visits Conv2d:   ", visits.count("Conv2d"), "times")
print("modules() gives Conv2d:", sum(isinstance(m, nn.Conv2d) for m in kept.modules()), "times")
assert visits.count("Conv2d") == 20 + 1  # resnet18 has 20 convolutions; conv1 a second time

# %% [markdown]
# ## Fix the model, not only the tool
#
# The answers to that question fix the tool (hook each module once). The
# model has a bigger problem: `self.base_model = ...` *registers* the whole
# resnet18. Its 11,689,512 parameters are in `parameters()`, so an optimizer
# gets them all; all 122 of its `state_dict` entries are saved with every
# checkpoint, beside `layer0`'s 6 copies of the same three layers. Our own
# summary (next section) shows the diagnosis in one table: `base_model` holds
# almost all the parameters and is `not called`. (`layer0`'s three layers are
# counted where they were registered first, inside `base_model`, so `layer0`'s
# own row shows `--`.)

# %%
from tutorials_pkg.summary import summary

diagnosis = summary(kept, input_size=(1, 3, 32, 32))
print(diagnosis.table(max_depth=1))
rows = {row.name: row for row in diagnosis.rows}
assert rows["base_model"].calls == 0 and diagnosis.total_params == 11_689_512
print("state_dict entries:", len(kept.state_dict()))
assert len(kept.state_dict()) == 128

# %% [markdown]
# The fix is to keep `base_model` in a local variable: the three layers that
# `layer0` holds stay registered, the rest of the resnet18 is garbage once
# `__init__` returns.

# %%
from tutorials_pkg.demo_models import ResNet18Stem

show_source(ResNet18Stem)

# %%
fixed_stem = ResNet18Stem()
print(summary(fixed_stem, input_size=(1, 3, 32, 32)).table(max_depth=1))
print(sorted(fixed_stem.state_dict()))
assert sum(p.numel() for p in fixed_stem.parameters()) == used == 9_536
assert len(fixed_stem.state_dict()) == 6

# %% [markdown]
# Under `DistributedDataParallel` the unused parameters are an error, not only
# waste: DDP waits for a gradient of every parameter, and the second training
# step fails with a `RuntimeError` that asks for
# `find_unused_parameters=True` (which would hide the problem at a cost in
# every step). One process is enough to see it:

# %% tags=["raises-exception"] raises="RuntimeError"
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
try:
    ddp = DistributedDataParallel(ResNet18StemKeepingBaseModel())
    for step in range(2):
        ddp(torch.randn(2, 3, 32, 32)).sum().backward()
finally:
    dist.destroy_process_group()

# %% [markdown]
# The fixed model trains under DDP without that flag:

# %%
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
try:
    ddp = DistributedDataParallel(ResNet18Stem())
    for step in range(2):
        ddp(torch.randn(2, 3, 32, 32)).sum().backward()
finally:
    dist.destroy_process_group()
print("two steps, no unused parameters")

# %% [markdown]
# ### torchsummary's defaults: `device="cuda"`, and no batch dimension
#
# Two more things to know before calling `torchsummary`. Its `device`
# defaults to `"cuda"`: where CUDA is available it makes the random input on
# the GPU, and a model left on the CPU fails (where CUDA is not available it
# quietly uses the CPU). And its `input_size` has *no* batch dimension: it makes
# a batch of 2 itself (`torch.rand(2, *input_size)`) and prints the batch as
# `-1`. `torchinfo` and the summary below take the shape *with* the batch.

# %%
import inspect

print(inspect.signature(torchsummary_summary))

# %% [markdown]
# Given a shape with the batch, as `torchinfo` takes it, `torchsummary` adds a
# second batch dimension, and the first convolution raises a `RuntimeError`
# about a 5-D input:

# %% tags=["raises-exception"] raises="RuntimeError"
torchsummary_summary(ResNet18Stem(), (1, 3, 32, 32), device="cpu")

# %% [markdown]
# ## A summary that counts each module once
#
# `tutorials_pkg.summary.summary` takes the model and exactly one of
# `input_size` (a shape *with* the batch dimension, as in `torchinfo`, or a
# list of shapes; random inputs are made on the model's device) or
# `input_data` (your own tensor, or a tuple of the model's positional
# arguments, any of which may be a list, tuple or dict of tensors). What it
# does differently:
#
# - one row per module, from `named_modules()` (each module once, under the
#   first name it was registered with; the other names are noted);
# - each parameter counted in the first row that owns it, so the rows add up to
#   `sum(p.numel() for p in model.parameters())`, tied weights and parameters
#   of the model itself included;
# - one pre-hook and one hook per module: the hooks count calls (a module
#   called twice in `forward` is marked) and record the shapes, also of the
#   inputs a module is given by keyword (`attn(query=x, key=x, value=x)`);
# - the forward pass runs in eval mode under `torch.no_grad()`, and each
#   module's own mode is put back afterwards; the hooks are removed in a
#   `finally`, so also when the forward pass fails;
# - a model compiled with `torch.compile` is summarised through the module it
#   wraps (`_orig_mod`), run eagerly: once a compiled model has run, hooks
#   added later are not seen by the compiled code it reuses, and every layer
#   would read `not called`.

# %%
show_source(summary)

# %% [markdown]
# The rows are data, too: `name`, `type`, `input_shape`, `output_shape`,
# `params`, `trainable_params`, `calls` (and `reused`, true when `calls > 1`),
# `aliases`. The first layer of the question's model is registered under two
# names:

# %%
conv_row = diagnosis.rows[2]
print(conv_row)
print("reused:", conv_row.reused)

# %% [markdown]
# `str(result)` is the whole table; `result.table(max_depth=1)`, used above,
# stops at a depth, and each row it shows then counts the parameters of the
# rows it hides.
#
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
# ## A detection model: a list of images
#
# torchvision's detection models take one argument, a *list* of images
# (3-D tensors, of any sizes), so the call passes that list as the one
# positional argument: `input_data=(images,)`. Reusing a detector's backbone
# is a common reason to look inside one. Faster R-CNN with a MobileNetV3
# backbone (random weights; `weights_backbone=None` too, or the builder would
# download ImageNet weights for the backbone), to depth 2: the `transform`
# that resizes the images and batches them, the `backbone` (`body`, the
# MobileNetV3 layers, and `fpn`, the feature pyramid that makes one map per
# level), the region proposal network `rpn` with its `head`, and `roi_heads`
# with the `box_head` and the `box_predictor`, which gives 91 class scores
# (COCO's) and 4 box coordinates per class for each proposal. With random
# weights no box passes the score threshold, so the output lists are empty
# (`[0, 4]`). Long shapes are cut short in the table (`...`); the rows keep
# them whole.

# %%
torch.manual_seed(0)
detector = torchvision.models.get_model(
    "fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None)
images = [torch.rand(3, 320, 320)]
detection = summary(detector, input_data=(images,))
print(detection.table(max_depth=2))

# %% [markdown]
# The count differs from the one torchvision publishes for the trained model
# by exactly the BatchNorm weights and biases: built for training from
# scratch the backbone uses `nn.BatchNorm2d`, and with pretrained weights
# `FrozenBatchNorm2d`, whose scale and shift are buffers, not parameters.

# %%
weights = torchvision.models.detection.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1
batchnorm = sum(p.numel() for m in detector.modules() if isinstance(m, nn.BatchNorm2d)
                for p in m.parameters())
print(f"ours {detection.total_params:,} = torchvision {weights.meta['num_params']:,} "
      f"+ BatchNorm {batchnorm:,}")
assert detection.total_params == weights.meta["num_params"] + batchnorm

# %% [markdown]
# Passing the list itself as `input_data` is ambiguous (one argument, or one
# argument per image?), so `summary` refuses it with a `TypeError` that shows
# the call that works:

# %% tags=["raises-exception"] raises="TypeError"
summary(detector, input_data=images)

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
# The double count needs no `base_model`: slicing an `nn.Sequential` makes a
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
torch.manual_seed(0)  # torchsummary's input is random
victim = ResNet18Stem()
batchnorm = victim.layer0[1]
running_mean = batchnorm.running_mean.clone()
with contextlib.redirect_stdout(io.StringIO()):
    torchsummary_summary(victim, (3, 32, 32), device="cpu")
moved = (batchnorm.running_mean - running_mean).abs().max().item()
print(f"running_mean moved by up to {moved:.4f}")
print("num_batches_tracked:", batchnorm.num_batches_tracked.item())
assert moved > 0 and batchnorm.num_batches_tracked.item() == 1

# %% [markdown]
# `summary` runs in eval mode under `torch.no_grad()`, as the section above
# shows: the statistics stay where they were.

# %%
victim = ResNet18Stem()
batchnorm = victim.layer0[1]
running_mean = batchnorm.running_mean.clone()
summary(victim, input_size=(1, 3, 32, 32))
assert torch.equal(batchnorm.running_mean, running_mean)
assert batchnorm.num_batches_tracked.item() == 0 and victim.training

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
# has nothing left by its third max-pool, and PyTorch raises a `RuntimeError`
# from deep inside the pooling layer. `summary` raises that same error, type
# and message unchanged (a CUDA out-of-memory error stays one, too), and adds
# notes below it: the layer that failed and the input shape, and, because this
# message says the output is too small, a hint to use a larger input. An
# error of another kind gets the first note only.

# %% tags=["raises-exception"] raises="RuntimeError"
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
