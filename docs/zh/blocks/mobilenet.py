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
# # MobileNet v1 与 v2
#
# 这是[用块搭建 U-Net 与 MobileNet](../)的第二页，接在 [U-Net](../) 之后：这个网络的几十层由一个遍历配置表的循环生成，并与 MobileNet 论文和 torchvision 的 MobileNet v2 核对。
#
# MobileNet（Howard 等，2017，"MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications"）把除第一层以外的每个 3×3 卷积换成**深度可分离卷积**（depthwise separable convolution）：先是一个 3×3 的**逐通道**（depthwise）卷积，对每个通道单独滤波（`groups=in_channels`，每个通道一个 3×3 滤波器）；再是一个 1×1 的**逐点**（pointwise）卷积，把通道混合起来。两者都是一个 `BasicConv2d`：卷积、`BatchNorm`、激活。`BasicConv2d` 是 `nn.Sequential` 的子类，和 torchvision 的 `Conv2dNormActivation` 一样，所以它的层名为 `0`、`1`、`2`；`DepthwiseSeparableConv` 用 `OrderedDict` 给它的两半命名，所以某一层的权重名形如 `features.block2.depthwise.0.weight`。它们的源代码随下面的 MobileNet v1 一起给出。

# %%
import torch

from tutorials_pkg.definition import count_parameters
from tutorials_pkg.runtime import default_device
from tutorials_pkg.source import show_source

torch.manual_seed(0)  # the random weights and inputs below
device = default_device()

# %% [markdown]
# ## 手写的 MobileNet v1
#
# 论文的表 1 列出一个 32 通道、步长（stride）为 2 的 3×3 卷积，之后是 13 个深度可分离层。每层写一行（这里只用 `inspect.getsource` 显示这个类本身：它用来对比，而不是用来复制）：

# %%
import inspect

from tutorials_pkg.blocks.mobilenet import MobileNetV1Flat
from tutorials_pkg.source import SourceBlock

SourceBlock(inspect.getsource(MobileNetV1Flat))

# %% [markdown]
# ## 用配置表生成 MobileNet v1
#
# 这 13 行只有两个数不同：输出通道数和步长。把它们放进一张表，由循环生成各层，层名仍通过 `OrderedDict` 给出。有了循环，宽度乘子（论文中的 α）也只需改一行。应该复制的是这个版本：下面的源代码连同用到的块和 import 一起给出。论文表 1 在最后一个 depthwise 行印的是步长 2，而它自己的尺寸一栏仍是 7×7；配置表按尺寸取步长 1，[tensorflow/models#1997](https://github.com/tensorflow/models/issues/1997) 也指出了这一点，而且只有这样，下面数出的乘加次数才与论文一致。

# %%
from tutorials_pkg.blocks.mobilenet import MobileNetV1

show_source(MobileNetV1)

# %% [markdown]
# 训练模式下的 BatchNorm 要求每个通道不止一个值，而五个步长为 2 的层会把 32×32 及更小的图变成 1×1。所以只有一张这样的图的批量，会停在第一个遇到 1×1 特征图的 BatchNorm 里，报的是 torch 自己的错误信息；`check_training_batch`（`MobileNetV2` 也调用它）在任何一层运行之前就拦下它，抛出说明该怎么改的 `ValueError`。`num_classes` 小于 1 时，模型在构建时就会被拒绝。

# %% tags=["raises-exception"] raises="ValueError"
MobileNetV1(num_classes=10).train()(torch.randn(1, 3, 32, 32))

# %% [markdown]
# ## 两个版本是同一个网络
#
# `assert_same_network` 检查三件事，遇到第一处不同就停下。层相同：按顺序比较每个子模块的名字、类型和设置（也就是 `print(model)` 显示的内容，步长也在其中）。权重的名字和形状相同：一个模型的 `state_dict` 能用 `strict=True` 加载进另一个。对同一个输入，每一层的输出都相同（用前向钩子记录）。之所以比较每一层而不只是最后一层：刚构建好的 MobileNet 处于评估模式时，`BatchNorm` 的统计量还是初始的均值 0、方差 1，而在 PyTorch 的默认初始化下，激活值一层比一层小，最终输出与分类器的偏置相差不过 1e-10，无论前面各层算了什么。

# %%
from tutorials_pkg.blocks.mobilenet import assert_same_network

show_source(assert_same_network)

# %%
loop, flat = MobileNetV1().eval(), MobileNetV1Flat().eval()
x = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    out = loop(x)
print(f"output minus the classifier's bias: at most {(out[0] - loop.classifier.bias).abs().max().item():.1e}")
assert_same_network(loop, flat, x)
print(f"same network; parameters: loop {count_parameters(loop):,}, flat {count_parameters(flat):,}")
assert count_parameters(loop) == count_parameters(flat)

# %% [markdown]
# ## 与 MobileNet 论文核对
#
# `count_macs` 用 `torch.utils.flop_counter.FlopCounterMode` 统计一次前向传播的乘加次数（multiply-add，MAC）；它把每次乘加算作两次浮点运算（一次乘、一次加）：

# %%
from tutorials_pkg.blocks.mobilenet import count_macs

show_source(count_macs)

# %% [markdown]
# 论文给出 420 万（4.2 M）参数、在 224×224 下 5.69 亿（569 M）次乘加（表 1 的网络；宽度乘子和更小的输入见表 6 和表 7）：

# %%
paper = {  # (width_mult, input size): (million mult-adds, million parameters)
    (1.0, 224): (569, 4.2), (0.75, 224): (325, 2.6), (0.5, 224): (149, 1.3),
    (0.25, 224): (41, 0.5), (1.0, 192): (418, 4.2),
}
for (width_mult, size), figures in paper.items():
    model = MobileNetV1(width_mult=width_mult).eval()
    macs = count_macs(model, torch.randn(1, 3, size, size)) / 1e6
    params = count_parameters(model) / 1e6
    print(f"alpha {width_mult}, {size}x{size}: {macs:.1f} M mult-adds, {params:.2f} M parameters;"
          f" paper: {figures[0]} M, {figures[1]} M")
    assert (round(macs), round(params, 1)) == figures
assert count_parameters(loop) == 4_231_976

# %% [markdown]
# ## 与 torchvision 同名的 MobileNet v2
#
# MobileNet v2（Sandler 等，2018）用的是同样的 `BasicConv2d`，这里的激活是 ReLU6。它的块叫**倒残差块**（inverted residual）：先用 1×1 卷积扩大通道数，再做 3×3 depthwise 滤波，最后用一个不带激活的 1×1 卷积投影回去。只有当输入和输出形状相同（步长为 1 且通道数相同）时，它才把输入加到输出上。模块名与 `torchvision.models.mobilenet_v2` 一致：一个名为 `features` 的按位置命名的 `nn.Sequential`，每个块的层放在 `conv` 里，`classifier` 由 dropout 和一个线性层组成。

# %%
from tutorials_pkg.blocks.mobilenet import MobileNetV2

show_source(MobileNetV2)

# %% [markdown]
# `state_dict` 的键就是 torchvision 的键，所以权重可以用 `strict=True` 双向加载；对同一个输入，两个模型算出的特征（分类器的输入）和输出都逐位相同。之所以连特征也比较，是因为正如上面所见，刚构建的模型的输出本身说明不了多少：

# %%
import torchvision

ours = MobileNetV2().eval().to(device)
theirs = torchvision.models.mobilenet_v2(weights=None).eval().to(device)
print(list(ours.state_dict())[:5])
x = torch.randn(2, 3, 224, 224, device=device)
theirs.load_state_dict(ours.state_dict(), strict=True)  # ours -> torchvision
with torch.no_grad():
    assert torch.equal(ours.features(x), theirs.features(x)) and torch.equal(ours(x), theirs(x))
other = torchvision.models.mobilenet_v2(weights=None).eval().to(device)
ours.load_state_dict(other.state_dict(), strict=True)  # torchvision -> ours
with torch.no_grad():
    assert torch.equal(ours.features(x), other.features(x)) and torch.equal(ours(x), other(x))
print("same features and output both ways")

# %% [markdown]
# 规模核对：torchvision 在权重的元数据（不需要下载）里记录这个模型有 3,504,872 个参数、0.301 G 次运算；MobileNet v2 论文给出 224×224 下 3 亿（300 M）次乘加。torchvision 的文档把这一栏标为 「GFLOPS」，但这 0.301 G 其实也是乘加次数：按浮点运算计，每次乘加是两次运算（一次乘、一次加），`FlopCounterMode` 报告的正是这个数（它给卷积的计算公式最后乘了 `* 2`），这里是 0.602 G；`count_macs` 把它除以 2。

# %%
from torch.utils.flop_counter import FlopCounterMode

meta = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta
x1 = torch.randn(1, 3, 224, 224, device=device)
macs = count_macs(ours, x1)
counter = FlopCounterMode(display=False)
with counter, torch.no_grad():
    ours(x1)
print(f"parameters: {count_parameters(ours):,} (torchvision: {meta['num_params']:,})")
print(f"mult-adds:  {macs / 1e6:.1f} M (torchvision: {meta['_ops']} G, paper: 300 M)")
print(f"FLOPs:      {counter.get_total_flops() / 1e9:.3f} G, two per mult-add")
assert count_parameters(ours) == count_parameters(theirs) == meta["num_params"] == 3_504_872
assert round(macs / 1e9, 3) == meta["_ops"] and abs(macs / 300e6 - 1) < 0.01
assert counter.get_total_flops() == 2 * macs
