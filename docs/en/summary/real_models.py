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
# # Summaries of real models
#
# The second page of [Model summaries](../). [The first page](../) reproduces
# torchsummary's double count and builds a `summary` that counts each module
# once; this one runs it on real models: ResNet-18 checked against torchinfo
# and torchvision, a detection model whose input is a list of images, and
# tied weights; then it says what the memory estimate counts and checks that
# the summary leaves the model as it was.
#
# After them, `not called` that is not dead weight: attention that uses a
# layer's weight without calling it, branches that run only in training, and
# containers. The page runs on its own: first the imports it uses and the
# versions it runs on.

# %%
import torch
from torch import nn

from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.summary import summary

torch.manual_seed(0)
print(describe_runtime())

# %% [markdown]
# ## ResNet-18, checked against torchinfo
#
# `torchinfo` is the maintained successor of `torchsummary`. On a plain model
# the two should agree, and both with the parameter count torchvision
# publishes for its ResNet-18 weights (11,689,512, in the weights' metadata,
# which needs no download). Freezing everything but the last layer, as for
# fine-tuning, makes the trainable count differ from the total:

# %%
import torchinfo
import torchvision

resnet = torchvision.models.resnet18(weights=None)
for name, param in resnet.named_parameters():
    param.requires_grad_(name.startswith("fc."))

ours = summary(resnet, input_size=(1, 3, 224, 224))
print(ours)

# %%
theirs = torchinfo.summary(resnet, input_size=(1, 3, 224, 224), verbose=0)
published = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["num_params"]
print(f"total:     ours {ours.total_params:,}  torchinfo {theirs.total_params:,}  "
      f"torchvision {published:,}")
print(f"trainable: ours {ours.trainable_params:,}  torchinfo {theirs.trainable_params:,}")
assert ours.total_params == theirs.total_params == published
assert ours.trainable_params == theirs.trainable_params == 512 * 1000 + 1000

# %% [markdown]
# ### Modules called more than once
#
# torchvision's `BasicBlock` has one `relu` module and calls it twice in its
# `forward`. A per-call summary would print it twice; here it is one row,
# marked `called 2x`:

# %%
print([row.name for row in ours.rows if row.reused])

# %% [markdown]
# ## A detection model: a list of images
#
# torchvision's detection models take one argument, a *list* of images
# (3-D tensors, of any sizes), so the call passes that list as the one
# positional argument: `input_data=(images,)`. Reusing a detector's backbone
# is a common reason to look inside one. Faster R-CNN with a MobileNetV3
# backbone (random weights; `weights_backbone=None` too, or the builder would
# download ImageNet weights for the backbone), to depth 2: the `transform`
# that resizes the images and batches them, the `backbone` (`body`, the
# MobileNetV3 layers, and `fpn`, the feature pyramid that makes one map per
# level), the region proposal network `rpn` with its `head`, and `roi_heads`
# with the `box_head` and the `box_predictor`, which gives 91 class scores
# (COCO's) and 4 box coordinates per class for each proposal. With random
# weights no box passes the score threshold, so the output lists are empty
# (`[0, 4]`). Long shapes are cut short in the table (`...`); the rows keep
# them whole.

# %%
torch.manual_seed(0)
detector = torchvision.models.get_model(
    "fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None)
images = [torch.rand(3, 320, 320)]
detection = summary(detector, input_data=(images,))
print(detection.table(max_depth=2))

# %% [markdown]
# The count differs from the one torchvision publishes for the trained model
# by exactly the BatchNorm weights and biases: built for training from
# scratch the backbone uses `nn.BatchNorm2d`, and with pretrained weights
# `FrozenBatchNorm2d`, whose scale and shift are buffers, not parameters.

# %%
weights = torchvision.models.detection.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1
batchnorm = sum(p.numel() for m in detector.modules() if isinstance(m, nn.BatchNorm2d)
                for p in m.parameters())
print(f"ours {detection.total_params:,} = torchvision {weights.meta['num_params']:,} "
      f"+ BatchNorm {batchnorm:,}")
assert detection.total_params == weights.meta["num_params"] + batchnorm

# %% [markdown]
# Passing the list itself as `input_data` is ambiguous (one argument, or one
# argument per image?), so `summary` refuses it with a `TypeError` that shows
# the call that works:

# %% tags=["raises-exception"] raises="TypeError"
summary(detector, input_data=images)

# %% [markdown]
# ## Tied weights and a model's own parameters
#
# A language model often *ties* its output layer to its embedding: the two
# layers share one weight matrix. And a parameter can belong to the model
# itself rather than to any layer (a learnable scale, a class token). Summing
# each module's own parameters counts the tied matrix twice:

# %%
class TiedWithScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.decode = nn.Linear(4, 10)
        self.decode.weight = self.embed.weight  # one 10x4 matrix, two layers
        self.scale = nn.Parameter(torch.ones(4))  # owned by the model itself

    def forward(self, tokens):
        return self.decode(self.embed(tokens) * self.scale)


tied = TiedWithScale()
per_module = sum(p.numel() for m in tied.modules() for p in m.parameters(recurse=False))
unique_tied = sum(p.numel() for p in tied.parameters())
print("sum over modules:", per_module, " unique parameters:", unique_tied)
assert per_module == unique_tied + 10 * 4

# %% [markdown]
# The summary counts the matrix in the first row that owns it and says where
# the second row's weight comes from; the model's own `scale` is in the first
# row:

# %%
tied_summary = summary(tied, input_data=torch.tensor([[1, 2, 3]]))
print(tied_summary)
assert tied_summary.total_params == unique_tied == 10 * 4 + 10 + 4

# %% [markdown]
# `torchinfo` adds up each layer's parameters, so it counts the shared matrix
# in both layers (40 and 50); what it then finds outside the layers is the
# model's 54 minus those 90, below zero, so the model's own `scale` is counted
# as nothing:

# %%
tied_info = torchinfo.summary(tied, input_data=torch.tensor([[1, 2, 3]]), verbose=0)
print(f"torchinfo {torchinfo.__version__}: {tied_info.total_params} for {unique_tied} parameters")
assert tied_info.total_params == 10 * 4 + (10 * 4 + 10) == 90

# %% [markdown]
# ## `not called` is not always dead weight
#
# A row marked `not called` is a module whose `forward` never ran. That is the
# diagnosis of the question's `base_model`, but a module's weights can be used
# without calling it, and a module can run only in one mode. So the summary
# also watches every operation of the forward pass (a `TorchDispatchMode`) and
# notes, for a module that was not called, whether any operation read its
# weights: `not called, weights used` or `not called, weights unused`. Only
# the second is dead weight; `Unused params` in the table adds up the
# parameters no operation read.
#
# **Attention.** `nn.MultiheadAttention` passes `out_proj.weight` and
# `out_proj.bias` to one fused function and never calls `out_proj`; the same
# holds in every layer of torchvision's ViT-B/16 (built here for 32×32 images,
# which changes only the length of its position embedding) and of
# `nn.TransformerEncoder`, whose layers sit in an `nn.ModuleList`: a container
# that `forward` never calls, only the layers in it.

# %%
vit = torchvision.models.vit_b_16(weights=None, image_size=32)
vit_summary = summary(vit, input_size=(1, 3, 32, 32))
out_proj = [row for row in vit_summary.rows if row.name.endswith("out_proj")]
print(len(out_proj), "rows like", out_proj[0].name, "->", out_proj[0].note)
assert len(out_proj) == 12 and all(row.note == "not called, weights used" for row in out_proj)
assert vit_summary.unused_params == 0

layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
encoder_summary = summary(encoder, input_size=(2, 5, 16))
for row in encoder_summary.rows:
    if row.calls == 0:
        print(f"{row.name:28} {row.type:32} {row.note}")
assert encoder_summary.unused_params == 0

# %% [markdown]
# **Branches that run in one mode only.** `summary` runs the model in eval
# mode, and eval mode changes which branches run. GoogLeNet's auxiliary
# classifiers `aux1` and `aux2` run only in training mode: the summary marks
# them `not called, weights unused`, and their parameters are all the
# `Unused params`. They are dead weight for inference (a model exported for it
# can drop them), not for training:

# %%
googlenet = torchvision.models.googlenet(weights=None, init_weights=True)
googlenet_summary = summary(googlenet, input_size=(1, 3, 96, 96))
aux = [row for row in googlenet_summary.rows if row.name in ("aux1", "aux2")]
print([(row.name, row.note) for row in aux])
print(f"unused params: {googlenet_summary.unused_params:,}")
aux_params = sum(p.numel() for m in (googlenet.aux1, googlenet.aux2) for p in m.parameters())
assert all(row.note == "not called, weights unused" for row in aux)
assert googlenet_summary.unused_params == aux_params

with torch.no_grad():  # in training mode the auxiliary classifiers run
    outputs = googlenet.train()(torch.randn(2, 3, 96, 96))
print(type(outputs).__name__, [name for name in outputs._fields])
assert outputs.aux_logits1 is not None

# %% [markdown]
# ## What the memory estimate counts
#
# The last lines of the table are an estimate, not a measurement: the input;
# the output of every call of a leaf module (a module without children), which
# is roughly what training keeps for the backward pass at this batch size; and
# the parameters and buffers. `torchinfo` counts something else (the outputs
# of leaf layers *with* parameters, doubled for their gradients), so the two
# differ. For the real peak on a GPU, measure it:
# `torch.cuda.max_memory_allocated()`.

# %%
print(f"input {ours.input_bytes:,} B, leaf outputs {ours.output_bytes:,} B, "
      f"parameters {ours.param_bytes:,} B, buffers {ours.buffer_bytes:,} B")
assert ours.param_bytes == 4 * published  # float32: 4 bytes a parameter

# %% [markdown]
# ## The model is left as it was
#
# A summary must not change the model it describes. Here is a model in
# training mode, with one part frozen in eval mode (as you might freeze a
# pretrained stem): after the summary every module has its own mode back, and
# no BatchNorm running statistic has moved.

# %%
probe = torchvision.models.resnet18(weights=None)
probe.layer1.eval()
modes = [m.training for m in probe.modules()]
buffers = {name: b.clone() for name, b in probe.named_buffers()}

summary(probe, input_size=(2, 3, 64, 64))

assert [m.training for m in probe.modules()] == modes
assert probe.training and not probe.layer1.training
assert all(torch.equal(b, buffers[name]) for name, b in probe.named_buffers())
print("modes and all", len(buffers), "buffers unchanged")
