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
# must be pruned together. The network and input are the
# [first page's](../#from-nodes-back-to-modules):

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
# finds these groups from the graph: going from input to output, a conv or
# linear layer starts new channels, and an element-wise operation (an add, an
# activation, pooling, a BatchNorm, a depthwise conv) joins the channels of its
# inputs into one group.

# %%
from tutorials_pkg.grad_fn import coupled_channel_groups

show_source(coupled_channel_groups)

# %%
for group in coupled_channel_groups(trace):
    print(group)

# %% [markdown]
# The first group is the residual stream of the first block (the first `+`
# in the [graph](../drawing/#the-graph-of-tiny_resnet)): the stem conv,
# its BatchNorm, and the block's `conv2` with its BatchNorm all write into the
# same 8 channels.
#
# ## ResNet-18's `layer1`
#
# ResNet-18's `layer1` is the same thing at full size: the
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
# Prune one convolution of the group on its own (here `layer1.0.conv2` and its
# BatchNorm lose channel 0) and the shapes no longer meet at the add, which
# fails with a `RuntimeError`:

# %% tags=["raises-exception"] raises="RuntimeError"
from tutorials_pkg.grad_fn import ChannelGroup, prune_channel_group

alone = ChannelGroup(["layer1.0.conv2", "layer1.0.bn2"], [])
prune_channel_group(resnet, alone, drop=[0])
resnet(image)

# %% [markdown]
# ## Pruning the whole group
#
# Pruning the whole group, every layer that writes the channel and every layer
# that reads it, gives a smaller network that runs:

# %%
show_source(prune_channel_group)

# %%
resnet = torchvision.models.resnet18(weights=None).to(device).eval()
before = sum(p.numel() for p in resnet.parameters())
prune_channel_group(resnet, stream, drop=list(range(16)))  # 64 -> 48 channels
after = sum(p.numel() for p in resnet.parameters())
print(resnet(image).shape, f"parameters {before:,} -> {after:,}")
assert resnet.layer1[1].conv2.out_channels == 48
assert resnet.layer2[0].conv1.in_channels == 48

# %% [markdown]
# Which channels to drop (the ones with the smallest weights, or the least
# effect on the loss) is the pruning method's choice; which layers must drop
# them together is what the graph says.
