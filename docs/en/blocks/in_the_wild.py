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
# # Blocks: what goes wrong in the wild
#
# The last page of [Building U-Net and MobileNet from blocks](../), after
# [MobileNet v1 and v2](../mobilenet/): mistakes from widely read U-Net and
# MobileNet code, rebuilt from the chapter's blocks, each shown failing (or
# silently wrong), then fixed.

# %%
import inspect

import torch
import torchvision

from tutorials_pkg.blocks.mobilenet import MobileNetV1, MobileNetV2, assert_same_network, count_macs
from tutorials_pkg.blocks.unet import UNet
from tutorials_pkg.definition import count_parameters
from tutorials_pkg.source import SourceBlock

torch.manual_seed(0)  # the random weights and inputs below
loop = MobileNetV1().eval()  # the config-table MobileNet v1, to compare with
theirs = torchvision.models.mobilenet_v2(weights=None).eval()  # torchvision's, to compare with

# %% [markdown]
# ## A U-Net without size alignment fails on odd sizes
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
# [`Up`](../#the-assembled-model) assigns the padded map back to `x` and
# concatenates that: `UNet`, with
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
# ## A misspelt class in `super(...)`
#
# The same tutorial calls the older two-argument form,
# `super(DoubleConv, self).__init__()`, and misspells the class twice:
# `super(DoubleCov, self)` in `DoubleConv` and `super(Unet, self)` in `UNet`.
# The `class` statements run without complaint, so the file imports; the name
# is looked up only when `__init__` runs:

# %%
from torch import nn


class DoubleConv(nn.Module):  # as printed, cut to one convolution
    def __init__(self, in_channels, out_channels):
        super(DoubleCov, self).__init__()  # misspelt: DoubleCov
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x):
        return self.conv(x)


class UNet(nn.Module):  # as printed, cut to its first block
    def __init__(self, n_channels=3):
        super(Unet, self).__init__()  # misspelt: Unet
        self.inc = DoubleConv(n_channels, 64)

    def forward(self, x):
        return self.inc(x)


print("both classes are defined:", DoubleConv.__name__, UNet.__name__)

# %% [markdown]
# Building the block raises a `NameError`:

# %% tags=["raises-exception"] raises="NameError"
DoubleConv(3, 64)

# %% [markdown]
# and so does building the model, for `Unet` (a `NameError` again):

# %% tags=["raises-exception"] raises="NameError"
UNet()

# %% [markdown]
# `super().__init__()` with no arguments, as every block of this chapter
# writes it, names no class: there is nothing to misspell, and it stays right
# when the class is renamed. The chapter's `DoubleConv` and `UNet` build:

# %%
from tutorials_pkg.blocks.unet import DoubleConv, UNet

print(DoubleConv(3, 64).double_conv[0], type(UNet().inc).__name__)

# %% [markdown]
# ## A depthwise convolution without `groups`
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
# ## A residual added where the shapes differ
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
# ## Building the list of layers with `+=`
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
# ## A MobileNet v1 "refactored" into a loop is another network, and neither fits 224×224
#
# A widely read post builds MobileNet v1 twice: first written out layer by
# layer, then "refactored" into a loop over a config list in which a plain
# number means stride 1 and a tuple gives the stride. Its comments say what
# the author had in mind: an input of 224 × 224 × 3, 1,000 classes, and a last
# map of 7 × 7 × 1024 that `F.avg_pool2d(x, 2)` turns into 1 × 1 × 1024 for
# `nn.Linear(1024, num_classes)`. A 2×2 window with stride 2 does not do that:
# it takes 7×7 to 3×3, so the map the author had in mind does not fit the
# classifier. Our reconstruction of the two, with the blocks of the
# [MobileNet page](../mobilenet/) and the post's comments:

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
# At 224×224, the size the post states, both fail at the last layer with a
# `RuntimeError` from the classifier's matrix multiply. The hand-written
# version, with six stride-2 layers, does not even reach 7×7: it ends at 4×4;
# pooled 2×2, that is 1024 × 2 × 2 = 4,096 features:

# %% tags=["raises-exception"] raises="RuntimeError"
x224 = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    hand(x224)

# %% [markdown]
# The loop version, with five, ends at the 7×7 of the comment; pooled with a
# 2×2 window and stride 2, that is 3×3 and 1024 × 3 × 3 = 9,216 features, not
# 1,024 (the `RuntimeError` again):

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.no_grad():
    refactored(x224)

# %% [markdown]
# Where the feature counts come from, and which input sizes each version
# takes at all: `F.avg_pool2d(x, 2)` halves the last map, rounding down, and
# the classifier gets its 1,024 features only when that leaves 1×1, that is
# from a last map of 2×2 or 3×3 (a 1×1 map cannot be pooled at all). The
# hand-written version takes 65 to 192 pixels, the loop version 33 to 96;
# neither takes 224, nor the 32×32 of CIFAR:

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
# On a 32×32 image both end at a 1×1 map, which a 2×2 window cannot pool:
# `F.avg_pool2d` raises a `RuntimeError` whose calculated output size is
# 1024×0×0, before the classifier is reached:

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.no_grad():
    refactored(torch.randn(1, 3, 32, 32))

# %% [markdown]
# The fix is [`MobileNetV1`](../mobilenet/#mobilenet-v1-from-a-config-table)
# of the MobileNet page: one config table, so there is no second
# version to keep in step (and the written-out one is checked against it with
# `assert_same_network`); the last stride as the paper's sizes give it (1);
# and `nn.AdaptiveAvgPool2d(1)`, which pools any map to 1×1, so the classifier
# gets its 1,024 features at any input size:

# %%
fixed = MobileNetV1(num_classes=10).eval()
with torch.no_grad():
    print([tuple(fixed(torch.randn(1, 3, size, size)).shape) for size in (96, 224, 320)])
