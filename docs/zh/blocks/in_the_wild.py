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
# # 用块搭建网络：实践中常见的错误
#
# 这是[用块搭建 U-Net 与 MobileNet](../)的最后一页，接在 [MobileNet v1 与 v2](../mobilenet/) 之后：广为流传的 U-Net 与 MobileNet 代码中的错误，用本章的块重现，先看它们出错（或悄无声息地算错），再看修正。

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
# ## 不对齐尺寸的 U-Net 遇到奇数尺寸就出错
#
# 一篇广为流传的 U-Net 教程算出了填充，却把结果赋给了一个新名字（`X1 = F.pad(x1, ...)`），拼接时用的仍是没填充的 `x1`：填充被白白扔掉，这个块把上采样结果和跳跃连接原样拼接。只要编码路上每个尺寸都是偶数，这样也能运行，所以这个错误在 64×64 或 256×256 的图上测试时不会暴露。`UpWithoutAlignment` 就是带着这个错误的 `Up`，`UNetWithoutAlignment` 是用它搭建的 `UNet`：

# %%
from tutorials_pkg.blocks.unet import UNetWithoutAlignment, UpWithoutAlignment

SourceBlock(inspect.getsource(UpWithoutAlignment))

# %%
unaligned = UNetWithoutAlignment(bilinear=True).eval()
with torch.no_grad():
    print(unaligned(torch.randn(1, 3, 64, 64)).shape)

# %% [markdown]
# 遇到 65×65 的图，编码器把 65 向下取整为 32，解码器加倍得 64，`torch.cat` 拒绝把 64 行和 65 行拼在一起，抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.no_grad():
    unaligned(torch.randn(1, 3, 65, 65))

# %% [markdown]
# [`Up`](../#组装好的模型) 把填充后的结果赋回 `x`，再拼接它：用同样权重的 `UNet` 能处理 65×65：

# %%
aligned = UNet(bilinear=True).eval()
aligned.load_state_dict(unaligned.state_dict())
with torch.no_grad():
    print(aligned(torch.randn(1, 3, 65, 65)).shape)

# %% [markdown]
# 同一篇教程用 `x1.size[2]` 读取尺寸。`size` 是方法，对方法做下标运算会抛出 `TypeError`：

# %% tags=["raises-exception"] raises="TypeError"
x1 = torch.randn(1, 64, 33, 33)
x1.size[2]

# %% [markdown]
# 要么调用它，`x1.size(2)`（`Up` 就是这样写的），要么对形状做下标，`x1.shape[2]`：

# %%
print(x1.size(2), x1.shape[2])

# %% [markdown]
# ## `super(...)` 里拼错的类名
#
# 同一篇教程用的是较早的两参数写法 `super(DoubleConv, self).__init__()`，而且两处把类名拼错了：`DoubleConv` 里写成 `super(DoubleCov, self)`，`UNet` 里写成 `super(Unet, self)`。`class` 语句照常执行，文件也能正常导入；这个名字要到 `__init__` 运行时才去查找：

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
# 构建这个块时抛出 `NameError`：

# %% tags=["raises-exception"] raises="NameError"
DoubleConv(3, 64)

# %% [markdown]
# 构建模型也一样，这次找不到的是 `Unet`（还是 `NameError`）：

# %% tags=["raises-exception"] raises="NameError"
UNet()

# %% [markdown]
# 不带参数的 `super().__init__()`（本章每个块都这样写）不提类名，也就无从拼错，类改名后也不用跟着改。本章的 `DoubleConv` 和 `UNet` 都能正常构建：

# %%
from tutorials_pkg.blocks.unet import DoubleConv, UNet

print(DoubleConv(3, 64).double_conv[0], type(UNet().inc).__name__)

# %% [markdown]
# ## 忘了 `groups` 的逐通道卷积
#
# 漏掉 `groups=in_channels`，这一层照样能运行，输出形状也一样，所以什么都不会报错；但现在每个输出通道都要看所有输入通道，参数量（和乘加次数）变成原来的 `in_channels` 倍：

# %%
from torch import nn

depthwise = nn.Conv2d(512, 512, kernel_size=3, padding=1, groups=512, bias=False)
no_groups = nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=False)
x512 = torch.randn(1, 512, 14, 14)
assert depthwise(x512).shape == no_groups(x512).shape  # both run, same output shape
print(f"with groups=512: {count_parameters(depthwise):,}, without: {count_parameters(no_groups):,}")
assert count_parameters(no_groups) == 512 * count_parameters(depthwise)

# %% [markdown]
# 放到整个 MobileNet v1 上，这个错误让参数量变成约 7 倍、乘加次数变成约 8.5 倍，与论文中用普通卷积搭建的 MobileNet 相当（表 4：2930 万参数、48.66 亿次乘加），这个设计的意义也就没有了：

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
# ## 形状不同时仍然加上残差
#
# 残差连接把块的输入加到输出上，所以两者形状必须相同。步长为 2 的倒残差块会把高和宽减半（这里还把 16 个通道变成 24 个）：

# %%
v2 = MobileNetV2().eval()
block = v2.features[2]
x16 = torch.randn(1, 16, 56, 56)
print("use_res_connect:", block.use_res_connect)
print(tuple(x16.shape), "->", tuple(block.conv(x16).shape))

# %% [markdown]
# 硬要把输入加上去，会抛出 `RuntimeError`：56 列无法与 28 列相加。

# %% tags=["raises-exception"] raises="RuntimeError"
x16 + block.conv(x16)

# %% [markdown]
# 步长为 1 时尺寸不变，但第一个块把 32 个通道变成 16 个，相加同样抛出 `RuntimeError`，这次是在通道维度上：

# %% tags=["raises-exception"] raises="RuntimeError"
x32 = torch.randn(1, 32, 56, 56)
x32 + v2.features[1].conv(x32)

# %% [markdown]
# 修正就是 `InvertedResidual` 的做法：在 `__init__` 里一次性判断形状是否相同（`use_res_connect`），只在相同时相加。在 MobileNet v2 的 17 个块中，这样的块有 10 个，与 torchvision 中的完全一致：

# %%
flags = [b.use_res_connect for b in v2.features[1:-1]]
print(sum(flags), "of", len(flags), "blocks add their input")
assert flags == [b.use_res_connect for b in theirs.features[1:-1]]
print(block(x16).shape)

# %% [markdown]
# ## 用 `+=` 搭建层的列表
#
# 用循环生成各层时，通常先把它们收集到一个列表里。对列表用 `+=`，是用右边对象里的**各个元素**扩展列表，所以单独一个层会引发 `TypeError`：`nn.Conv2d` 不是由元素组成的序列。

# %% tags=["raises-exception"] raises="TypeError"
from collections import OrderedDict

from tutorials_pkg.blocks.mobilenet import BasicConv2d, DepthwiseSeparableConv

layers = []
layers += nn.Conv2d(3, 32, 3, stride=2, padding=1)

# %% [markdown]
# 不过容器是可迭代的，所以同一行代码换成 `BasicConv2d`（一个 `nn.Sequential`）就不会报错：它把里面的三层拆开塞进列表，这三层也就不再属于原来的块。

# %%
layers = []
layers += BasicConv2d(3, 32, 3, stride=2)
print([type(item).__name__ for item in layers])
assert len(layers) == 3

# %% [markdown]
# 右边若是一个 `(name, module)` 对，它是含两个元素的序列，于是 `+=` 悄悄把名字和模块当成两个独立的元素加进去；直到用这个列表构建 `OrderedDict` 时才出错，抛出 `ValueError`（字符串 `"stem"` 被当成一个键值对，而它有四个字符）：

# %% tags=["raises-exception"] raises="ValueError"
layers = []
layers += ("stem", BasicConv2d(3, 32, 3, stride=2))
print([type(item).__name__ for item in layers])
nn.Sequential(OrderedDict(layers))

# %% [markdown]
# 要把这一对作为一个元素加进去：用 `append`（`MobileNetV1` 就是这样做的），或者在 `+=` 右边套上一个列表：

# %%
layers = []
layers.append(("stem", BasicConv2d(3, 32, 3, stride=2)))
layers += [("block1", DepthwiseSeparableConv(32, 64, 1))]
print(list(nn.Sequential(OrderedDict(layers))._modules))

# %% [markdown]
# ## 把 MobileNet v1「重构」成循环，得到的是另一个网络，而且两者都放不进 224×224
#
# 一篇广为流传的博客把 MobileNet v1 搭了两遍：先逐层手写，再「重构」成遍历配置列表的循环，列表里单独一个数表示步长 1，元组则给出步长。从它的注释看得出作者的设想：输入 224 × 224 × 3，1,000 个类别，最后的特征图是 7 × 7 × 1024，由 `F.avg_pool2d(x, 2)` 变成 1 × 1 × 1024，再交给 `nn.Linear(1024, num_classes)`。可是 2×2、步长 2 的窗口做不到这一点：它把 7×7 变成 3×3，所以作者设想的特征图尺寸本身就与分类器对不上。下面是我们用 [MobileNet 一页](../mobilenet/)的块重现的这两个版本，注释照搬原文的设想：

# %%
from tutorials_pkg.blocks.mobilenet import (
    MobileNetV1WithFixedPool,
    MobileNetV1WithFixedPoolAndLastStride1,
)

SourceBlock(inspect.getsource(MobileNetV1WithFixedPool) + "\n\n"
            + inspect.getsource(MobileNetV1WithFixedPoolAndLastStride1))

# %% [markdown]
# 手写版本和论文表 1 中印错的那一行一样，给最后一个块步长 2；配置列表给的是步长 1。在 96×96 的图上两者都能运行，常用的几项快速检查也都通过：一个的权重能用 `strict=True` 加载进另一个（形状与步长无关），输出形状相同，输出的差别甚至不超过 1e-9，因为刚构建的模型的输出与分类器的偏置相差无几：

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
# `assert_same_network` 在差别所在的那一层找到了它：最后一个块的逐通道卷积，一个步长为 2，一个为 1（抛出 `AssertionError`）：

# %% tags=["raises-exception"] raises="AssertionError"
assert_same_network(hand, refactored, x96)

# %% [markdown]
# 在博客写明的 224×224 上，两者都在最后一层出错：分类器做矩阵乘法时抛出 `RuntimeError`。手写版本有六个步长为 2 的层，连 7×7 都到不了，最后是 4×4；池化成 2×2，就是 1024 × 2 × 2 = 4,096 个特征：

# %% tags=["raises-exception"] raises="RuntimeError"
x224 = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    hand(x224)

# %% [markdown]
# 循环版本只有五个，最后正是注释里的 7×7；用 2×2、步长 2 的窗口池化成 3×3，就是 1024 × 3 × 3 = 9,216 个特征，而不是 1,024 个（同样是 `RuntimeError`）：

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.no_grad():
    refactored(x224)

# %% [markdown]
# 特征数从哪里来，以及每个版本到底能接收哪些输入尺寸：`F.avg_pool2d(x, 2)` 把最后的特征图减半（向下取整），只有剩下 1×1 时分类器才得到它的 1,024 个特征，也就是最后的特征图必须是 2×2 或 3×3（1×1 的特征图根本无法池化）。手写版本能接收 65 到 192 像素，循环版本是 33 到 96；两者都接收不了 224，也接收不了 CIFAR 的 32×32：

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
# 在 32×32 的图上，两者最后都只剩 1×1 的特征图，2×2 的窗口无法池化：还没到分类器，`F.avg_pool2d` 就抛出 `RuntimeError`，报出的输出尺寸是 1024×0×0：

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.no_grad():
    refactored(torch.randn(1, 3, 32, 32))

# %% [markdown]
# 修正就是 MobileNet 一页的 [`MobileNetV1`](../mobilenet/#用配置表生成-mobilenet-v1)：只有一张配置表，不存在需要保持一致的第二个版本（逐层写出的版本用 `assert_same_network` 与它核对过）；最后一个步长按论文的尺寸一栏取 1；再用 `nn.AdaptiveAvgPool2d(1)` 把任意大小的特征图池化成 1×1，于是无论输入多大，分类器都能得到它的 1,024 个特征：

# %%
fixed = MobileNetV1(num_classes=10).eval()
with torch.no_grad():
    print([tuple(fixed(torch.randn(1, 3, size, size)).shape) for size in (96, 224, 320)])
