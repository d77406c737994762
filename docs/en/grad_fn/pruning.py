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
# # grad_fn: channels pruned together
#
# The third page of [Tracing structure through grad_fn](../), after
# [drawing the graph](../drawing/): the same trace, read for the channels that
# must be pruned together, first on the [first page's](../#from-nodes-back-to-modules)
# network and input, then on a small YOLO-style detector, the kind of network
# the blog post this chapter answers prunes:

# %%
import torch

from tutorials_pkg.demo_models import tiny_resnet
from tutorials_pkg.grad_fn import trace_grad_fn
from tutorials_pkg.runtime import default_device
from tutorials_pkg.source import show_source

torch.manual_seed(0)
device = default_device()
model = tiny_resnet().to(device)
x = torch.randn(2, 3, 32, 32, device=device)
trace = trace_grad_fn(model, x)  # one forward pass, as on the drawing page

# %% [markdown]
# ## Channels a residual add couples
#
# Structured pruning removes whole channels: drop output channel *k* of a
# convolution, and channel *k* of the BatchNorm after it, and input channel
# *k* of every layer that reads it. A residual add makes that a group affair:
# `a + b` needs `a` and `b` to have the same channels, so removing channel *k*
# from the convolution that makes `a` forces removing it from the one that
# makes `b`, and from everything that reads the sum. `coupled_channel_groups`
# finds these groups in the trace; each lists the layers that make or carry
# its channels, the layers that read them, how many channels it has, and why
# it cannot be pruned, where it cannot:

# %%
from tutorials_pkg.grad_fn import coupled_channel_groups

for group in coupled_channel_groups(trace):
    print(group)

# %% [markdown]
# The first group is the residual stream of the first block (the first `+`
# in the [graph](../drawing/#the-graph-of-tiny_resnet)): the stem conv,
# its BatchNorm, and the block's `conv2` with its BatchNorm all write into the
# same 8 channels. The last is the classifier: its 10 channels are what the
# model returns, so it is refused.
#
# ## How the groups are found
#
# Every tensor the forward pass made gets a *label* for each of its elements:
# which channel it carries (channel *k* of some layer's output). Walking the
# graph from the input to the output, each node's labels follow from its
# inputs' labels:
#
# - a convolution or linear layer makes new channels: new labels, and it
#   records the labels it reads as its input channels (after `flatten`, a
#   channel is read at H×W features of a `Linear`);
# - BatchNorm, GroupNorm and PReLU carry their input's channels, and a grouped
#   or depthwise convolution ties each group of its input to the same group of
#   its output;
# - an operation that only moves values (cat, split, view, permute, pooling,
#   upsampling) is replayed on the labels, so they move as the values did;
# - an element-wise operation (add, multiply, an activation) joins the labels
#   it combines: those channels must be pruned together;
# - anything else (attention's matrix products, a LayerNorm over the channels,
#   a layer of a type the trace does not map, a slice of the channels at fixed
#   positions) marks what it reads as not prunable, and says why.
#
# The walk is short:

# %%
from tutorials_pkg.grad_fn import walk_channels

show_source(walk_channels)

# %% [markdown]
# It is the core of `coupled_channel_groups`; the rest of
# `tutorials_pkg/grad_fn/pruning.py`
# holds the rule for each kind of layer and operation, the union-find that
# joins labels, the grouping (channels whose labels reach the same layers form
# a group, and each channel lists where it sits in each layer) and the cut.
# `python -m benchmarks.pruning --package` checks every group of every torchvision
# classification model, the package's `UNet` and the detector below: pruned,
# each must give the output the original gives with those channels zeroed.
#
# ## Concatenation and split
#
# Two rules carry most of the weight in networks built from blocks. After
# `torch.cat([a, b], 1)`, channel *k* of `b` is channel *a.shape[1] + k* of
# what the next layer reads; the labels, concatenated like the values, say so.
# `chunk` cuts the channels into pieces computed from their number, so the
# pieces must lose the same channels or the cut moves; a split into sizes
# written in the code cannot be pruned at all:

# %%
from tutorials_pkg.grad_fn.pruning import concatenated, split

show_source(concatenated, split)

# %% [markdown]
# ## ResNet-18's `layer1`
#
# ResNet-18's `layer1` is the residual stream at full size: the
# stem and both blocks' second convolution share 64 channels, read by four
# convolutions.

# %%
import torchvision

resnet = torchvision.models.resnet18(weights=None).to(device).eval()
image = torch.randn(1, 3, 64, 64, device=device)
resnet_groups = coupled_channel_groups(trace_grad_fn(resnet, image))
stream = next(group for group in resnet_groups if "layer1.0.conv2" in group.layers)
print("layers:   ", stream.layers)
print("consumers:", stream.consumers)
assert stream.layers == ["conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2",
                         "layer1.1.conv2", "layer1.1.bn2"]

# %% [markdown]
# ## Pruning one layer alone
#
# A group made by hand is cut as written. Prune one convolution of the stream
# on its own (here `layer1.0.conv2` and its BatchNorm lose channel 0) and the
# shapes no longer meet at the add, which fails with a `RuntimeError`:

# %% tags=["raises-exception"] raises="RuntimeError"
from tutorials_pkg.grad_fn import ChannelGroup, prune_channel_group

alone = ChannelGroup(["layer1.0.conv2", "layer1.0.bn2"], [])
prune_channel_group(resnet, alone, drop=[0])
resnet(image)

# %% [markdown]
# ## Cutting the layers
#
# `prune_channel_group` cuts every layer of a group: where each channel sits
# in each layer is in the group. It works out every layer's new weights
# first and changes the model only when all of them are ready, so a group it
# refuses, or one from an older trace, leaves the model as it was. A
# convolution is where the dimensions differ: a transposed convolution keeps
# its output channels in dimension 1 of its weight, and a grouped one can
# only lose whole groups:

# %%
from tutorials_pkg.grad_fn import cut_conv

show_source(cut_conv)

# %%
resnet = torchvision.models.resnet18(weights=None).to(device).eval()
before = sum(p.numel() for p in resnet.parameters())
prune_channel_group(resnet, stream, drop=list(range(16)))  # 64 -> 48 channels
after = sum(p.numel() for p in resnet.parameters())
print(resnet(image).shape, f"parameters {before:,} -> {after:,}")
assert resnet.layer1[1].conv2.out_channels == 48
assert resnet.layer2[0].conv1.in_channels == 48

# %% [markdown]
# ## A YOLO-style network
#
# The blog post prunes YOLOv5, built from Conv-BN-SiLU units, blocks that split
# the channels and concatenate the paths again, an SPPF block (three
# max-pools whose outputs are concatenated), a neck that upsamples and
# concatenates across scales, and a detection head. `tiny_yolo` has the same
# parts, small (random weights: `weights=None`). Its C2f and SPPF blocks:

# %%
from tutorials_pkg.grad_fn.yolo import C2f, SPPF

show_source(C2f, SPPF)

# %%
from tutorials_pkg.grad_fn import tiny_yolo

yolo = tiny_yolo(weights=None).eval()
frame = torch.randn(1, 3, 256, 256)
yolo_groups = coupled_channel_groups(trace_grad_fn(yolo, frame))
for number, group in enumerate(yolo_groups):
    convs = [name.removesuffix(".conv") for name in group.layers if not name.endswith(".bn")]
    print(f"{number:2} {group.channels:4} channels  {' '.join(convs):44} {group.refused or ''}")
assert [g.refused is not None for g in yolo_groups].count(True) == 2  # the two outputs

# %% [markdown]
# Group 2 is the first C2f: `cv1`'s channels, in two halves (one channel of
# the group is a channel of each half, so `chunk` still cuts in the middle),
# and the bottleneck's output, added to the second half. The two refused
# groups are the head's outputs: 4 box values and 80 class scores per cell.
#
# ## The old rule breaks on it
#
# The first version of this page found the groups with a simpler rule: a
# convolution starts new channels, so does a concatenation, and every other
# operation joins the channels of its inputs. On SPPF it lists `cv1` with no
# layer reading it, because `cv2` reads a concatenation:

# %%
from tutorials_pkg.grad_fn import coupled_channel_groups_where_cat_starts_new

old_groups = coupled_channel_groups_where_cat_starts_new(trace_grad_fn(yolo, frame))
sppf = next(group for group in old_groups if "stage3.2.cv1.conv" in group.layers)
print(sppf)

# %% [markdown]
# Pruning that group removes a channel from each of the four concatenated
# maps, and `cv2` still expects the old number: a `RuntimeError` at the next
# forward pass.

# %% tags=["raises-exception"] raises="RuntimeError"
import copy

broken = copy.deepcopy(yolo)
prune_channel_group(broken, sppf, drop=[0])
broken(frame)

# %% [markdown]
# ## Slimming it by 30 %
#
# Network slimming prunes the channels whose BatchNorm scale |γ| is smallest.
# With `weights=None` every γ is 1 and cannot rank anything, so here seeded
# random values stand in for a trained network's. `batchnorm_scale` sums
# |γ| over a group's BatchNorms; the 30 % of channels with the smallest sum go,
# in every group that can be pruned, all in one call:

# %%
from torch import nn

from tutorials_pkg.grad_fn import batchnorm_scale, prune_channel_groups

torch.manual_seed(0)
for layer in yolo.modules():
    if isinstance(layer, nn.BatchNorm2d):
        nn.init.uniform_(layer.weight, 0.0, 1.0)  # stands in for trained scales

plan = []
for group in yolo_groups:
    if group.refused is None:
        smallest = batchnorm_scale(yolo, group).argsort()[: int(0.3 * group.channels)]
        plan.append((group, smallest.tolist()))
slim = copy.deepcopy(yolo)
prune_channel_groups(slim, plan)
print(f"{len(plan)} groups, {sum(len(drop) for _, drop in plan)} channels pruned")

# %% [markdown]
# The parameters and multiply-adds (`count_macs`, from the
# [MobileNet page](../../blocks/mobilenet/), counts them with
# `FlopCounterMode`), before and after:

# %%
from tutorials_pkg.blocks.mobilenet import count_macs

for label, net in (("before", yolo), ("after", slim)):
    parameters = sum(p.numel() for p in net.parameters())
    print(f"{label:6} parameters {parameters:>9,}  multiply-adds {count_macs(net, frame):>12,}")

# %% [markdown]
# The proof that the right channels went: the slim network gives the output
# the original gives with those channels set to zero everywhere they are made
# (`zero_channel_groups`: their weights, biases and BatchNorm scales):

# %%
from tutorials_pkg.grad_fn import zero_channel_groups

zeroed = copy.deepcopy(yolo)
zero_channel_groups(zeroed, plan)
with torch.no_grad():
    for got, expected in zip(slim(frame), zeroed(frame)):
        print(tuple(got.shape), "same as the zeroed original:",
              torch.allclose(got, expected, rtol=1e-4, atol=1e-5))
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)

# %% [markdown]
# And the time of one forward pass on the CPU, at YOLO's usual input size of
# 640×640, in eval mode without gradients (the median of 10 runs; this cell's
# numbers depend on the machine that built the page). Fewer multiply-adds need
# not take proportionally less time: channel counts that are no multiple of 8
# run less efficiently, so measure on the hardware you deploy to:

# %% tags=["measured"]
from tutorials_pkg.measure import median_seconds_each

large = torch.randn(1, 3, 640, 640)
with torch.no_grad():
    times = median_seconds_each([lambda: yolo(large), lambda: slim(large)], repeats=10)
print(f"before {times[0] * 1e3:.0f} ms, after {times[1] * 1e3:.0f} ms")

# %% [markdown]
# Which channels to drop (the ones with the smallest scales, or the least
# effect on the loss) is the pruning method's choice; which layers must drop
# them together is what the graph says. After pruning, the network is
# fine-tuned to win back what the channels held.
