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
# # Extra inputs and outputs
#
# The second page of [Model surgery](../), after the new classifier and the
# frozen backbone: changes to what goes into ResNet-18 and what comes out of
# it, each starting out computing what the model computed before.

# %%
import copy

import torch
import torch.nn.functional as F
from torchvision.models import resnet18

from tutorials_pkg.digits import load_digits_tensors
from tutorials_pkg.source import show_source
from tutorials_pkg.surgery import replace_module

torch.manual_seed(0)
pixels, labels = load_digits_tensors()  # (1797, 1, 8, 8), in [0, 1]
images = F.interpolate(pixels, size=32, mode="bilinear").repeat(1, 3, 1, 1)

# %% [markdown]
# ## A fourth input channel
#
# Images with an extra channel (depth, infrared, a mask) need a first
# convolution that takes four channels. Its weight has the shape
# `(out_channels, in_channels, kH, kW)`; `expand_input_channels` builds the
# wider layer, copies the three RGB slices into it and sets the new slice to
# zero. A zero weight means the new channel adds nothing at first: the model
# computes what it did, and training teaches it to use the channel.

# %%
from tutorials_pkg.surgery import expand_input_channels

show_source(expand_input_channels)

# %%
rgb = resnet18(weights=None).eval()
rgbd = copy.deepcopy(rgb)
replace_module(rgbd, "conv1", expand_input_channels(rgbd.conv1, 4))
print(rgbd.conv1)
assert torch.equal(rgbd.conv1.weight[:, :3], rgb.conv1.weight)

x = images[:4]
zeros = torch.zeros(4, 1, 32, 32)
assert torch.equal(rgbd(torch.cat([x, zeros], dim=1)), rgb(x))
print("same logits with the fourth channel at zero")

# %% [markdown]
# The new layer expects four channels, so three-channel images now fail with a
# `RuntimeError` that gives the shapes:

# %% tags=["raises-exception"] raises="RuntimeError"
rgbd(x)

# %% [markdown]
# ## An extra input
#
# Sometimes a sample comes with more than an image: a scalar such as an age or
# an exposure time, or a short vector of metadata. A simple way in is to join
# it to the image features just before the last layer:
#
# ```mermaid
# flowchart LR
#     img([image]) --> body["body: ResNet up to avgpool"] --> feat["512 features"]
#     extra([extra, k numbers]) --> cat((concat))
#     feat --> cat --> fc["fc: Linear(512 + k, classes)"] --> out([logits])
# ```
#
# `ExtraInputNet` does this. Its new `fc` keeps the old weights for the 512
# features and has zero weights for the extra inputs, so it starts as the
# model it wraps. Without `head=`, it takes the model's last `nn.Linear`,
# found by `last_linear_name`; in torchvision's classification models that is
# the classifier.

# %%
from tutorials_pkg.surgery import ExtraInputNet

show_source(ExtraInputNet)

# %% [markdown]
# The extra number here is how much ink each digit has, one scalar per
# sample. The logits agree with the original model's to float rounding; they
# are not bit-identical because a 513-wide matrix product adds its terms in a
# different order than a 512-wide one.

# %%
base = resnet18(weights=None, num_classes=10).eval()
with_extra = ExtraInputNet(copy.deepcopy(base), extra_features=1).eval()
ink = images[:4].mean(dim=(1, 2, 3))  # shape (4,): one scalar per sample
logits = with_extra(images[:4], ink)
difference = (logits - base(images[:4])).abs().max().item()
print(logits.shape, f"largest difference: {difference:.1e}")
assert difference < 1e-5

# %% [markdown]
# A wrong number of extra values is caught with a `ValueError` that gives the
# shape it needs:

# %% tags=["raises-exception"] raises="ValueError"
with_extra(images[:4], torch.zeros(4, 3))

# %% [markdown]
# The last `nn.Linear` is `fc` in a ResNet, `classifier` in the
# [blocks chapter's](../../blocks/mobilenet/#mobilenet-v1-from-a-config-table)
# `MobileNetV1`, and `classifier.1` (after a dropout) in `MobileNetV2` and
# torchvision's `mobilenet_v2`; so `head="fc"` as a default would fit only
# the first. A `head=` that is not there gets the `KeyError` of
# `replace_module`, with the close names:

# %%
from tutorials_pkg.blocks.mobilenet import MobileNetV1, MobileNetV2
from tutorials_pkg.surgery import last_linear_name

for built in (base, MobileNetV1(), MobileNetV2()):
    print(type(built).__name__, "->", last_linear_name(built))

# %% tags=["raises-exception"] raises="KeyError"
ExtraInputNet(MobileNetV2(), extra_features=1, head="classifier.2")

# %% [markdown]
# ## An extra output
#
# To get the penultimate features next to the logits (for embeddings, a
# second loss, or a nearest-neighbour search), `ExtraOutputNet` runs the model
# unchanged and records what its last layer receives, with a forward
# pre-hook (a function that runs just before the layer's `forward`, given its
# inputs), removed after every call. So the first output is exactly the
# model's, whatever its `forward` does after the last layer (a
# `log_softmax`, a scale), and the model itself is left as it was:

# %%
from tutorials_pkg.surgery import ExtraOutputNet

show_source(ExtraOutputNet)

# %%
two_outputs = ExtraOutputNet(copy.deepcopy(base)).eval()
logits, features = two_outputs(images[:4])
print(logits.shape, features.shape)
assert torch.equal(logits, base(images[:4]))
print(list(two_outputs.state_dict())[:2], "...", list(two_outputs.state_dict())[-2:])
assert list(two_outputs.state_dict()) == ["model." + key for key in base.state_dict()]

# %% [markdown]
# `ExtraInputNet`, on the other hand, takes the model over: its body is the
# model itself, with the last layer replaced. That is why its examples pass
# `copy.deepcopy(base)`;
# [what goes wrong in the wild](../in_the_wild/#an-alias-instead-of-a-copy)
# shows what happens without it. Its
# `state_dict` keys start with `body.` and `fc.`, and those of
# `ExtraOutputNet` with `model.`, so load trained weights into the model first
# and wrap it afterwards.

# %% [markdown]
# ### Hooks run only when a module is called
#
# A hook runs when the module is *called*, `layer(x)`: `nn.Module.__call__`
# runs the hooks around `forward`. Calling `layer.forward(x)` directly runs
# the computation and skips every hook:

# %%
from torch import nn

calls = []
layer = nn.Linear(4, 2)
handle = layer.register_forward_hook(lambda module, args, output: calls.append(module))
layer(torch.randn(1, 4))
print("after layer(x):", len(calls), "hook call")
layer.forward(torch.randn(1, 4))
print("after layer.forward(x):", len(calls), "hook call")
handle.remove()
assert len(calls) == 1

# %% [markdown]
# So in a model whose `forward` calls `self.fc.forward(x)`, the pre-hook of
# `ExtraOutputNet` never sees the head's input. It does not return nothing:
# it counts the calls and raises a `RuntimeError` that says the head ran 0
# times. Write `self.fc(x)` in a `forward`, never `self.fc.forward(x)`.

# %% tags=["raises-exception"] raises="RuntimeError"
class CallsForwardDirectly(nn.Module):  # its forward calls fc.forward, not fc
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.fc.forward(self.flatten(x))


ExtraOutputNet(CallsForwardDirectly())(images[:4])
