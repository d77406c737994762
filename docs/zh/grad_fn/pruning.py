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
# # grad_fn：必须一起剪的通道
#
# 这是[用 grad_fn 追踪网络结构](../)的第三页，前一页是[画出计算图](../drawing/)。本页读同一次追踪的结果，找出必须一起剪的通道：先用[第一页](../#从节点回到模块)的网络和输入，再换成一个小型 YOLO 式检测网络，也就是本章针对的那篇博客所剪的那类网络：

# %%
import torch

from tutorials_pkg.demo_models import tiny_resnet
from tutorials_pkg.grad_fn import trace_grad_fn
from tutorials_pkg.runtime import default_device
from tutorials_pkg.source import show_source

torch.manual_seed(0)
device = default_device()
model = tiny_resnet().to(device)
x = torch.randn(2, 3, 32, 32, device=device)
trace = trace_grad_fn(model, x)  # one forward pass, as on the drawing page

# %% [markdown]
# ## 残差加法绑定的通道
#
# 结构化剪枝删除的是整个通道：删掉一个卷积的第 *k* 个输出通道，就要删掉它后面 BatchNorm 的第 *k* 个通道，以及每个读取它的层的第 *k* 个输入通道。有了残差加法，就得一组层一起删：`a + b` 要求 `a` 和 `b` 的通道相同，所以从产生 `a` 的卷积里删掉第 *k* 个通道，就必须从产生 `b` 的卷积里也删掉，还要从读取这个和的所有层里删掉。`coupled_channel_groups` 从追踪结果里找出这些组；每一组列出产生或携带这些通道的层、读取它们的层、通道数，以及不能剪时的原因：

# %%
from tutorials_pkg.grad_fn import coupled_channel_groups

for group in coupled_channel_groups(trace):
    print(group)

# %% [markdown]
# 第一组是第一个 block 的残差主干（[计算图](../drawing/#tiny_resnet-的计算图)里的第一个 `+`）：stem 卷积及其 BatchNorm，以及这个 block 的 `conv2` 及其 BatchNorm，都写入同样的 8 个通道。最后一组是分类层：它的 10 个通道就是模型的输出，所以被拒绝。
#
# ## 这些组是怎样找出来的
#
# 前向传播产生的每个张量，它的每个元素都得到一个*标签*：它携带的是哪个通道（某一层输出的第 *k* 个通道）。从输入到输出遍历计算图，每个节点的标签由它的输入的标签推出：
#
# - 卷积层或全连接层产生新的通道：新的标签；它还记下自己读取的标签，即它的输入通道（`flatten` 之后，一个通道在 `Linear` 里对应 H×W 个特征）；
# - BatchNorm、GroupNorm 和 PReLU 携带它们输入的通道；分组卷积和逐通道卷积把输入的每一组和输出的同一组绑在一起；
# - 只搬动数值的运算（拼接、切分、view、permute、池化、上采样）在标签上重放一遍，于是标签和数值一样移动；
# - 逐元素的运算（加法、乘法、激活）把它合并的标签并在一起：这些通道必须一起剪；
# - 其余的一切（注意力里的矩阵乘法、在通道上做归一化的 LayerNorm、追踪没有映射的层类型、在固定位置切片通道）把它读取的东西标为不可剪，并说明原因。
#
# 遍历本身很短：

# %%
from tutorials_pkg.grad_fn import walk_channels

show_source(walk_channels)

# %% [markdown]
# 它是 `coupled_channel_groups` 的核心；`tutorials_pkg/grad_fn/pruning.py` 里其余的代码是每种层和每种运算的规则、把标签并在一起的并查集、分组（标签到达同样几层的通道组成一组，每个通道记下它在每一层里的位置）以及剪切本身。`python -m benchmarks.pruning --package` 检查 torchvision 全部分类模型、本包的 `UNet` 和下面的检测网络的每一组：剪掉之后，输出必须与原模型把这些通道置零后的输出相同。
#
# ## 拼接与切分
#
# 在用块搭建的网络里，两条规则承担了大部分工作。`torch.cat([a, b], 1)` 之后，`b` 的第 *k* 个通道是下一层读取的第 *a.shape[1] + k* 个通道；标签像数值一样拼接，于是记下了这一点。`chunk` 按通道数算出切分的位置，所以各段必须剪掉同样的通道，否则切分点会移动；按代码里写死的大小切分，就完全不能剪：

# %%
from tutorials_pkg.grad_fn.pruning import concatenated, split

show_source(concatenated, split)

# %% [markdown]
# ## ResNet-18 的 `layer1`
#
# ResNet-18 的 `layer1` 是完整规模的残差主干：stem 和两个 block 的第二个卷积共用 64 个通道，由四个卷积读取。

# %%
import torchvision

resnet = torchvision.models.resnet18(weights=None).to(device).eval()
image = torch.randn(1, 3, 64, 64, device=device)
resnet_groups = coupled_channel_groups(trace_grad_fn(resnet, image))
stream = next(group for group in resnet_groups if "layer1.0.conv2" in group.layers)
print("layers:   ", stream.layers)
print("consumers:", stream.consumers)
assert stream.layers == ["conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2",
                         "layer1.1.conv2", "layer1.1.bn2"]

# %% [markdown]
# ## 只剪其中一层
#
# 手工构造的组按写下的样子剪。只剪主干里的一个卷积（这里让 `layer1.0.conv2` 及其 BatchNorm 失去第 0 个通道），形状在加法处就对不上了，抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
from tutorials_pkg.grad_fn import ChannelGroup, prune_channel_group

alone = ChannelGroup(["layer1.0.conv2", "layer1.0.bn2"], [])
prune_channel_group(resnet, alone, drop=[0])
resnet(image)

# %% [markdown]
# ## 剪切各层
#
# `prune_channel_group` 剪掉一组里的每一层：每个通道在每一层里的位置都记在组里。它先算好每一层的新权重，全部准备好之后才改动模型，所以它拒绝的组，或者来自更早一次追踪的组，都不会改动模型。各种卷积的维度不同：转置卷积把输出通道放在权重的第 1 维，分组卷积只能整组地剪：

# %%
from tutorials_pkg.grad_fn import cut_conv

show_source(cut_conv)

# %%
resnet = torchvision.models.resnet18(weights=None).to(device).eval()
before = sum(p.numel() for p in resnet.parameters())
prune_channel_group(resnet, stream, drop=list(range(16)))  # 64 -> 48 channels
after = sum(p.numel() for p in resnet.parameters())
print(resnet(image).shape, f"parameters {before:,} -> {after:,}")
assert resnet.layer1[1].conv2.out_channels == 48
assert resnet.layer2[0].conv1.in_channels == 48

# %% [markdown]
# ## 一个 YOLO 式网络
#
# 那篇博客剪的是 YOLOv5：它由 Conv-BN-SiLU 单元、把通道切开再把各条路径拼接起来的模块、SPPF 模块（三个最大池化，输出拼接在一起）、跨尺度上采样并拼接的 neck，以及检测头组成。`tiny_yolo` 有同样的组成部分，只是规模小（随机权重：`weights=None`）。它的 C2f 和 SPPF 模块：

# %%
from tutorials_pkg.grad_fn.yolo import C2f, SPPF

show_source(C2f, SPPF)

# %%
from tutorials_pkg.grad_fn import tiny_yolo

yolo = tiny_yolo(weights=None).eval()
frame = torch.randn(1, 3, 256, 256)
yolo_groups = coupled_channel_groups(trace_grad_fn(yolo, frame))
for number, group in enumerate(yolo_groups):
    convs = [name.removesuffix(".conv") for name in group.layers if not name.endswith(".bn")]
    print(f"{number:2} {group.channels:4} channels  {' '.join(convs):44} {group.refused or ''}")
assert [g.refused is not None for g in yolo_groups].count(True) == 2  # the two outputs

# %% [markdown]
# 第 2 组是第一个 C2f：`cv1` 的通道分成两半（组里的一个通道是每一半里各一个通道，所以 `chunk` 仍然从正中切开），以及瓶颈块的输出，它被加到第二半上。被拒绝的两组是检测头的输出：每个格子 4 个框坐标和 80 个类别分数。
#
# ## 旧规则在它上面失效
#
# 本页的第一版用一条更简单的规则找组：卷积开启新的通道，拼接也开启新的通道，其余运算把它所有输入的通道并成一组。在 SPPF 上，这条规则列出的 `cv1` 没有任何层读取它，因为 `cv2` 读的是一次拼接：

# %%
from tutorials_pkg.grad_fn import coupled_channel_groups_where_cat_starts_new

old_groups = coupled_channel_groups_where_cat_starts_new(trace_grad_fn(yolo, frame))
sppf = next(group for group in old_groups if "stage3.2.cv1.conv" in group.layers)
print(sppf)

# %% [markdown]
# 剪掉这一组，会从拼接起来的四张特征图里各去掉一个通道，而 `cv2` 仍然期待原来的通道数：下一次前向传播时抛出 `RuntimeError`。

# %% tags=["raises-exception"] raises="RuntimeError"
import copy

broken = copy.deepcopy(yolo)
prune_channel_group(broken, sppf, drop=[0])
broken(frame)

# %% [markdown]
# ## 把它瘦身 30 %
#
# Network slimming 剪掉 BatchNorm 缩放系数 |γ| 最小的通道。`weights=None` 时每个 γ 都是 1，排不出先后，所以这里用固定随机种子生成的值代替训练好的网络里的 γ。`batchnorm_scale` 把一组里各个 BatchNorm 的 |γ| 加起来；在每个能剪的组里，和最小的 30 % 的通道被剪掉，一次调用全部完成：

# %%
from torch import nn

from tutorials_pkg.grad_fn import batchnorm_scale, prune_channel_groups

torch.manual_seed(0)
for layer in yolo.modules():
    if isinstance(layer, nn.BatchNorm2d):
        nn.init.uniform_(layer.weight, 0.0, 1.0)  # stands in for trained scales

plan = []
for group in yolo_groups:
    if group.refused is None:
        smallest = batchnorm_scale(yolo, group).argsort()[: int(0.3 * group.channels)]
        plan.append((group, smallest.tolist()))
slim = copy.deepcopy(yolo)
prune_channel_groups(slim, plan)
print(f"{len(plan)} groups, {sum(len(drop) for _, drop in plan)} channels pruned")

# %% [markdown]
# 剪枝前后的参数量和乘加次数（`count_macs` 来自 [MobileNet 一页](../../blocks/mobilenet/)，用 `FlopCounterMode` 统计）：

# %%
from tutorials_pkg.blocks.mobilenet import count_macs

for label, net in (("before", yolo), ("after", slim)):
    parameters = sum(p.numel() for p in net.parameters())
    print(f"{label:6} parameters {parameters:>9,}  multiply-adds {count_macs(net, frame):>12,}")

# %% [markdown]
# 剪对了通道的证明：瘦身后的网络，输出与原网络把这些通道在产生它们的每一处都置零（`zero_channel_groups`：它们的权重、偏置和 BatchNorm 缩放系数）之后的输出相同：

# %%
from tutorials_pkg.grad_fn import zero_channel_groups

zeroed = copy.deepcopy(yolo)
zero_channel_groups(zeroed, plan)
with torch.no_grad():
    for got, expected in zip(slim(frame), zeroed(frame)):
        print(tuple(got.shape), "same as the zeroed original:",
              torch.allclose(got, expected, rtol=1e-4, atol=1e-5))
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)

# %% [markdown]
# 再看在 CPU 上一次前向传播的时间，输入是 YOLO 常用的 640×640，评估模式、不计算梯度（10 次运行的中位数；这个单元格的数字取决于构建网页的机器）。乘加次数少了，时间不一定按比例减少：不是 8 的倍数的通道数运行效率较低，所以要在实际部署的硬件上测量：

# %% tags=["measured"]
from tutorials_pkg.measure import median_seconds_each

large = torch.randn(1, 3, 640, 640)
with torch.no_grad():
    times = median_seconds_each([lambda: yolo(large), lambda: slim(large)], repeats=10)
print(f"before {times[0] * 1e3:.0f} ms, after {times[1] * 1e3:.0f} ms")

# %% [markdown]
# 删哪些通道（缩放系数最小的，或对损失影响最小的）由剪枝方法决定；哪些层必须一起删，由计算图决定。剪枝之后，还要微调网络，把这些通道承载的东西找回来。
