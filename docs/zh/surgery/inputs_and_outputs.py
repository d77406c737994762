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
# # 额外的输入与输出
#
# 这是[修改模型](../)的第二页，接在换分类头、冻结主干之后：改变 ResNet-18 的输入和输出，每一处修改一开始计算的结果都和修改前的模型相同。

# %%
import copy

import torch
import torch.nn.functional as F
from torchvision.models import resnet18

from tutorials_pkg.digits import load_digits_tensors
from tutorials_pkg.source import show_source
from tutorials_pkg.surgery import replace_module

torch.manual_seed(0)
pixels, labels = load_digits_tensors()  # (1797, 1, 8, 8), in [0, 1]
images = F.interpolate(pixels, size=32, mode="bilinear").repeat(1, 3, 1, 1)

# %% [markdown]
# ## 第四个输入通道
#
# 带额外通道（深度、红外、掩码）的图片，需要一个接收四个通道的第一层卷积。卷积权重的形状是 `(out_channels, in_channels, kH, kW)`；`expand_input_channels` 构建更宽的层，把三个 RGB 切片复制进去，新的切片设为零。权重为零，意味着新通道一开始没有任何贡献：模型的计算结果和原来一样，训练会教它用上这个通道。

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
# 新的层要求四个通道，所以三通道的图片现在会失败，抛出给出形状的 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
rgbd(x)

# %% [markdown]
# ## 额外的输入
#
# 有时一个样本不只有一张图片：还有一个标量（比如年龄、曝光时间），或一小段元数据向量。一种简单的做法是在最后一层之前，把它拼接到图像特征上：
#
# ```mermaid
# flowchart LR
#     img([图片]) --> body["body：ResNet（到 avgpool 为止）"] --> feat["512 个特征"]
#     extra([extra：k 个数]) --> cat((拼接))
#     feat --> cat --> fc["fc：Linear(512 + k, 类别数)"] --> out([logits])
# ```
#
# `ExtraInputNet` 就是这样做的。它新的 `fc` 对 512 个特征保留原来的权重，对额外输入的权重为零，所以一开始它就等于被包装的模型。不传 `head=` 时，它取模型中最后一个 `nn.Linear`（由 `last_linear_name` 找出）；在 torchvision 的分类模型里，这就是分类器。

# %%
from tutorials_pkg.surgery import ExtraInputNet

show_source(ExtraInputNet)

# %% [markdown]
# 这里的额外输入是每个数字用了多少墨水，每个样本一个标量。logits 与原模型的结果在浮点舍入误差内相同；之所以不是逐位相同，是因为 513 列的矩阵乘法与 512 列的相比，求和的顺序不同。

# %%
base = resnet18(weights=None, num_classes=10).eval()
with_extra = ExtraInputNet(copy.deepcopy(base), extra_features=1).eval()
ink = images[:4].mean(dim=(1, 2, 3))  # shape (4,): one scalar per sample
logits = with_extra(images[:4], ink)
difference = (logits - base(images[:4])).abs().max().item()
print(logits.shape, f"largest difference: {difference:.1e}")
assert difference < 1e-5

# %% [markdown]
# 额外输入的个数不对时，会抛出 `ValueError`，并给出需要的形状：

# %% tags=["raises-exception"] raises="ValueError"
with_extra(images[:4], torch.zeros(4, 3))

# %% [markdown]
# 最后一个 `nn.Linear` 在 ResNet 里是 `fc`，在[用块搭建 U-Net 与 MobileNet 一章](../../blocks/mobilenet/#用配置表生成-mobilenet-v1)的 `MobileNetV1` 里是 `classifier`，在 `MobileNetV2` 和 torchvision 的 `mobilenet_v2` 里是（dropout 之后的）`classifier.1`；所以若以 `head="fc"` 为默认值，只适合第一种。`head=` 给的名字不存在时，像 `replace_module` 一样抛出 `KeyError`，并列出相近的名字：

# %%
from tutorials_pkg.blocks.mobilenet import MobileNetV1, MobileNetV2
from tutorials_pkg.surgery import last_linear_name

for built in (base, MobileNetV1(), MobileNetV2()):
    print(type(built).__name__, "->", last_linear_name(built))

# %% tags=["raises-exception"] raises="KeyError"
ExtraInputNet(MobileNetV2(), extra_features=1, head="classifier.2")

# %% [markdown]
# ## 额外的输出
#
# 想在 logits 之外同时拿到倒数第二层的特征（用作嵌入向量、第二个损失或最近邻检索），`ExtraOutputNet` 原样运行模型，并用一个前向预钩子（forward pre-hook：在某层的 `forward` 之前运行、拿到该层输入的函数）记下最后一层收到的输入，每次调用后都把钩子移除。所以第一个输出就是模型自己的输出，无论它的 `forward` 在最后一层之后还做了什么（`log_softmax`、缩放），模型本身也保持原样：

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
# `ExtraInputNet` 则会接管传给它的模型：它的主体就是这个模型本身，只是最后一层被替换了。所以它的例子都传入 `copy.deepcopy(base)`；[实践中常见的错误](../in_the_wild/#别名而不是副本)一页会演示不这样做的后果。它的 `state_dict` 键以 `body.` 和 `fc.` 开头，`ExtraOutputNet` 的则以 `model.` 开头，所以要先把训练好的权重加载进模型，再包装。

# %% [markdown]
# ### 只有调用模块时钩子才会运行
#
# 钩子在模块被**调用**（`layer(x)`）时运行：`nn.Module.__call__` 在 `forward` 前后运行这些钩子。直接调用 `layer.forward(x)` 只做计算，所有钩子都被跳过：

# %%
from torch import nn

calls = []
layer = nn.Linear(4, 2)
handle = layer.register_forward_hook(lambda module, args, output: calls.append(module))
layer(torch.randn(1, 4))
print("after layer(x):", len(calls), "hook call")
layer.forward(torch.randn(1, 4))
print("after layer.forward(x):", len(calls), "hook call")
handle.remove()
assert len(calls) == 1

# %% [markdown]
# 所以，如果模型的 `forward` 里写的是 `self.fc.forward(x)`，`ExtraOutputNet` 的前向预钩子就永远看不到分类头的输入。它不会返回空结果，而是数一数调用次数，抛出 `RuntimeError`，指出分类头运行了 0 次。在 `forward` 里要写 `self.fc(x)`，不要写 `self.fc.forward(x)`。

# %% tags=["raises-exception"] raises="RuntimeError"
class CallsForwardDirectly(nn.Module):  # its forward calls fc.forward, not fc
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.fc.forward(self.flatten(x))


ExtraOutputNet(CallsForwardDirectly())(images[:4])
