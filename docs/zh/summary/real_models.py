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
# 本页可以单独运行：下面先载入用到的模块，并打印运行环境的版本。

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
# torchvision 的检测模型只接收一个参数：一个由图像（3 维张量，尺寸可以各不相同）组成的**列表**，所以调用时把这个列表作为唯一的位置参数传入：`input_data=(images,)`。复用检测模型的 backbone，是查看模型内部最常见的原因之一。下面是以 MobileNetV3 为 backbone 的 Faster R-CNN（随机权重；还要传 `weights_backbone=None`，否则构造函数会为 backbone 下载 ImageNet 权重），显示到第 2 层：缩放图像并把它们拼成 batch 的 `transform`；`backbone`（`body` 是 MobileNetV3 的各层，`fpn` 是特征金字塔，每一级输出一张特征图）；区域建议网络 `rpn` 及其 `head`；以及 `roi_heads`，其中的 `box_head` 和 `box_predictor` 为每个候选框给出 91 个类别（COCO 的类别）的分数，以及每个类别 4 个框坐标。权重是随机的，没有框能超过分数阈值，所以输出的列表是空的（`[0, 4]`）。表格里过长的形状会被截断（`...`），各行数据里保留完整的形状。

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
# ## 内存估计算的是什么
#
# 表格最后几行是估计值，不是实测值：输入；每个叶子模块（没有子模块的模块）每次调用的输出，大致就是训练时在这个 batch 大小下为反向传播保留的内容；以及参数和 buffer。`torchinfo` 算的是另一样东西（**有**参数的叶子层的输出，再乘以 2 算上梯度），所以两者不同。要知道 GPU 上真实的峰值，请实测：`torch.cuda.max_memory_allocated()`。

# %%
print(f"input {ours.input_bytes:,} B, leaf outputs {ours.output_bytes:,} B, "
      f"parameters {ours.param_bytes:,} B, buffers {ours.buffer_bytes:,} B")
assert ours.param_bytes == 4 * published  # float32: 4 bytes a parameter

# %% [markdown]
# ## 模型保持原样
#
# summary 不应改变它所描述的模型。下面是一个处于训练模式的模型，其中一部分被冻结在 eval 模式（就像你可能会冻结一个预训练的 stem）：summary 之后，每个模块都恢复了各自的模式，BatchNorm 的滑动统计量一个也没有变。

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
