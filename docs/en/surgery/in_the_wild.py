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
# # Surgery: what goes wrong in the wild
#
# The last page of [Model surgery](../), after
# [Extra inputs and outputs](../inputs_and_outputs/): mistakes from widely read
# code, each shown failing (or silently wrong), then fixed.

# %%
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from tutorials_pkg.digits import load_digits_tensors
from tutorials_pkg.source import show_source
from tutorials_pkg.surgery import ExtraInputNet, ExtraOutputNet, replace_module

torch.manual_seed(0)
pixels, labels = load_digits_tensors()  # (1797, 1, 8, 8), in [0, 1]
images = F.interpolate(pixels, size=32, mode="bilinear").repeat(1, 3, 1, 1)
base = resnet18(weights=None, num_classes=10).eval()  # the 10-class model of the inputs page
ink = images[:4].mean(dim=(1, 2, 3))  # and its extra input, one scalar per sample

# %% [markdown]
# ## A softmax at the end of the model, fed to `CrossEntropyLoss`
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
# ## An extra-output wrapper that forgets its classifier
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
# [`ExtraOutputNet`](../inputs_and_outputs/#an-extra-output) changes
# nothing in the model: it runs the whole model, classifier included, and
# catches what the last layer receives with a forward pre-hook. `self.head`
# holds only that layer's name, `"fc"`. So its logits have 10 columns and
# equal the model's, and the classifier stays in the `state_dict`.

# %%
two_outputs = ExtraOutputNet(copy.deepcopy(base))
logits, _ = two_outputs(images[:4])
print(repr(two_outputs.head), logits.shape)
assert two_outputs.head == "fc" and torch.equal(logits, base(images[:4]))
assert "model.fc.weight" in two_outputs.state_dict()

# %% [markdown]
# ## An extra-output model that never uses its 10-class layer
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
# its `fc`, as in [a new classifier](../#a-new-classifier)), let the loss apply the softmax, and use
# `ExtraOutputNet` for the features. `ExtraInputNet` is the model for an extra
# input that is actually used.

# %%
logits, features = ExtraOutputNet(resnet18(weights=None, num_classes=10))(images[:4])
print(logits.shape, features.shape)

# %% [markdown]
# ## An extra-input model whose code does not do what its prose says
#
# The same tutorial's extra-input model is described as joining a scalar to
# the penultimate features (2,048 of them in its ResNet-50, 512 in
# ResNet-18). Its code does something else: it runs the whole model, so the
# scalar is joined to the 1,000 ImageNet logits, after a ReLU and a dropout,
# and a new `Linear(1001, 10)` and a softmax follow. Our reconstruction:

# %%
from tutorials_pkg.surgery import ExtraInputNetOnLogits

show_source(ExtraInputNetOnLogits)

# %% [markdown]
# Nothing raises. A pre-hook on the new layer shows what it is given: 1,001
# values, the logits and the scalar, not the 513 the prose describes; the
# ReLU has set every negative logit to zero (about half of them), and the
# output is a softmax, which `CrossEntropyLoss` would apply a second time
# ([the first section](#a-softmax-at-the-end-of-the-model-fed-to-crossentropyloss)).

# %%
on_logits = ExtraInputNetOnLogits(resnet18(weights=None)).eval()
seen = []
hook = on_logits.fc_add.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
probabilities = on_logits(images[:4], ink)
hook.remove()
zeroed = (seen[0][:, :1000] == 0).float().mean().item()
print(f"fc_add gets {seen[0].shape[1]} values per sample; {zeroed:.0%} of the logits are zeroed")
assert seen[0].shape[1] == 1000 + 1 and 0.3 < zeroed < 0.7
assert torch.allclose(probabilities.sum(dim=1), torch.ones(4))

# %% [markdown]
# [`ExtraInputNet`](../inputs_and_outputs/#an-extra-input) does what the prose
# says: it joins the extra input to the 512 features the classifier receives
# (its new `fc` takes 512 + 1), keeps the trained classifier's weights for
# those 512 with zero weights for the extra input, so it starts out
# computing what the model computed, and returns logits:

# %%
joined = ExtraInputNet(copy.deepcopy(base), extra_features=1).eval()
logits = joined(images[:4], ink)
print(joined.fc, f"largest difference from the model: {(logits - base(images[:4])).abs().max():.1e}")
assert joined.fc.in_features == 512 + 1 and torch.allclose(logits, base(images[:4]), atol=1e-5)

# %% [markdown]
# ## A body cut from `children()` loses what `forward` does in code
#
# A common way to drop the classifier is
# `nn.Sequential(*list(model.children())[:-1])`. That keeps the registered
# children and nothing else: whatever `forward` does between them in code is
# gone. ResNet-18's `forward` flattens the pooled map before `fc`, so the cut
# body returns `(N, 512, 1, 1)` instead of `(N, 512)`:

# %%
resnet = resnet18(weights=None).eval()
body = nn.Sequential(*list(resnet.children())[:-1])
print(body(images[:4]).shape)
assert body(images[:4]).shape == (4, 512, 1, 1)

# %% [markdown]
# and a new head on it fails with a `RuntimeError`: `nn.Linear` works on the
# last dimension, of size 1.

# %% tags=["raises-exception"] raises="RuntimeError"
nn.Sequential(body, nn.Linear(512, 10))(images[:4])

# %% [markdown]
# In torchvision's `mobilenet_v2` the pooling itself is code in `forward`, so
# the cut model returns the last feature map, with no error: a 64×64 image
# gives 2×2 positions instead of one vector.

# %%
from torchvision.models import mobilenet_v2

mobile = mobilenet_v2(weights=None).eval()
trunk = nn.Sequential(*list(mobile.children())[:-1])
x64 = torch.randn(2, 3, 64, 64)
print(trunk(x64).shape)
assert trunk(x64).shape == (2, 1280, 2, 2)

# %% [markdown]
# Keep `forward` and replace only the classifier, with `nn.Identity`: the
# models then return the vectors their classifiers received.

# %%
resnet.fc = nn.Identity()
mobile.classifier = nn.Identity()
print(resnet(images[:4]).shape, mobile(x64).shape)
assert resnet(images[:4]).shape == (4, 512) and mobile(x64).shape == (2, 1280)

# %% [markdown]
# ## An optimizer built before the swap
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
# ## Replacing layers while iterating over `named_modules()`
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
# ## An alias instead of a copy
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
