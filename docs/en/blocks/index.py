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
# chapter builds two well-known networks that way: U-Net, whose blocks are
# joined by skip connections, and MobileNet, whose dozens of layers come from
# a loop over a config table. Both are checked against outside figures: the
# parameter counts of a widely used U-Net implementation, the tables of the
# MobileNet paper, and torchvision's own MobileNet v2. Its pages:
#
# - U-Net, on this page: four blocks and the model that wires them, any input
#   size from 16 up, odd or even.
# - [MobileNet v1 and v2](mobilenet/): v1 written out by hand and from a config
#   table, checked against the paper; v2 with torchvision's names and weights.
# - [Blocks: what goes wrong in the wild](in_the_wild/): mistakes from widely
#   read U-Net and MobileNet code, each failing, then fixed.
#
# Every output in this chapter was produced by running the code when the site
# was built, on the versions printed below.

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
# Before any layer runs, `forward` passes the input through
# `check_unet_input`, which returns it unchanged when it fits and raises a
# `ValueError` that says what size or channel count is needed when it does
# not. The check is a function decorated with `torch.fx.wrap` rather than
# `if`s in `forward`: `torch.fx` (behind torchvision's
# `create_feature_extractor`) traces `forward` with placeholder values whose
# sizes are unknown, and an `if` on a size would stop the trace; a wrapped
# function is recorded as one call and runs for real on real inputs. The
# source below holds the four blocks, the check and the model, with the
# imports they need. (`UNet` also refuses `n_channels` or `n_classes` below 1
# when it is built, with a `ValueError`: with 0, torch would build the model
# and fail only when it runs, with a message about a weight of size 0.)

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
# In training mode, batch norm needs more than one value per channel. A batch
# of one image smaller than 32 on both sides leaves a 1×1 map at the bottom of
# the U, and torch's `BatchNorm2d` says so itself, with a `ValueError`:

# %% tags=["raises-exception"] raises="ValueError"
unet_bilinear.train()(torch.randn(1, 3, 16, 16, device=device))

# %% [markdown]
# A batch of two runs in training mode, and the one image in evaluation mode:

# %%
print(unet_bilinear(torch.randn(2, 3, 16, 16, device=device)).shape)
with torch.no_grad():
    print(unet_bilinear.eval()(torch.randn(1, 3, 16, 16, device=device)).shape)

# %% [markdown]
# ### Intermediate outputs with `create_feature_extractor`
#
# Because the input check is one recorded call, torch.fx traces the whole
# model: `get_graph_node_names` lists every node (the check is the second,
# after the input), and `create_feature_extractor` returns the outputs of the
# stages asked for, here the bottom of the U and the last layer, which equals
# the model's output.

# %%
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

train_nodes, eval_nodes = get_graph_node_names(unet_bilinear)
print(len(eval_nodes), "nodes:", eval_nodes[:3], "...", eval_nodes[-2:])
extractor = create_feature_extractor(unet_bilinear, {"down4": "bottom", "outc": "out"})
x = torch.randn(1, 3, 33, 20, device=device)
with torch.no_grad():
    features = extractor(x)
    print({name: tuple(t.shape) for name, t in features.items()})
    assert eval_nodes[1] == "check_unet_input"
    assert torch.equal(features["out"], unet_bilinear(x))

# %% [markdown]
# A graph of the first layers only still holds the check, because their input
# is its result, so a small input gets the same `ValueError` there:

# %% tags=["raises-exception"] raises="ValueError"
early = create_feature_extractor(unet_bilinear, ["down2"])
early(torch.randn(1, 3, 8, 8, device=device))
