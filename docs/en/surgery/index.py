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
# # Model surgery
#
# You rarely write a model from scratch: you take a built one, often with
# trained weights, and change it. Swap the classifier for your classes, swap a
# layer deep inside by its name, train only the new part, give the first layer
# a fourth input channel, feed in an extra number per sample, get the features
# out next to the logits. Each change in this chapter starts out computing
# what the model computed before, and the pages check that it does. Its pages:
#
# - This page: the patient, ResNet-18; a new classifier, and a layer deep
#   inside swapped by its dotted name; training only the new head.
# - [Extra inputs and outputs](inputs_and_outputs/): a fourth input channel, an
#   extra input per sample, the features out next to the logits.
# - [Surgery: what goes wrong in the wild](in_the_wild/): mistakes from widely
#   read code, each failing, then fixed.
#
# Every output in this chapter was produced by running the code when the site
# was built, on the versions printed below.

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## The patient: ResNet-18
#
# All the examples use torchvision's ResNet-18, built with random weights
# (`weights=None`) because the site is built without a network connection.
# With one, the same line downloads the ImageNet weights:
#
# ```python
# from torchvision.models import resnet18, ResNet18_Weights
#
# model = resnet18(weights="DEFAULT")            # the best weights torchvision has
# model = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)   # or name them
# preprocess = ResNet18_Weights.DEFAULT.transforms()         # the matching input transform
# ```
#
# A model is a tree of named modules. `named_children()` lists the first level;
# the last layer, `fc`, is the classifier for ImageNet's 1,000 classes.

# %%
import torch
from torch import nn
from torchvision.models import resnet18

torch.manual_seed(0)
model = resnet18(weights=None)
print([name for name, _ in model.named_children()])
print(model.fc)

# %% [markdown]
# Weights come with the classes they were trained on. Ask for trained weights
# and 10 classes in one call, and torchvision refuses with a `ValueError`,
# before it downloads anything:

# %% tags=["raises-exception"] raises="ValueError"
from torchvision.models import ResNet18_Weights

resnet18(weights=ResNet18_Weights.DEFAULT, num_classes=10)

# %% [markdown]
# Build the model as the weights were trained, with 1,000 classes, load them,
# and then replace the head, as this page does from
# [A new classifier](#a-new-classifier) on:
#
# ```python
# model = resnet18(weights=ResNet18_Weights.DEFAULT)   # 1,000 classes: the weights fit
# model.fc = nn.Linear(model.fc.in_features, 10)       # then the head for your classes
# ```
#
# Here a state dict of the same model stands in for the downloaded one; every
# weight outside `fc` is kept. (The next pages start from
# `resnet18(weights=None, num_classes=10)`, which stands for a model made this
# way.)

# %%
downloaded = resnet18(weights=None).state_dict()  # stands in for the ImageNet weights
pretrained = resnet18(weights=None)               # 1,000 classes, so the weights fit
pretrained.load_state_dict(downloaded)
pretrained.fc = nn.Linear(pretrained.fc.in_features, 10)
kept = [k for k in downloaded if not k.startswith("fc.")]
assert all(torch.equal(pretrained.state_dict()[k], downloaded[k]) for k in kept)
print(pretrained.fc, f"and {len(kept)} tensors of the ImageNet model kept")

# %% [markdown]
# Older code, and many tutorials, write `resnet18(pretrained=True)`. The
# `pretrained` argument has been deprecated since torchvision 0.13: it still
# works, with the two `UserWarning`s below, and `pretrained=True` stands for
# `weights=ResNet18_Weights.IMAGENET1K_V1`, the first weights torchvision
# published. That is not always what `"DEFAULT"` gives today: for ResNet-50,
# `pretrained=True` means `IMAGENET1K_V1` while `DEFAULT` is the better
# `IMAGENET1K_V2`. `pretrained=False` stands for `weights=None`, which is what
# this cell passes, so nothing is downloaded:

# %%
import warnings

from torchvision.models import ResNet50_Weights

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    resnet18(pretrained=False)
for warning in caught:
    print(f"{warning.category.__name__}: {warning.message}")
print("ResNet50_Weights.DEFAULT is", ResNet50_Weights.DEFAULT.name)

# %% [markdown]
# The data is real: scikit-learn's 8×8 handwritten digits, scaled up to 32×32
# and repeated over three channels so that they look like small RGB images.

# %%
import torch.nn.functional as F
from tutorials_pkg.digits import load_digits_tensors

pixels, labels = load_digits_tensors()  # (1797, 1, 8, 8), in [0, 1]
images = F.interpolate(pixels, size=32, mode="bilinear").repeat(1, 3, 1, 1)
print(images.shape, labels.shape)

# %% [markdown]
# ## A new classifier
#
# For 10 digit classes, the 1,000-way `fc` makes way for a new head. An
# `nn.Sequential` built from an `OrderedDict` gives its layers names, which
# show up in the `state_dict` and in error messages:

# %%
from tutorials_pkg.source import show_source
from tutorials_pkg.surgery import classifier_head

show_source(classifier_head)

# %% [markdown]
# `replace_module` puts a module where a (dotted) name is and returns the one
# that was there. It looks the parent up with `nn.Module.get_submodule`, which
# walks a name such as `"layer1.0.conv1"` one attribute at a time, and then
# sets the last part on that parent. For a name that is not there, `get_module`
# raises a `KeyError` that lists the parent's children and the close names.

# %%
from tutorials_pkg.surgery import replace_module

show_source(replace_module)

# %%
old_fc = replace_module(model, "fc", classifier_head(model.fc.in_features, 10))
print("old:", old_fc)
print("new:", model.fc)
print(model(images[:4]).shape)

# %% [markdown]
# The layer keeps the name of the place it was put: it is still `fc`, and
# its weights are saved as `fc.fc1.weight` and so on. A widely read tutorial
# builds such a head in a variable called `classifier`, assigns it with
# `net.fc = classifier`, and says the layer is now called `classifier`; but
# PyTorch never sees the variable's name, only the attribute's, so
# `model.classifier` raises an `AttributeError`:

# %%
print(list(model._modules)[-1], [key for key in model.state_dict() if key.startswith("fc.")][:2])

# %% tags=["raises-exception"] raises="AttributeError"
model.classifier

# %% [markdown]
# ### The new head in the model's dtype and on its device
#
# A new layer is created in `float32` on the CPU, whatever the model around
# it. After `.double()` (or on a GPU) the new head does not match the rest, and
# the first forward pass fails at it with a `RuntimeError`:

# %% tags=["raises-exception"] raises="RuntimeError"
precise = resnet18(weights=None).double().eval()
replace_module(precise, "fc", classifier_head(precise.fc.in_features, 10))
precise(images[:2].double())

# %% [markdown]
# `Module.to(tensor)` moves a module to that tensor's dtype and device, so
# `.to(old.weight)` gives the new head those of the layer it replaces, on
# the CPU and on a GPU alike:

# %%
precise = resnet18(weights=None).double().eval()
head = classifier_head(precise.fc.in_features, 10).to(precise.fc.weight)
replace_module(precise, "fc", head.eval())
print(precise(images[:2].double()).dtype)

# %% [markdown]
# ### A layer deep inside, by its dotted name
#
# The names are the ones `named_modules()` prints, indices of a `Sequential`
# included. Here the second convolution of the last block gets a
# `Dropout2d` in front of it. The returned module is put back inside the new
# one, so its weights are kept: in evaluation mode dropout does nothing, and
# the outputs are the same as before. A module is created in training mode,
# so a model that was in evaluation mode needs `.eval()` again after surgery.

# %%
model.eval()
before = model(images[:4])
conv = replace_module(model, "layer4.1.conv2", nn.Identity())
replace_module(model, "layer4.1.conv2", nn.Sequential(nn.Dropout2d(0.1), conv))
print(model.layer4[1].conv2)
print("the new Sequential is in training mode:", model.layer4[1].conv2.training)
model.eval()  # again: modules are created in training mode
assert torch.equal(model(images[:4]), before)

# %% [markdown]
# A misspelled name fails with a `KeyError` before anything changes:

# %% tags=["raises-exception"] raises="KeyError"
replace_module(model, "layer4.1.conv3", nn.Identity())

# %% [markdown]
# Recent torch has `model.set_submodule(name, module)` too. Its default,
# `strict=False`, *adds* a module when the last part of the name is not there,
# so the same typo silently creates a layer that `forward` never calls (with
# `strict=True` it raises an `AttributeError`):

# %%
import copy

other = copy.deepcopy(model)
other.set_submodule("layer4.1.conv3", nn.Identity())
print(list(other.layer4[1]._modules))
assert "conv3" in other.layer4[1]._modules  # a new, unused layer; conv2 is unchanged

# %% [markdown]
# ## Train only the new head
#
# With trained weights, a common first step is to keep the backbone as it is
# and train only the new head. Setting `requires_grad=False` on a parameter
# stops autograd from computing its gradient, so no optimizer changes it.
# `freeze_except` does that for everything outside one submodule:

# %%
from tutorials_pkg.surgery import freeze_except

show_source(freeze_except)

# %%
trained = freeze_except(model, "fc")
print(trained)
total = sum(p.numel() for p in model.parameters())
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
print(f"trainable: {trainable:,} of {total:,} parameters")
assert trainable == 512 * 256 + 256 + 256 * 10 + 10

# %% [markdown]
# `freeze_except` goes by the parameters themselves, not by their names. So a
# layer whose weight is tied to another one (a language model's output layer
# and its input embedding share one matrix) stays trainable, and the shared
# weight is listed under both of its names: training the head also changes
# the embedding. An empty name would mean the whole model, and is refused
# with a `ValueError`; a misspelt one gets `replace_module`'s `KeyError`.

# %%
from tutorials_pkg.demo_models import TiedEmbeddingNet

print(freeze_except(TiedEmbeddingNet(), "out"))

# %% [markdown]
# Two more things make the backbone really stay put:
#
# - **Build the optimizer after the swap**, from the parameters that train. An
#   optimizer holds the parameter tensors it was given; a head created later is
#   not among them ([what goes wrong in the wild](in_the_wild/#an-optimizer-built-before-the-swap)
#   shows that failing).
# - **Keep the frozen BatchNorm layers in evaluation mode.** `requires_grad`
#   stops the weights, but a BatchNorm layer in training mode still updates its
#   running mean and variance on every batch. `model.eval()` and then
#   `model.fc.train()` train the head alone.
#
# A few steps of training, then a check that every tensor of the backbone,
# buffers included, is bit for bit what it was. (The loss falls slowly because
# this backbone is random; with the ImageNet weights its features are far
# better.)

# %%
optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
backbone_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
head_before = model.fc.fc2.weight.clone()

model.eval()
model.fc.train()
for step in range(20):
    batch = slice(step * 64, (step + 1) * 64)
    loss = F.cross_entropy(model(images[batch]), labels[batch])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 5 == 4:
        print(f"step {step + 1}: loss {loss.item():.3f}")

backbone_after = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
assert all(torch.equal(backbone_before[k], backbone_after[k]) for k in backbone_before)
assert not torch.equal(model.fc.fc2.weight, head_before)

# %% [markdown]
# In training mode the same steps would have moved the running statistics of
# every BatchNorm layer, even with all their weights frozen:

# %%
probe = copy.deepcopy(model).train()
running_mean = probe.bn1.running_mean.clone()
with torch.no_grad():
    probe(images[:64])
assert not torch.equal(probe.bn1.running_mean, running_mean)  # a frozen layer changed
print(f"bn1.running_mean moved by {(probe.bn1.running_mean - running_mean).abs().max():.4f}")

# %% [markdown]
# A training loop usually starts every epoch with `model.train()`. That call
# reaches every module, the frozen BatchNorm layers included, and undoes the
# `model.eval()` above: their running statistics move again on the next
# batch.

# %%
model.train()  # the first line of a usual epoch
print("bn1 in training mode again:", model.bn1.training)
running_mean = model.bn1.running_mean.clone()
with torch.no_grad():
    model(images[:64])
assert not torch.equal(model.bn1.running_mean, running_mean)

# %% [markdown]
# Where the loop calls `model.train()`, call `train_only(model, "fc")`: it
# puts the model in evaluation mode and the one submodule back in training
# mode, every epoch.

# %%
from tutorials_pkg.surgery import train_only

show_source(train_only)

# %%
train_only(model, "fc")
running_mean = model.bn1.running_mean.clone()
with torch.no_grad():
    model(images[:64])
assert torch.equal(model.bn1.running_mean, running_mean) and model.fc.training
print("bn1 in training mode:", model.bn1.training, "| fc in training mode:", model.fc.training)
