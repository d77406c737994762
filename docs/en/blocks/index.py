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
# # Building U-Net and MobileNet from blocks
#
# Large networks are written as a few small blocks, each an `nn.Module` of a
# handful of layers, and a model class that wires the blocks together. This
# page builds two well-known networks that way: U-Net, whose blocks are joined
# by skip connections, and MobileNet, whose dozens of layers come from a loop
# over a config table. Both are checked against outside figures: the
# parameter counts of a widely used U-Net implementation, the tables of the
# MobileNet paper, and torchvision's own MobileNet v2.
#
# Every output on this page was produced by running the code when the site was
# built, on the versions printed below.

# %%
import torch

from tutorials_pkg.runtime import default_device, describe_runtime

torch.manual_seed(0)  # the random weights and inputs below
print(describe_runtime())
device = default_device()

# %% [markdown]
# ## U-Net
#
# U-Net (Ronneberger et al., 2015) labels every pixel of an image. An encoder
# halves the height and width four times while it doubles the channels; a
# decoder doubles the size back four times, and at each size it concatenates
# the encoder's map of the same size (the *skip connection*), which brings back
# the detail that the pooling lost. A 1×1 convolution at the end gives one
# score per class and pixel. Drawn with the channel counts of
# `UNet(bilinear=False)` and the height of each stage's output (the width
# follows the same rule):
#
# ```mermaid
# block-beta
#     columns 4
#     inc["inc: DoubleConv 3→64, H"] space u4["up4: Up 128→64, H"] outc["outc: OutConv 64→n_classes, H"]
#     space:4
#     d1["down1: Down 64→128, H/2"] space u3["up3: Up 256→128, H/2"] space
#     space:4
#     d2["down2: Down 128→256, H/4"] space u2["up2: Up 512→256, H/4"] space
#     space:4
#     d3["down3: Down 256→512, H/8"] space u1["up1: Up 1024→512, H/8"] space
#     space:4
#     space d4["down4: Down 512→1024, H/16"] space:2
#     inc --> d1
#     d1 --> d2
#     d2 --> d3
#     d3 --> d4
#     d4 --> u1
#     u1 --> u2
#     u2 --> u3
#     u3 --> u4
#     u4 --> outc
#     inc -- "skip (concatenate)" --> u4
#     d1 -- "skip" --> u3
#     d2 -- "skip" --> u2
#     d3 -- "skip" --> u1
# ```
#
# The layout and channel counts are those of
# [milesial/Pytorch-UNet](https://github.com/milesial/Pytorch-UNet), a widely
# used PyTorch implementation, so our parameter counts can be checked against
# its figures below.

# %% [markdown]
# ### The four blocks
#
# `DoubleConv` is two 3×3 convolutions, each followed by batch norm and ReLU;
# padding 1 keeps the height and width. `Down` is a 2×2 max pooling (which
# rounds an odd size down) and a `DoubleConv`. `OutConv` is the 1×1 head.
# `Up` doubles the size, either with bilinear interpolation (no parameters) or
# with a learned 2×2 transposed convolution, then **pads** the result to the
# size of the skip connection before concatenating: after an odd size was
# rounded down on the way in, doubling does not give it back, and `F.pad`
# adds the missing row or column.
#
# ### The assembled model
#
# `UNet` creates the blocks with their channel counts and wires them in
# `forward`: the encoder's outputs `x1` … `x4` are kept and handed to the
# decoder blocks. With bilinear upsampling the upsampling step cannot halve
# the channels, so the deepest blocks are built half as wide (`factor`).
# `forward` first checks the input and raises a `ValueError` that says what
# size or channel count is needed, before any layer runs. The source below
# holds the four blocks and the model, with the imports they need. (`UNet`
# also refuses `n_channels` or `n_classes` below 1 when it is built, with a
# `ValueError`, instead of a model that fails later or returns no classes.)

# %%
from tutorials_pkg.blocks.unet import UNet
from tutorials_pkg.source import show_source

show_source(UNet)

# %% [markdown]
# ### Parameter counts, checked against milesial/Pytorch-UNet
#
# For three input channels and two classes, milesial/Pytorch-UNet's model has
# 31,037,698 parameters with transposed convolutions and 17,263,042 with
# bilinear upsampling. Ours has the same:

# %%
from tutorials_pkg.definition import count_parameters

unet = UNet(n_channels=3, n_classes=2, bilinear=False)
unet_bilinear = UNet(n_channels=3, n_classes=2, bilinear=True)
print(f"transposed convolution: {count_parameters(unet):,}")
print(f"bilinear upsampling:    {count_parameters(unet_bilinear):,}")
assert count_parameters(unet) == 31_037_698
assert count_parameters(unet_bilinear) == 17_263_042

# %% [markdown]
# ### Skip connections concatenate
#
# U-Net's skip connections *concatenate* the encoder's map with the decoder's;
# they do not add them. Adding a block's input to its output is the *residual*
# connection of ResNet (He et al., 2015), whose paper introduced it against the
# degradation problem (deeper plain networks training to a higher error); a
# tutorial that credits U-Net with it mixes up the two. The channel counts
# show the concatenation: `up4`'s first convolution takes 128 channels, the 64
# of the skip connection from `inc` and the 64 of the upsampled map. An
# addition would have left 64.

# %%
first_conv = unet.up4.conv.double_conv[0]
print("up4 takes", first_conv.in_channels, "channels:",
      unet.inc.double_conv[3].out_channels, "(skip) +", unet.up4.up.out_channels, "(upsampled)")
assert first_conv.in_channels == unet.inc.double_conv[3].out_channels + unet.up4.up.out_channels

# %% [markdown]
# ### Every stage's output shape
#
# torchinfo's `summary` runs one input through the model and records what
# every submodule returns (with forward hooks that it removes afterwards);
# `depth=1` keeps the model's direct children, the stages. A 65×65 image shows
# the rounding: the encoder goes 65 → 32 → 16 → 8 → 4, the decoder doubles
# back to 8, 16, 32 and 64, and `up4` pads 64 to the skip connection's 65.
# torchinfo's parameter total is a third count that agrees.

# %%
from torchinfo import summary

unet = unet.eval().to(device)
stats = summary(unet, input_size=(1, 3, 65, 65), depth=1, device=device, mode="eval",
                col_names=("output_size", "num_params"), row_settings=("var_names",), verbose=0)
print(stats)
stages = [row for row in stats.summary_list if row.depth == 1]
assert [row.output_size[-1] for row in stages] == [65, 32, 16, 8, 4, 8, 16, 32, 65, 65]
assert stats.total_params == 31_037_698

# %% [markdown]
# ### Any size from 16 up, odd or even
#
# Both kinds of upsampling give an output of the input's height and width:

# %%
unet_bilinear = unet_bilinear.eval().to(device)
with torch.no_grad():
    for size in [(16, 16), (17, 31), (33, 20)]:
        x = torch.randn(1, 3, *size, device=device)
        print(size, "->", unet(x).shape, unet_bilinear(x).shape)
        assert unet(x).shape[2:] == unet_bilinear(x).shape[2:] == size

# %% [markdown]
# Four halvings need at least 16 pixels on each side. A smaller input gets a
# `ValueError` that names the size needed, instead of a failure deep inside a
# pooling layer (an input with the wrong number of channels gets one too):

# %% tags=["raises-exception"] raises="ValueError"
unet(torch.randn(1, 3, 15, 40, device=device))

# %% [markdown]
# ## MobileNet
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
#
# ### MobileNet v1, written out by hand
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
# ### MobileNet v1 from a config table
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
# change, as `UNet` does. A `num_classes` below 1 is refused when the model
# is built.

# %% tags=["raises-exception"] raises="ValueError"
MobileNetV1(num_classes=10).train()(torch.randn(1, 3, 32, 32))

# %% [markdown]
# ### The two versions are the same network
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
# ### Checked against the MobileNet paper
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
# ### MobileNet v2 with torchvision's names
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

# %% [markdown]
# ## What goes wrong in the wild
#
# ### A U-Net without size alignment fails on odd sizes
#
# A widely read U-Net tutorial computes the padding, but assigns it to a new
# name (`X1 = F.pad(x1, ...)`) and then concatenates the unpadded `x1`: the
# padding is thrown away, and the block concatenates the upsampled map and the
# skip connection as they are. That works while every size on the way down
# is even, which is why the mistake survives testing on 64×64 or 256×256
# images. `UpWithoutAlignment` is `Up` with that mistake, and
# `UNetWithoutAlignment` a `UNet` built from it:

# %%
from tutorials_pkg.blocks.unet import UNetWithoutAlignment, UpWithoutAlignment

SourceBlock(inspect.getsource(UpWithoutAlignment))

# %%
unaligned = UNetWithoutAlignment(bilinear=True).eval()
with torch.no_grad():
    print(unaligned(torch.randn(1, 3, 64, 64)).shape)

# %% [markdown]
# On a 65×65 image the encoder rounds 65 down to 32, the decoder doubles it to
# 64, and `torch.cat` refuses to join 64 rows to 65 with a `RuntimeError`:

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.no_grad():
    unaligned(torch.randn(1, 3, 65, 65))

# %% [markdown]
# `Up` assigns the padded map back to `x` and concatenates that: `UNet`, with
# the same weights, handles 65×65:

# %%
aligned = UNet(bilinear=True).eval()
aligned.load_state_dict(unaligned.state_dict())
with torch.no_grad():
    print(aligned(torch.randn(1, 3, 65, 65)).shape)

# %% [markdown]
# The same tutorial reads the sizes with `x1.size[2]`. `size` is a method, and
# indexing a method raises a `TypeError`:

# %% tags=["raises-exception"] raises="TypeError"
x1 = torch.randn(1, 64, 33, 33)
x1.size[2]

# %% [markdown]
# Call it, `x1.size(2)`, as `Up` does, or index the shape, `x1.shape[2]`:

# %%
print(x1.size(2), x1.shape[2])

# %% [markdown]
# ### A depthwise convolution without `groups`
#
# Leave out `groups=in_channels` and the layer still runs and gives the same
# output shape, so nothing complains; but every output channel now looks at
# every input channel, and the layer has `in_channels` times the parameters
# (and multiply-adds):

# %%
from torch import nn

depthwise = nn.Conv2d(512, 512, kernel_size=3, padding=1, groups=512, bias=False)
no_groups = nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=False)
x512 = torch.randn(1, 512, 14, 14)
assert depthwise(x512).shape == no_groups(x512).shape  # both run, same output shape
print(f"with groups=512: {count_parameters(depthwise):,}, without: {count_parameters(no_groups):,}")
assert count_parameters(no_groups) == 512 * count_parameters(depthwise)

# %% [markdown]
# Over the whole of MobileNet v1 the mistake costs about seven times the
# parameters and eight and a half times the multiply-adds, about what the paper reports
# for a MobileNet made of full convolutions (Table 4: 29.3 M parameters and
# 4866 M multiply-adds), which defeats the point of the design:

# %%
dense = MobileNetV1().eval()
for block in list(dense.features)[1:]:  # every DepthwiseSeparableConv
    c = block.depthwise[0]
    block.depthwise[0] = nn.Conv2d(c.in_channels, c.in_channels, 3, c.stride, 1, bias=False)
x = torch.randn(1, 3, 224, 224)
params, macs = count_parameters(dense), count_macs(dense, x)
print(f"{params:,} parameters ({params / count_parameters(loop):.1f} times), "
      f"{macs / 1e6:.0f} M mult-adds ({macs / count_macs(loop, x):.1f} times)")
assert params > 6 * count_parameters(loop) and macs > 8 * count_macs(loop, x)

# %% [markdown]
# ### A residual added where the shapes differ
#
# A residual connection adds a block's input to its output, so both must have
# the same shape. An inverted residual block with stride 2 halves the height
# and width (and here also changes 16 channels to 24):

# %%
v2 = MobileNetV2().eval()
block = v2.features[2]
x16 = torch.randn(1, 16, 56, 56)
print("use_res_connect:", block.use_res_connect)
print(tuple(x16.shape), "->", tuple(block.conv(x16).shape))

# %% [markdown]
# Adding the input anyway fails with a `RuntimeError`: 56 columns cannot be
# added to 28.

# %% tags=["raises-exception"] raises="RuntimeError"
x16 + block.conv(x16)

# %% [markdown]
# At stride 1 the size is kept, but the first block changes 32 channels to 16,
# and the add fails with a `RuntimeError` again, now in the channel dimension:

# %% tags=["raises-exception"] raises="RuntimeError"
x32 = torch.randn(1, 32, 56, 56)
x32 + v2.features[1].conv(x32)

# %% [markdown]
# The fix is what `InvertedResidual` does: decide once, in `__init__`, whether
# the shapes match (`use_res_connect`), and add only then. In MobileNet v2 that
# is 10 of the 17 blocks, the same ones as in torchvision:

# %%
flags = [b.use_res_connect for b in v2.features[1:-1]]
print(sum(flags), "of", len(flags), "blocks add their input")
assert flags == [b.use_res_connect for b in theirs.features[1:-1]]
print(block(x16).shape)

# %% [markdown]
# ### Building the list of layers with `+=`
#
# A loop that builds the layers usually collects them in a list first. `+=`
# on a list *extends* it with the items of what is on the right, so a layer
# on its own fails with a `TypeError`: an `nn.Conv2d` is not a sequence of
# items.

# %% tags=["raises-exception"] raises="TypeError"
from collections import OrderedDict

from tutorials_pkg.blocks.mobilenet import BasicConv2d, DepthwiseSeparableConv

layers = []
layers += nn.Conv2d(3, 32, 3, stride=2, padding=1)

# %% [markdown]
# A container is iterable, though, so the same line with a `BasicConv2d` (an
# `nn.Sequential`) raises nothing: it splices in the three layers inside it,
# and they lose the block they belonged to.

# %%
layers = []
layers += BasicConv2d(3, 32, 3, stride=2)
print([type(item).__name__ for item in layers])
assert len(layers) == 3

# %% [markdown]
# A `(name, module)` pair on the right is a sequence of two items, so `+=`
# quietly adds the name and the module as two separate items; only building
# the `OrderedDict` from the list fails, with a `ValueError` (the string
# `"stem"` is taken as a pair, and it has four characters):

# %% tags=["raises-exception"] raises="ValueError"
layers = []
layers += ("stem", BasicConv2d(3, 32, 3, stride=2))
print([type(item).__name__ for item in layers])
nn.Sequential(OrderedDict(layers))

# %% [markdown]
# Add one item, the pair, with `append` (as `MobileNetV1` does), or with
# `+=` and a list around it:

# %%
layers = []
layers.append(("stem", BasicConv2d(3, 32, 3, stride=2)))
layers += [("block1", DepthwiseSeparableConv(32, 64, 1))]
print(list(nn.Sequential(OrderedDict(layers))._modules))

# %% [markdown]
# ### A MobileNet v1 "refactored" into a loop is another network, and neither fits 224×224
#
# A widely read post builds MobileNet v1 twice for CIFAR-style training: first
# written out layer by layer, then "refactored" into a loop over a config list
# in which a plain number means stride 1 and a tuple gives the stride. Both end
# as code for 32×32 images often does: a fixed `F.avg_pool2d(x, 2)`, then
# `nn.Linear(1024, num_classes)`, which fits only the one map size the author
# had in mind. Our reconstruction of the two, with the blocks of this page:

# %%
from tutorials_pkg.blocks.mobilenet import (
    MobileNetV1WithFixedPool,
    MobileNetV1WithFixedPoolAndLastStride1,
)

SourceBlock(inspect.getsource(MobileNetV1WithFixedPool) + "\n\n"
            + inspect.getsource(MobileNetV1WithFixedPoolAndLastStride1))

# %% [markdown]
# The hand-written version gives the last block stride 2, as the misprinted
# row of the paper's Table 1 does; the config list gives it stride 1. On a
# 96×96 image both run, and the usual quick checks pass: the weights of one
# load into the other with `strict=True` (shapes do not depend on a stride),
# the outputs have the same shape, and they even agree to within 1e-9,
# because the output of a fresh model is little more than its classifier's
# bias:

# %%
hand = MobileNetV1WithFixedPool().eval()
refactored = MobileNetV1WithFixedPoolAndLastStride1().eval()
refactored.load_state_dict(hand.state_dict(), strict=True)
x96 = torch.randn(2, 3, 96, 96)
with torch.no_grad():
    difference = (hand(x96) - refactored(x96)).abs().max().item()
    print(hand(x96).shape, refactored(x96).shape, f"largest difference: {difference:.1e}")
assert difference < 1e-9

# %% [markdown]
# `assert_same_network` finds the difference at the layer where it is: the
# depthwise convolution of the last block, stride 2 in one, 1 in the other
# (an `AssertionError`):

# %% tags=["raises-exception"] raises="AssertionError"
assert_same_network(hand, refactored, x96)

# %% [markdown]
# At 224×224, the size MobileNet is made for, both fail at the last layer with
# a `RuntimeError` from the classifier's matrix multiply. The hand-written
# version, with six stride-2 layers, ends at 4×4; pooled 2×2, that is
# 1024 × 2 × 2 = 4,096 features:

# %% tags=["raises-exception"] raises="RuntimeError"
x224 = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    hand(x224)

# %% [markdown]
# The loop version, with five, ends at 7×7; pooled with a 2×2 window and
# stride 2, that is 3×3 and 1024 × 3 × 3 = 9,216 features (the `RuntimeError`
# again):

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.no_grad():
    refactored(x224)

# %% [markdown]
# Where the feature counts come from, and which input sizes each version
# takes at all: `F.avg_pool2d(x, 2)` halves the last map, rounding down, and
# the classifier gets its 1,024 features only when that leaves 1×1, that is
# from a last map of 2×2 or 3×3 (a 1×1 map cannot be pooled at all). The
# hand-written version takes 65 to 192 pixels, the loop version 33 to 96:

# %%
import torch.nn.functional as F

sizes = (32, 33, 64, 65, 96, 97, 192, 193, 224)
with torch.no_grad():
    for model in (hand, refactored):
        pooled = F.avg_pool2d(model.features(x224), 2)
        last = {size: model.features(torch.zeros(1, 3, size, size)).shape[-1] for size in sizes}
        print(f"{type(model).__name__}: 224 -> {model.features(x224).shape[-1]} -> pooled "
              f"{pooled.shape[-1]}: {pooled.flatten(1).shape[1]:,} features")
        print(f"  last map side, by input size: {last}")
        print(f"  sizes that fit: {[size for size in sizes if last[size] in (2, 3)]}")
assert F.avg_pool2d(hand.features(x224), 2).flatten(1).shape[1] == 4 * 1024
assert F.avg_pool2d(refactored.features(x224), 2).flatten(1).shape[1] == 9 * 1024

# %% [markdown]
# The fix is `MobileNetV1` above: one config table, so there is no second
# version to keep in step (and the written-out one is checked against it with
# `assert_same_network`); the last stride as the paper's sizes give it (1);
# and `nn.AdaptiveAvgPool2d(1)`, which pools any map to 1×1, so the classifier
# gets its 1,024 features at any input size:

# %%
fixed = MobileNetV1(num_classes=10).eval()
with torch.no_grad():
    print([tuple(fixed(torch.randn(1, 3, size, size)).shape) for size in (96, 224, 320)])
