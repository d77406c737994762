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
# # Model summaries: in the wild
#
# The last page of [Model summaries](../), after
# [Summaries of real models](../real_models/): what goes wrong in the wild,
# each mistake failing for real (or proven wrong by an assertion) before it
# is fixed. The `ResNet18Stem` it uses is the fixed model of
# [the first page](../#fix-the-model-not-only-the-tool).
#
# The page runs on its own: first the imports it uses and the versions it
# runs on.

# %%
import contextlib
import io
import re

import torch
import torchvision
from torch import nn
from torchsummary import summary as torchsummary_summary

from tutorials_pkg.demo_models import ResNet18Stem
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.source import show_source
from tutorials_pkg.summary import summary

torch.manual_seed(0)
print(describe_runtime())

# %% [markdown]
# ## A slice of a `Sequential` is a second name
#
# The double count needs no `base_model`: slicing an `nn.Sequential` makes a
# new `Sequential` that holds the *same* layers. Keeping the slice as an
# attribute, a handy shortcut to the features, registers every layer in it
# twice:

# %%
from tutorials_pkg.demo_models import tiny_resnet


class WithFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny_resnet()
        self.features = self.net[:5]  # shares the first five layers

    def forward(self, x):
        return self.net(x)


aliased = WithFeatures()
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    torchsummary_summary(aliased, (3, 16, 16), device="cpu")
total_line = re.search(r"Total params: ([\d,]+)", printed.getvalue())
reported = int(total_line.group(1).replace(",", ""))
unique_aliased = sum(p.numel() for p in aliased.parameters())
print(f"torchsummary: {reported:,}; the model has {unique_aliased:,}")
sliced = sum(p.numel() for p in aliased.features.parameters())
assert reported == unique_aliased + sliced  # the shared layers counted twice

# %% [markdown]
# Counting each module and each parameter once gives the right number, and
# the table says where else each layer is registered:

# %%
fixed = summary(aliased, input_size=(1, 3, 16, 16))
print("\n".join(str(fixed).splitlines()[:6]))
assert fixed.total_params == unique_aliased

# %% [markdown]
# ## A summary in training mode moves the BatchNorm statistics
#
# `torchsummary` runs its forward pass in whatever mode the model is in, with
# autograd on. In training mode every BatchNorm updates its running mean and
# variance from the random input: the model you summarised is no longer the
# model you had.

# %%
torch.manual_seed(0)  # torchsummary's input is random
victim = ResNet18Stem()
batchnorm = victim.layer0[1]
running_mean = batchnorm.running_mean.clone()
with contextlib.redirect_stdout(io.StringIO()):
    torchsummary_summary(victim, (3, 32, 32), device="cpu")
moved = (batchnorm.running_mean - running_mean).abs().max().item()
print(f"running_mean moved by up to {moved:.4f}")
print("num_batches_tracked:", batchnorm.num_batches_tracked.item())
assert moved > 0 and batchnorm.num_batches_tracked.item() == 1

# %% [markdown]
# `summary` runs in eval mode under `torch.no_grad()`, as
# [the previous page](../real_models/#the-model-is-left-as-it-was) shows: the statistics stay where they were.

# %%
victim = ResNet18Stem()
batchnorm = victim.layer0[1]
running_mean = batchnorm.running_mean.clone()
summary(victim, input_size=(1, 3, 32, 32))
assert torch.equal(batchnorm.running_mean, running_mean)
assert batchnorm.num_batches_tracked.item() == 0 and victim.training

# %% [markdown]
# ## `model.eval()` without the way back
#
# A hand-written summary that calls `model.eval()` and forgets to switch back
# leaves the model in eval mode: training continues with BatchNorm frozen and
# dropout off, and nothing says so. Calling `model.train()` afterwards is not
# right either: it also switches on the parts you had frozen in eval mode.

# %%
def shapes_in_eval(model, x):  # the wrong way: eval(), and no way back
    model.eval()
    with torch.no_grad():
        return model(x).shape


frozen_stem = torchvision.models.resnet18(weights=None)
frozen_stem.bn1.eval()
shapes_in_eval(frozen_stem, torch.randn(1, 3, 64, 64))
assert not frozen_stem.training  # still in eval mode: the next epoch trains wrongly
frozen_stem.train()
assert frozen_stem.bn1.training  # and train() un-froze the stem's BatchNorm

# %% [markdown]
# `summary` remembers each module's own mode and restores it module by module,
# with this context manager:

# %%
from tutorials_pkg.summary import eval_mode

show_source(eval_mode)

# %%
frozen_stem.bn1.eval()
summary(frozen_stem, input_size=(1, 3, 64, 64))
assert frozen_stem.training and not frozen_stem.bn1.training

# %% [markdown]
# ## An input too small for the model
#
# Every pooling layer halves the picture. SqueezeNet 1.1 given a 16×16 input
# has nothing left by its third max-pool, and PyTorch raises a `RuntimeError`
# from deep inside the pooling layer. `summary` raises that same error, type
# and message unchanged (a CUDA out-of-memory error stays one, too): the
# message already says the output is too small. What torch cannot say is
# where in the model it happened, so `summary` adds one note below it: the
# layer that failed and the input shape.

# %% tags=["raises-exception"] raises="RuntimeError"
squeezenet = torchvision.models.squeezenet1_1(weights=None)
summary(squeezenet, input_size=(1, 3, 16, 16))

# %% [markdown]
# The hooks are gone and the model is unchanged, so a larger input just works;
# the count matches the one torchvision publishes for SqueezeNet 1.1:

# %%
small = summary(squeezenet, input_size=(1, 3, 64, 64))
print(f"{small.total_params:,}")
assert all(not m._forward_hooks and not m._forward_pre_hooks for m in squeezenet.modules())
published = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["num_params"]
assert small.total_params == published

# %% [markdown]
# ## Both kinds of input, or neither
#
# `input_size` and `input_data` are alternatives. Passing both (or neither)
# raises a `ValueError` instead of silently preferring one:

# %% tags=["raises-exception"] raises="ValueError"
summary(squeezenet, input_size=(1, 3, 64, 64), input_data=torch.randn(1, 3, 64, 64))

# %% [markdown]
# ## torchsummary counts only `weight` and `bias`, and fails on tuples and `None`
#
# `torchsummary` counts a layer's parameters by reading its `weight` and
# `bias` attributes. A parameter by any other name is left out: a class token,
# a position embedding, `nn.LSTM`'s `weight_ih_l0`, `nn.MultiheadAttention`'s
# `in_proj_weight`. A class token, as in a vision transformer:

# %%
class ClassToken(nn.Module):  # a learnable token put before the sequence, as in ViT
    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, 8))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.cat([self.token.expand(len(x), -1, -1), x], 1))


printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    torchsummary_summary(ClassToken(), (5, 8), device="cpu")
reported = int(re.search(r"Total params: ([\d,]+)", printed.getvalue()).group(1))
print(f"torchsummary: {reported}; the model has {sum(p.numel() for p in ClassToken().parameters())}")
assert reported == 8 * 2 + 2  # fc only: the token's 8 are not a .weight or .bias

# %% [markdown]
# It also takes every output to be a tensor or a flat list of tensors and
# calls `.size()` on each. `nn.LSTM` returns `(output, (h, c))`, and
# `nn.MultiheadAttention(..., need_weights=False)` returns `(output, None)`:
# both fail with an `AttributeError`.

# %% tags=["raises-exception"] raises="AttributeError"
class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        out, _ = self.lstm(x)  # (output, (h, c)): a tuple inside a tuple
        return self.fc(out[:, -1])


lstm_model = LSTMClassifier()
torchsummary_summary(lstm_model, (5, 8), device="cpu")

# %% [markdown]
# The error leaves `torchsummary`'s hooks on the model: it removes them only
# after a forward pass that succeeds. `summary` records every tensor's shape
# wherever it is in the output, keeps other values as they are, and counts
# parameters by module, whatever their names:

# %%
print("hooks left on lstm_model.lstm:", len(lstm_model.lstm._forward_hooks))
for model in (ClassToken(), LSTMClassifier()):
    counted = summary(model, input_size=(1, 5, 8))
    print(type(model).__name__, counted.total_params, counted.rows[1].output_shape)
    assert counted.total_params == sum(p.numel() for p in model.parameters())

# %% [markdown]
# ## A scripted model
#
# `torch.jit.script` and `torch.jit.trace` turn a model into TorchScript, and
# TorchScript modules take no forward hooks. `summary` says so before running
# anything, with a `TypeError` that names the scripted module (the model, or
# the child that was scripted) and what to pass instead. (On torch 2.14
# `torch.jit.script` itself warns with a `FutureWarning`: TorchScript is
# deprecated in favour of `torch.compile` and `torch.export`.)

# %% tags=["raises-exception", "shows-warning"] raises="TypeError"
summary(torch.jit.script(ResNet18Stem()), input_size=(1, 3, 32, 32))

# %% [markdown]
# The module before scripting is the one to summarise:

# %%
print(f"{summary(ResNet18Stem(), input_size=(1, 3, 32, 32)).total_params:,}")
