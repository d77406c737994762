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
# # 真实模型上的 summary
#
# 这是[模型结构概览（summary）](../)一章的第二页。[上一页](../)复现了 torchsummary 的重复计数，并实现了一个每个模块只数一次的 `summary`；本页把它用在真实的模型上：与 torchinfo 和 torchvision 核对 ResNet-18，给输入是图像列表的检测模型做 summary，数清共享的权重；然后说明内存估计算的是什么，并验证 summary 不会改变模型。
#
# 接着是并非无用权重的 `not called`：注意力层不调用某一层、却用了它的权重；只在训练时运行的分支；以及容器。本页可以单独运行：下面先载入用到的模块，并打印运行环境的版本。

# %%
import torch
from torch import nn

from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.summary import summary

torch.manual_seed(0)
print(describe_runtime())

# %% [markdown]
# ## ResNet-18，与 torchinfo 核对
#
# `torchinfo` 是 `torchsummary` 仍在维护的后继者。对于普通的模型，两者应当一致，并且都应等于 torchvision 为 ResNet-18 权重公布的参数量（11,689,512，写在权重的元数据里，不需要下载）。像微调那样冻结除最后一层以外的所有参数，可训练参数量就和总数不同了：

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
# ### 被调用多次的模块
#
# torchvision 的 `BasicBlock` 只有一个 `relu` 模块，却在 `forward` 里调用了两次。按调用逐次记录的 summary 会把它打印两次；这里它只占一行，并标为 `called 2x`：

# %%
print([row.name for row in ours.rows if row.reused])

# %% [markdown]
# ## 检测模型：输入是图像列表
#
# torchvision 的检测模型只接收一个参数：一个由图像（3 维张量，尺寸可以各不相同）组成的**列表**，所以调用时把这个列表作为唯一的位置参数传入：`input_data=(images,)`。复用检测模型的 backbone，是查看模型内部最常见的原因之一。下面是以 MobileNetV3 为 backbone 的 Faster R-CNN（随机权重；还要传 `weights_backbone=None`，否则构造函数会为 backbone 下载 ImageNet 权重），显示到第 2 层：缩放图像并把它们拼成一个批量的 `transform`；`backbone`（`body` 是 MobileNetV3 的各层，`fpn` 是特征金字塔，每一级输出一张特征图）；区域建议网络 `rpn` 及其 `head`；以及 `roi_heads`，其中的 `box_head` 和 `box_predictor` 为每个候选框给出 91 个类别（COCO 的类别）的分数，以及每个类别 4 个框坐标。权重是随机的，没有框能超过分数阈值，所以输出的列表是空的（`[0, 4]`）。表格里过长的形状会被截断（`...`），各行数据里保留完整的形状。

# %%
torch.manual_seed(0)
detector = torchvision.models.get_model(
    "fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None)
images = [torch.rand(3, 320, 320)]
detection = summary(detector, input_data=(images,))
print(detection.table(max_depth=2))

# %% [markdown]
# 参数量与 torchvision 为训练好的模型公布的数字相差的，恰好是 BatchNorm 的 weight 和 bias：为从头训练而构建时，backbone 用的是 `nn.BatchNorm2d`；加载预训练权重时用的是 `FrozenBatchNorm2d`，它的缩放和平移是 buffer，不是参数。

# %%
weights = torchvision.models.detection.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1
batchnorm = sum(p.numel() for m in detector.modules() if isinstance(m, nn.BatchNorm2d)
                for p in m.parameters())
print(f"ours {detection.total_params:,} = torchvision {weights.meta['num_params']:,} "
      f"+ BatchNorm {batchnorm:,}")
assert detection.total_params == weights.meta["num_params"] + batchnorm

# %% [markdown]
# 直接把列表本身作为 `input_data` 传入是有歧义的（是一个参数，还是每张图像各一个参数？），所以 `summary` 会拒绝，抛出 `TypeError`，并给出正确的写法：

# %% tags=["raises-exception"] raises="TypeError"
summary(detector, input_data=images)

# %% [markdown]
# ## 共享的权重与模型自身的参数
#
# 语言模型常常把输出层和词嵌入**绑定**（tie）：两层共用同一个权重矩阵。参数也可以属于模型本身而不属于任何一层（一个可学习的缩放系数、一个 class token）。把每个模块自己的参数加起来，共享的矩阵就被数了两次：

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
# summary 把这个矩阵计入拥有它的第一行，并注明第二行的权重来自哪里；模型自己的 `scale` 在第一行：

# %%
tied_summary = summary(tied, input_data=torch.tensor([[1, 2, 3]]))
print(tied_summary)
assert tied_summary.total_params == unique_tied == 10 * 4 + 10 + 4

# %% [markdown]
# `torchinfo` 把每一层的参数加起来，所以共享的矩阵在两层里各算一次（40 和 50）；它再用模型的 54 减去这 90，得到层以外的参数，结果小于零，于是模型自己的 `scale` 被算成了零：

# %%
tied_info = torchinfo.summary(tied, input_data=torch.tensor([[1, 2, 3]]), verbose=0)
print(f"torchinfo {torchinfo.__version__}: {tied_info.total_params} for {unique_tied} parameters")
assert tied_info.total_params == 10 * 4 + (10 * 4 + 10) == 90

# %% [markdown]
# ## `not called` 不一定是无用的权重
#
# 标着 `not called` 的行，是 `forward` 从未运行过的模块。问答里的 `base_model` 就是这样诊断出来的；但一个模块的权重可以不经调用它就被用到，一个模块也可能只在某种模式下运行。所以 summary 还会观察前向传播中的每一个运算（借助 `TorchDispatchMode`），对没有被调用的模块，注明有没有运算读过它的权重：`not called, weights used` 或 `not called, weights unused`。只有后者才是无用的权重；表中的 `Unused params` 是没有任何运算读过的参数之和。
#
# **注意力层。** `nn.MultiheadAttention` 把 `out_proj.weight` 和 `out_proj.bias` 传给一个融合的函数，从不调用 `out_proj`。torchvision 的 ViT-B/16（这里按 32×32 的图像构建，只改变位置嵌入的长度）和 `nn.TransformerEncoder` 的每一层都是如此；后者的各层放在 `nn.ModuleList` 里，这个容器本身从不被 `forward` 调用，被调用的是其中的层。

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
# **只在一种模式下运行的分支。** `summary` 在评估模式下运行模型，而评估模式会改变哪些分支运行。GoogLeNet 的辅助分类器 `aux1` 和 `aux2` 只在训练模式下运行：summary 把它们标为 `not called, weights unused`，`Unused params` 正好是它们的参数。对推理来说它们是无用的权重（导出用于推理的模型可以去掉它们），对训练则不是：

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
# ## 内存估计算的是什么
#
# 表格最后几行是估计值，不是实测值：输入；每个叶子模块（没有子模块的模块）每次调用的输出，大致就是训练时在这个批量大小下为反向传播保留的内容；以及参数和 buffer。`torchinfo` 算的是另一样东西（**有**参数的叶子层的输出，再乘以 2 算上梯度），所以两者不同。要知道 GPU 上真实的峰值，请实测：`torch.cuda.max_memory_allocated()`。

# %%
print(f"input {ours.input_bytes:,} B, leaf outputs {ours.output_bytes:,} B, "
      f"parameters {ours.param_bytes:,} B, buffers {ours.buffer_bytes:,} B")
assert ours.param_bytes == 4 * published  # float32: 4 bytes a parameter

# %% [markdown]
# ## 模型保持原样
#
# summary 不应改变它所描述的模型。下面是一个处于训练模式的模型，其中一部分被冻结在评估模式（就像你可能会冻结一个预训练的 stem）：summary 之后，每个模块都恢复了各自的模式，BatchNorm 的滑动统计量一个也没有变。

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
