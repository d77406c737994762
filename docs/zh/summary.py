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
# # 模型结构概览（summary）
#
# `print(model)` 展示模型是怎样**搭建**的；summary 展示模型**运行**时发生了什么：每一层看到的形状、它的参数，以及总数。它的做法是在每个模块上挂一个 hook，然后跑一次前向传播。这件事简单到很容易做错，而流行的 `torchsummary` 包对一类常见的模型就做错了。本页复现这个 bug，解释原因，然后实现一个 summary：每个模块只列一次，每个参数只数一次，并且模型跑完之后和原来一模一样。
#
# 本页的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## torchsummary 的重复计数
#
# 模型常常把某一部分存成一个单独的属性 `self.base_model`，同时又把它放进一个按阶段分组的容器里。这两处注册的是**同一个**模块：只有一份权重。

# %%
import torch
from torch import nn


class TwoNames(nn.Module):
    def __init__(self):
        super().__init__()
        self.base_model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stages = nn.ModuleList([self.base_model])  # the same module, a second name
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.base_model(x).mean((2, 3)))


model = TwoNames()
unique = sum(p.numel() for p in model.parameters())
print("parameters:", unique)

# %% [markdown]
# `torchsummary` 1.5.1（PyPI 上的最后一个版本）把 `base_model` 的每一层都打印了两次，总参数量也把它们加了两遍：

# %%
import contextlib
import io
import re

from torchsummary import summary as torchsummary_summary

printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    torchsummary_summary(model, (3, 16, 16), device="cpu")
print(printed.getvalue())

total_line = re.search(r"Total params: ([\d,]+)", printed.getvalue())
reported = int(total_line.group(1).replace(",", ""))
base = sum(p.numel() for p in model.base_model.parameters())
assert reported == unique + base  # base_model counted once per name
print(f"torchsummary: {reported:,}; the model has {unique:,}")

# %% [markdown]
# ### 原因：`model.apply` 对每个父模块各访问一次
#
# `torchsummary` 用 `model.apply(register_hook)` 注册 hook。`Module.apply` 递归地对每个子模块调用这个函数，而 `children()` 只在**同一个父模块之内**跳过重复的模块。`base_model` 有两个父模块（模型本身和那个 `ModuleList`），所以 `apply` 会两次走到它以及它里面的每一层。每访问一次就多注册一个 forward hook；前向传播时每个 hook 都会触发，每次都添加一行，并把这一层的 `weight` 和 `bias` 加进总数。相比之下，`model.modules()` 和 `model.named_modules()` 会记住已经见过的模块，每个模块只给一次：

# %%
visits = []
model.apply(lambda module: visits.append(type(module).__name__))
print("apply visits:   ", visits)
print("modules() gives:", [type(m).__name__ for m in model.modules()])
assert visits.count("Conv2d") == 2
assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 1

# %% [markdown]
# ## 每个模块只数一次的 summary
#
# `tutorials_pkg.summary.summary` 接收模型，以及 `input_size` 和 `input_data` 二者之一（恰好一个）：`input_size` 是**包含** batch 维的形状（与 `torchinfo` 相同；会在模型所在的设备上生成随机输入），`input_data` 是你自己的张量或张量元组。它的不同之处：
#
# - 每个模块一行，来自 `named_modules()`（每个模块只出现一次，用它第一次注册时的名字；其他名字在备注里列出）；
# - 每个参数计入拥有它的第一行，所以各行加起来正好等于 `sum(p.numel() for p in model.parameters())`，共享（tied）的权重和模型自身的参数也不例外；
# - 每个模块一个 pre-hook 和一个 hook：它们统计调用次数（在 `forward` 里被调用两次的模块会被标出）并记录形状；
# - 前向传播在 eval 模式、`torch.no_grad()` 下运行，结束后每个模块恢复各自原来的模式；hook 在 `finally` 里移除，所以前向传播失败时也会移除。

# %%
from tutorials_pkg.summary import summary
from tutorials_pkg.source import show_source

show_source(summary)

# %%
result = summary(model, input_size=(1, 3, 16, 16))
print(result)
assert result.total_params == unique

# %% [markdown]
# 各行也是数据：`name`、`type`、`input_shape`、`output_shape`、`params`、`trainable_params`、`calls`（以及 `calls > 1` 时为真的 `reused`）、`aliases`：

# %%
conv_row = result.rows[2]
print(conv_row)
print("reused:", conv_row.reused)

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
# summary 不应改变它所描述的模型。下面是一个处于训练模式的模型，其中一部分被冻结在 eval 模式（就像你可能会冻结一个预训练的 stem）：summary 之后，每个模块都恢复了各自的模式，BatchNorm 的 running 统计量一个也没有变。

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

# %% [markdown]
# ## 实践中常见的错误
#
# ### `Sequential` 的切片是第二个名字
#
# 重复计数并不需要 `ModuleList`：对 `nn.Sequential` 切片会得到一个新的 `Sequential`，里面装的是**同样的**层。把切片存成属性（方便取特征的捷径），其中每一层就都被注册了两次：

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
# 每个模块、每个参数只数一次，就得到正确的数字，表格还会注明每一层在别处注册的名字：

# %%
fixed = summary(aliased, input_size=(1, 3, 16, 16))
print("\n".join(str(fixed).splitlines()[:6]))
assert fixed.total_params == unique_aliased

# %% [markdown]
# ### 在训练模式下做 summary 会改变 BatchNorm 统计量
#
# `torchsummary` 在模型当前的模式下、开着 autograd 跑前向传播。在训练模式下，每个 BatchNorm 都会根据随机输入更新它的 running mean 和 variance：你做了 summary 的模型，已经不是原来的模型了。

# %%
victim = TwoNames()
running_mean = victim.base_model[1].running_mean.clone()
with contextlib.redirect_stdout(io.StringIO()):
    torchsummary_summary(victim, (3, 16, 16), device="cpu")
moved = (victim.base_model[1].running_mean - running_mean).abs().max().item()
print("running_mean moved by up to", moved)
print("num_batches_tracked:", victim.base_model[1].num_batches_tracked.item())
assert moved > 0 and victim.base_model[1].num_batches_tracked.item() == 1

# %% [markdown]
# `summary` 在 eval 模式、`torch.no_grad()` 下运行，如上一节所示：统计量保持不变。

# %%
victim = TwoNames()
running_mean = victim.base_model[1].running_mean.clone()
summary(victim, input_size=(1, 3, 16, 16))
assert torch.equal(victim.base_model[1].running_mean, running_mean)
assert victim.base_model[1].num_batches_tracked.item() == 0 and victim.training

# %% [markdown]
# ### 只有 `model.eval()`，没有切换回去
#
# 手写的 summary 如果调用了 `model.eval()` 却忘了切换回去，模型就停留在 eval 模式：接下来的训练中 BatchNorm 被冻结、dropout 被关闭，而且没有任何提示。事后调用 `model.train()` 也不对：它会把你特意冻结在 eval 模式的部分也打开。

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
# `summary` 记住每个模块各自的模式，并用下面这个上下文管理器逐个模块地恢复：

# %%
from tutorials_pkg.summary import eval_mode

show_source(eval_mode)

# %%
frozen_stem.bn1.eval()
summary(frozen_stem, input_size=(1, 3, 64, 64))
assert frozen_stem.training and not frozen_stem.bn1.training

# %% [markdown]
# ### 输入对模型来说太小
#
# 每个池化层都把图像缩小一半。SqueezeNet 1.1 拿到 16×16 的输入，到第三个 max-pool 时就什么都不剩了。PyTorch 自己的报错来自池化层的深处；`summary` 则抛出 `ValueError`，指出出错的那一层和给定的输入形状：

# %% tags=["raises-exception"] raises="ValueError"
squeezenet = torchvision.models.squeezenet1_1(weights=None)
summary(squeezenet, input_size=(1, 3, 16, 16))

# %% [markdown]
# hook 已经移除，模型也没有变，所以换一个更大的输入就能正常运行；参数量与 torchvision 为 SqueezeNet 1.1 公布的一致：

# %%
small = summary(squeezenet, input_size=(1, 3, 64, 64))
print(f"{small.total_params:,}")
assert all(not m._forward_hooks and not m._forward_pre_hooks for m in squeezenet.modules())
published = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["num_params"]
assert small.total_params == published

# %% [markdown]
# ### 两种输入都给，或者都不给
#
# `input_size` 和 `input_data` 二选一。两个都传（或都不传）会抛出 `ValueError`，而不是悄悄地选用其中一个：

# %% tags=["raises-exception"] raises="ValueError"
summary(squeezenet, input_size=(1, 3, 64, 64), input_data=torch.randn(1, 3, 64, 64))
