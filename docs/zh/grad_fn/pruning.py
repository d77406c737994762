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
# 这是[用 grad_fn 追踪网络结构](../)的第三页，前一页是[画出计算图](../drawing/)。本页读同一次追踪的结果，找出必须一起剪的通道。网络和输入与[第一页](../#从节点回到模块)相同：

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
# 结构化剪枝删除的是整个通道：删掉一个卷积的第 *k* 个输出通道，就要删掉它后面 BatchNorm 的第 *k* 个通道，以及每个读取它的层的第 *k* 个输入通道。有了残差加法，就得一组层一起删：`a + b` 要求 `a` 和 `b` 的通道相同，所以从产生 `a` 的卷积里删掉第 *k* 个通道，就必须从产生 `b` 的卷积里也删掉，还要从读取这个和的所有层里删掉。`coupled_channel_groups` 从计算图里找出这些组：从输入走到输出，卷积或全连接层开启新的通道，逐元素的运算（加法、激活、池化、BatchNorm、depthwise 卷积）把它所有输入的通道并成一组。

# %%
from tutorials_pkg.grad_fn import coupled_channel_groups

show_source(coupled_channel_groups)

# %%
for group in coupled_channel_groups(trace):
    print(group)

# %% [markdown]
# 第一组是第一个 block 的残差主干（[计算图](../drawing/#tiny_resnet-的计算图)里的第一个 `+`）：stem 卷积及其 BatchNorm，以及这个 block 的 `conv2` 及其 BatchNorm，都写入同样的 8 个通道。
#
# ## ResNet-18 的 `layer1`
#
# ResNet-18 的 `layer1` 是同一回事，只是规模更大：stem 和两个 block 的第二个卷积共用 64 个通道，由四个卷积读取。

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
# 只剪组里的一个卷积（这里让 `layer1.0.conv2` 及其 BatchNorm 失去第 0 个通道），形状在加法处就对不上了，抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
from tutorials_pkg.grad_fn import ChannelGroup, prune_channel_group

alone = ChannelGroup(["layer1.0.conv2", "layer1.0.bn2"], [])
prune_channel_group(resnet, alone, drop=[0])
resnet(image)

# %% [markdown]
# ## 把整组一起剪
#
# 把整个组一起剪，也就是所有写入这个通道的层和所有读取它的层，得到的更小的网络可以正常运行：

# %%
show_source(prune_channel_group)

# %%
resnet = torchvision.models.resnet18(weights=None).to(device).eval()
before = sum(p.numel() for p in resnet.parameters())
prune_channel_group(resnet, stream, drop=list(range(16)))  # 64 -> 48 channels
after = sum(p.numel() for p in resnet.parameters())
print(resnet(image).shape, f"parameters {before:,} -> {after:,}")
assert resnet.layer1[1].conv2.out_channels == 48
assert resnet.layer2[0].conv1.in_channels == 48

# %% [markdown]
# 删哪些通道（权重最小的，或对损失影响最小的）由剪枝方法决定；哪些层必须一起删，由计算图决定。
