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
# out next to the logits. Each change on this page starts out computing what
# the model computed before, and the page checks that it does.
#
# Every output on this page was produced by running the code when the site was
# built, on the versions printed below.

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## The patient: ResNet-18
#
# All the examples use torchvision's ResNet-18, built with random weights
# (`weights=None`) because the site is built without a network connection. With
# one, the same line downloads the ImageNet weights, and everything below works
# unchanged:
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
#   not among them (the last section shows that failing).
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
# The last `nn.Linear` is `fc` in a ResNet, `classifier` in the blocks page's
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
# `copy.deepcopy(base)`; the last section shows what happens without it. Its
# `state_dict` keys start with `body.` and `fc.`, and those of
# `ExtraOutputNet` with `model.`, so load trained weights into the model first
# and wrap it afterwards.

# %% [markdown]
# ## What goes wrong in the wild
#
# ### A softmax at the end of the model, fed to `CrossEntropyLoss`
#
# `nn.CrossEntropyLoss` expects logits: it applies `log_softmax` itself. A
# model that ends in `nn.Softmax` gets the softmax twice, and nothing raises:

# %%
from tutorials_pkg.surgery import classifier_ending_in_softmax

show_source(classifier_ending_in_softmax)

# %% [markdown]
# The damage is easy to compute. Take a perfectly confident, correct
# prediction: a logit of 10 for the right class and 0 for the nine others. The
# true loss is practically zero. After a softmax the inputs to the loss lie in
# [0, 1], so the best the loss can ever see is 1 for the right class against 0
# for nine others, and its value can never fall below
# log(1 + 9/e) ≈ 1.46. The gradient that should drive the wrong classes down
# shrinks as well:

# %%
import math

logits = torch.zeros(1, 10)
logits[0, 3] = 10.0
target = torch.tensor([3])
loss_fn = nn.CrossEntropyLoss()

right = loss_fn(logits, target)
twice = loss_fn(torch.softmax(logits, dim=1), target)
print(f"loss on logits: {right.item():.2e}   loss on softmax output: {twice.item():.3f}")
assert twice.item() > math.log(1 + 9 / math.e) - 1e-6  # the floor, however good the model

wrong = torch.zeros(1, 10, requires_grad=True)
with torch.no_grad():
    wrong[0, 5] = 5.0  # confidently wrong: class 5 instead of 3
loss_fn(wrong, target).backward()
grad_right = wrong.grad.clone()
wrong.grad = None
loss_fn(torch.softmax(wrong, dim=1), target).backward()
print(f"gradient on the wrong class: {grad_right[0, 5]:.3f} from logits, "
      f"{wrong.grad[0, 5]:.3f} through the extra softmax")
assert wrong.grad[0, 5].abs() < grad_right[0, 5].abs() / 5

# %% [markdown]
# The fix: the model returns logits, and the softmax is applied outside it
# when probabilities are wanted.

# %%
head = nn.Linear(64, 10)
features_in = torch.randn(8, 64)
loss = loss_fn(head(features_in), torch.arange(8))       # training: logits
probabilities = torch.softmax(head(features_in), dim=1)   # inference: probabilities
print(loss.item() > 0, probabilities.sum(dim=1))

# %% [markdown]
# ### An extra-output wrapper that forgets its classifier
#
# To reach the features, this wrapper replaces `fc` with `nn.Identity`, and
# does not keep the classifier anywhere:

# %%
from tutorials_pkg.surgery import ExtraOutputNetThatDropsHead

show_source(ExtraOutputNetThatDropsHead)

# %% [markdown]
# Its "logits" are 512 features, not 10 class scores. `CrossEntropyLoss` does
# not notice: labels 0 to 9 are valid classes out of 512, so training runs.
# And the trained classifier is gone from the `state_dict`:

# %%
forgetful = ExtraOutputNetThatDropsHead(copy.deepcopy(base))
logits, _ = forgetful(images[:4])
print(logits.shape, loss_fn(logits, labels[:4]).item())
assert logits.shape[1] == 512
assert not any(key.startswith("fc.") or ".fc." in key for key in forgetful.state_dict())

# %% [markdown]
# `ExtraOutputNet` above keeps the classifier as `self.head` and applies it,
# so its logits have 10 columns and equal the model's.

# %%
logits, _ = ExtraOutputNet(copy.deepcopy(base))(images[:4])
assert logits.shape[1] == 10 and "model.fc.weight" in ExtraOutputNet(copy.deepcopy(base)).state_dict()

# %% [markdown]
# ### An extra-output model that never uses its 10-class layer
#
# A widely read tutorial's extra-output model defines a 10-class layer `fc1`
# and never calls it; its `forward` also takes an extra input it never uses.
# Our reconstruction of that mistake:

# %%
from tutorials_pkg.surgery import ExtraOutputNetWithUnusedLayer

show_source(ExtraOutputNetWithUnusedLayer)

# %% [markdown]
# Nothing raises. The "10-class" output is a softmax over the 1,000 outputs
# of the ImageNet `fc`, the extra input changes nothing, and `fc1` gets no
# gradient, so training never changes it:

# %%
unused = ExtraOutputNetWithUnusedLayer(resnet18(weights=None)).eval()
probabilities, _ = unused(images[:4], ink)
print(probabilities.shape, [round(total, 4) for total in probabilities.sum(dim=1).tolist()])
assert torch.equal(unused(images[:4], torch.zeros(4))[0], probabilities)  # extra is ignored
probabilities.log().mean().backward()
print("fc1 gradient:", unused.fc1.weight.grad)
assert probabilities.shape[1] == 1000 and unused.fc1.weight.grad is None

# %% [markdown]
# The fix: give the model the 10 classes it is for (or put a 10-class head in
# its `fc`, as in the first section), let the loss apply the softmax, and use
# `ExtraOutputNet` for the features. `ExtraInputNet` is the model for an extra
# input that is actually used.

# %%
logits, features = ExtraOutputNet(resnet18(weights=None, num_classes=10))(images[:4])
print(logits.shape, features.shape)

# %% [markdown]
# ### An optimizer built before the swap
#
# An optimizer keeps the parameter tensors it was given when it was built. A
# head swapped in afterwards is not among them: its gradients are computed,
# and then nothing uses them.

# %%
early = resnet18(weights=None, num_classes=10)
optimizer = torch.optim.SGD(early.parameters(), lr=0.1)  # built too early
early.fc = nn.Linear(512, 10)
head_before = early.fc.weight.clone()
F.cross_entropy(early(images[:8]), labels[:8]).backward()
optimizer.step()
assert early.fc.weight.grad is not None and torch.equal(early.fc.weight, head_before)
print("the new head has a gradient and did not move")

# %% [markdown]
# Build the optimizer after the last change to the model:

# %%
optimizer = torch.optim.SGD(early.parameters(), lr=0.1)
optimizer.step()
assert not torch.equal(early.fc.weight, head_before)

# %% [markdown]
# ### Replacing layers while iterating over `named_modules()`
#
# A loop that swaps every ReLU for a SiLU, with `setattr` on the model and the
# dotted name, fails with a `RuntimeError`. `nn.Module.__setattr__` does not
# split the name: `setattr(model, "layer1.0.relu", m)` adds a new child named
# `"layer1.0.relu"` to the model itself, which changes the dictionary that
# `named_modules()` is walking.

# %% tags=["raises-exception"] raises="RuntimeError"
broken = resnet18(weights=None)
for name, module in broken.named_modules():
    if isinstance(module, nn.ReLU):
        setattr(broken, name, nn.SiLU())

# %% [markdown]
# By then the model is damaged: it has children whose names contain dots,
# and the real ReLU inside `layer1` is still there.

# %%
print(list(broken._modules))
assert "layer1.0.relu" in broken._modules and isinstance(broken.layer1[0].relu, nn.ReLU)

# %% [markdown]
# What happens on this torch version with a correct replacement inside the
# loop? `_modules` is a plain `dict` (insertion-ordered), and giving an
# existing key a new value does not change its size, so Python does not
# complain. The generator has already read the module it just handed out,
# and goes on into that old
# module's children; the replacement put under the same name is not visited,
# so a replacement that contains the old module is not wrapped again and
# again. That this works is a detail of `named_modules()`; a replacement that
# adds or removes a child breaks it.

# %%
inside = resnet18(weights=None)
visited = []
for name, module in inside.named_modules():
    if isinstance(module, nn.Conv2d):
        visited.append(name)
        replace_module(inside, name, nn.Sequential(module, nn.Dropout2d(0.1)))
print(len(visited), "convolutions wrapped, each once:", inside.layer1[0].conv1)
assert len(visited) == 20 and isinstance(inside.layer1[0].conv1[0], nn.Conv2d)

# %% [markdown]
# Code that depends on such a detail is fragile. Collect the names first, then
# replace. Since the names come from `named_modules()` itself, torch's own
# `set_submodule(name, module, strict=True)` is enough here:

# %%
from tutorials_pkg.surgery import replace_modules_of_type

show_source(replace_modules_of_type)

# %%
fixed = resnet18(weights=None)
names = replace_modules_of_type(fixed, nn.ReLU, lambda old: nn.SiLU(inplace=True))
print(names)
assert not any(isinstance(m, nn.ReLU) for m in fixed.modules())
print(fixed(images[:2]).shape)

# %% [markdown]
# A module registered under two names is replaced under both, by one new
# module, so what was shared stays shared. Every new module is made before
# the model changes, and matches nested in one another (here every
# `Sequential`, where `layer2` holds `layer2.0.downsample`) are refused with a
# `ValueError` before anything is replaced:

# %% tags=["raises-exception"] raises="ValueError"
replace_modules_of_type(fixed, nn.Sequential, lambda old: nn.Identity())

# %% [markdown]
# ### An alias instead of a copy
#
# Assignment does not copy a model: `finetuned = base` is a second name for
# the same object, so changing "the new model" changes the original too.

# %%
base = resnet18(weights=None)
finetuned = base
finetuned.fc = nn.Linear(512, 10)
print(base.fc)
assert base.fc.out_features == 10  # the original lost its 1,000-class head

# %% [markdown]
# `ExtraInputNet` takes over the model it gets, so an alias there changes
# what the original computes: it now returns features.

# %%
base = resnet18(weights=None).eval()
wrapped = ExtraInputNet(base, extra_features=1)
assert base(images[:2]).shape == (2, 512)  # not logits any more

# %% [markdown]
# `copy.deepcopy` makes an independent model, parameters and buffers
# included; the original is left as it was:

# %%
base = resnet18(weights=None).eval()
wrapped = ExtraInputNet(copy.deepcopy(base), extra_features=1)
assert base(images[:2]).shape == (2, 1000)
assert all(p.data_ptr() != q.data_ptr() for p, q in zip(base.parameters(), wrapped.parameters()))
print(base.fc)
