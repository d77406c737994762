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
# # MobileNet v1 and v2
#
# The second page of [Building U-Net and MobileNet from blocks](../), after
# [U-Net](../): a network whose dozens of layers come from a loop over a config
# table, checked against the MobileNet paper and torchvision's MobileNet v2.
#
# MobileNet (Howard et al., 2017, "MobileNets: Efficient Convolutional Neural
# Networks for Mobile Vision Applications") replaces every 3×3 convolution
# but the first by a *depthwise separable* one: a 3×3 **depthwise** convolution that filters each
# channel on its own (`groups=in_channels`, one 3×3 filter per channel), then a
# 1×1 **pointwise** convolution that mixes the channels. Both are a
# `BasicConv2d`: convolution, batch norm, activation. `BasicConv2d` is an
# `nn.Sequential` subclass, like torchvision's `Conv2dNormActivation`, so its
# layers are named `0`, `1`, `2`; `DepthwiseSeparableConv` names its two
# halves with an `OrderedDict`, so a layer's weight is called, for example,
# `features.block2.depthwise.0.weight`. Their source comes with the
# MobileNet v1 below.

# %%
import torch

from tutorials_pkg.definition import count_parameters
from tutorials_pkg.runtime import default_device
from tutorials_pkg.source import show_source

torch.manual_seed(0)  # the random weights and inputs below
device = default_device()

# %% [markdown]
# ## MobileNet v1, written out by hand
#
# Table 1 of the paper lists a 3×3 stride-2 convolution with 32 channels and
# then 13 depthwise separable layers. Written out one line per layer (the
# class alone, shown with `inspect.getsource`: it is here to be compared, not
# copied):

# %%
import inspect

from tutorials_pkg.blocks.mobilenet import MobileNetV1Flat
from tutorials_pkg.source import SourceBlock

SourceBlock(inspect.getsource(MobileNetV1Flat))

# %% [markdown]
# ## MobileNet v1 from a config table
#
# The 13 lines differ only in two numbers, the output channels and the stride.
# Put those in a table and let a loop create the layers, named as before
# through an `OrderedDict`. The loop also makes a width multiplier (the
# paper's α) a one-line change. This is the version to copy: its source below
# comes with the blocks and the imports. Table 1 of the paper prints stride 2
# for the last depthwise row while its own size column stays 7×7; the config
# follows the sizes (stride 1), as was pointed out in
# [tensorflow/models#1997](https://github.com/tensorflow/models/issues/1997),
# and the multiply-add count below matches the paper's only that way.

# %%
from tutorials_pkg.blocks.mobilenet import MobileNetV1

show_source(MobileNetV1)

# %% [markdown]
# Batch norm in training mode needs more than one value per channel, and five
# stride-2 layers take an image of 32×32 or less to 1×1. So a batch of one
# such image would stop in the first batch norm that sees the 1×1 map, with
# torch's own message; `check_training_batch` (which `MobileNetV2` calls too)
# stops it before any layer runs, with a `ValueError` that says what to
# change. A `num_classes` below 1 is refused when the model is built.

# %% tags=["raises-exception"] raises="ValueError"
MobileNetV1(num_classes=10).train()(torch.randn(1, 3, 32, 32))

# %% [markdown]
# ## The two versions are the same network
#
# `assert_same_network` checks three things and stops at the first
# difference. The same layers: every submodule's name, type and settings
# (what `print(model)` shows, strides included), in order. The same weights'
# names and shapes: one model's `state_dict` loads into the other with
# `strict=True`. And the same output, from every layer, on the same input,
# recorded with forward hooks. Every layer's, not only the last one's: a
# freshly built MobileNet in eval mode has batch-norm statistics still at
# their initial mean 0 and variance 1, and with PyTorch's default weights the
# activations shrink layer after layer, so the final output is the
# classifier's bias give or take 1e-10, whatever came before it.

# %%
from tutorials_pkg.blocks.mobilenet import assert_same_network

show_source(assert_same_network)

# %%
loop, flat = MobileNetV1().eval(), MobileNetV1Flat().eval()
x = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    out = loop(x)
print(f"output minus the classifier's bias: at most {(out[0] - loop.classifier.bias).abs().max().item():.1e}")
assert_same_network(loop, flat, x)
print(f"same network; parameters: loop {count_parameters(loop):,}, flat {count_parameters(flat):,}")
assert count_parameters(loop) == count_parameters(flat)

# %% [markdown]
# ## Checked against the MobileNet paper
#
# `count_macs` counts the multiply-adds of one forward pass with
# `torch.utils.flop_counter.FlopCounterMode`, which counts two floating-point
# operations (a multiply and an add) per multiply-add:

# %%
from tutorials_pkg.blocks.mobilenet import count_macs

show_source(count_macs)

# %% [markdown]
# The paper gives 4.2 million parameters and 569 million multiply-adds at
# 224×224 (Table 1's network; Tables 6 and 7 for the width multipliers and a
# smaller input):

# %%
paper = {  # (width_mult, input size): (million mult-adds, million parameters)
    (1.0, 224): (569, 4.2), (0.75, 224): (325, 2.6), (0.5, 224): (149, 1.3),
    (0.25, 224): (41, 0.5), (1.0, 192): (418, 4.2),
}
for (width_mult, size), figures in paper.items():
    model = MobileNetV1(width_mult=width_mult).eval()
    macs = count_macs(model, torch.randn(1, 3, size, size)) / 1e6
    params = count_parameters(model) / 1e6
    print(f"alpha {width_mult}, {size}x{size}: {macs:.1f} M mult-adds, {params:.2f} M parameters;"
          f" paper: {figures[0]} M, {figures[1]} M")
    assert (round(macs), round(params, 1)) == figures
assert count_parameters(loop) == 4_231_976

# %% [markdown]
# ## MobileNet v2 with torchvision's names
#
# MobileNet v2 (Sandler et al., 2018) is built from the same `BasicConv2d`,
# here with ReLU6. Its block, the *inverted residual*, widens the channels
# with a 1×1 convolution, filters with a depthwise 3×3, and projects back with
# a 1×1 convolution that has no activation. It adds its input to the output
# only where the two have the same shape: stride 1 and the same channel count.
# The modules are named as in `torchvision.models.mobilenet_v2`: a positional
# `nn.Sequential` called `features`, each block's layers in `conv`, and a
# `classifier` of dropout and a linear layer.

# %%
from tutorials_pkg.blocks.mobilenet import MobileNetV2

show_source(MobileNetV2)

# %% [markdown]
# The `state_dict` keys are torchvision's, so weights move both ways with
# `strict=True`, and on the same input the two models compute the same
# features (the classifier's input) and the same output, bit for bit. The
# features are compared too because, as above, the output of a fresh model
# says little on its own:

# %%
import torchvision

ours = MobileNetV2().eval().to(device)
theirs = torchvision.models.mobilenet_v2(weights=None).eval().to(device)
print(list(ours.state_dict())[:5])
x = torch.randn(2, 3, 224, 224, device=device)
theirs.load_state_dict(ours.state_dict(), strict=True)  # ours -> torchvision
with torch.no_grad():
    assert torch.equal(ours.features(x), theirs.features(x)) and torch.equal(ours(x), theirs(x))
other = torchvision.models.mobilenet_v2(weights=None).eval().to(device)
ours.load_state_dict(other.state_dict(), strict=True)  # torchvision -> ours
with torch.no_grad():
    assert torch.equal(ours.features(x), other.features(x)) and torch.equal(ours(x), other(x))
print("same features and output both ways")

# %% [markdown]
# The size checks: torchvision records 3,504,872 parameters and 0.301 G
# operations for this model in its weights metadata (which needs no
# download), and the MobileNet v2 paper gives 300 million multiply-adds at
# 224×224. torchvision's documentation heads that column "GFLOPS", but its
# 0.301 G are multiply-adds too: counted as floating-point operations, each
# multiply-add is two (a multiply and an add), which is what
# `FlopCounterMode` reports (its formula for a convolution ends in `* 2`),
# 0.602 G here; `count_macs` halves it.

# %%
from torch.utils.flop_counter import FlopCounterMode

meta = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta
x1 = torch.randn(1, 3, 224, 224, device=device)
macs = count_macs(ours, x1)
counter = FlopCounterMode(display=False)
with counter, torch.no_grad():
    ours(x1)
print(f"parameters: {count_parameters(ours):,} (torchvision: {meta['num_params']:,})")
print(f"mult-adds:  {macs / 1e6:.1f} M (torchvision: {meta['_ops']} G, paper: 300 M)")
print(f"FLOPs:      {counter.get_total_flops() / 1e9:.3f} G, two per mult-add")
assert count_parameters(ours) == count_parameters(theirs) == meta["num_params"] == 3_504_872
assert round(macs / 1e9, 3) == meta["_ops"] and abs(macs / 300e6 - 1) < 0.01
assert counter.get_total_flops() == 2 * macs
