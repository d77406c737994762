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
# `print(model)` 展示模型是怎样**搭建**的；summary 展示模型**运行**时发生了什么：每一层看到的形状、它的参数，以及总数。做法是在每个模块上挂一个钩子（hook），再跑一次前向传播。道理不难，细节却容易出错：流行的 `torchsummary` 包遇到一类常见的模型，会把某些层打印两遍。本页复现这个问题，改好问题背后的模型，再实现一个 summary：每个模块只列一次，每个参数只数一次，运行之后模型和原来完全一样。
#
# 本页的每一段输出，都是构建网站时实际运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## torchsummary 的重复计数
#
# 一个流传很广的 `torchsummary` 问答里，模型是这样写的：先建一个 resnet18，存成 `self.base_model`，再把它的前三层（`conv1`、`bn1`、`relu`）放进一个叫 `layer0` 的 `Sequential`。`forward` 只用 `layer0`。

# %%
from tutorials_pkg.demo_models import ResNet18StemKeepingBaseModel
from tutorials_pkg.source import show_source

show_source(ResNet18StemKeepingBaseModel)

# %% [markdown]
# `torchsummary` 1.5.1（PyPI 上的最后一个版本）把这三层各打印两次，总参数量也把它们加了两遍：`forward` 实际用到 9,536 个参数，它报 19,072 个。

# %%
import contextlib
import io
import re

import torch
from torch import nn
from torchsummary import summary as torchsummary_summary

torch.manual_seed(0)
kept = ResNet18StemKeepingBaseModel()
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    torchsummary_summary(kept, (3, 32, 32), device="cpu")
print(printed.getvalue())

total_line = re.search(r"Total params: ([\d,]+)", printed.getvalue())
reported = int(total_line.group(1).replace(",", ""))
used = sum(p.numel() for p in kept.layer0.parameters())
assert reported == 2 * used == 19_072  # conv1, bn1 and relu hooked once per parent

# %% [markdown]
# ### 原因：`model.apply` 对每个父模块各访问一次
#
# `torchsummary` 用 `model.apply(register_hook)` 注册钩子。`Module.apply` 递归地对每个子模块调用这个函数，而 `children()` 只在**同一个父模块之内**跳过重复的模块。`conv1`、`bn1` 和 `relu` 有两个父模块（`base_model` 和 `layer0`），所以 `apply` 会各走到它们两次。每访问一次就多注册一个前向钩子；前向传播时每个钩子都会触发，每次都添加一行，并把这一层的 `weight` 和 `bias` 加进总数。相比之下，`model.modules()` 和 `model.named_modules()` 会记住已经见过的模块，每个模块只给一次：

# %%
visits = []
kept.apply(lambda module: visits.append(type(module).__name__))
print("apply visits Conv2d:   ", visits.count("Conv2d"), "times")
print("modules() gives Conv2d:", sum(isinstance(m, nn.Conv2d) for m in kept.modules()), "times")
assert visits.count("Conv2d") == 20 + 1  # resnet18 has 20 convolutions; conv1 a second time

# %% [markdown]
# ## 要改的是模型，而不只是工具
#
# 那个问答的回答改的是工具（每个模块只挂一次钩子）。模型本身的问题更大：`self.base_model = ...` 把整个 resnet18 都**注册**进了模型。它的 11,689,512 个参数都在 `parameters()` 里，优化器会拿到全部参数；它的 122 个 `state_dict` 条目每次保存 checkpoint 都会写进去，旁边还有 `layer0` 对同样三层的 6 个条目。我们自己的 summary（下一节）用一张表就能看出问题：`base_model` 占了几乎全部参数，却是 `not called`。（`layer0` 的三层计在最先注册它们的地方，也就是 `base_model` 里，所以 `layer0` 自己那一行显示 `--`。）

# %%
from tutorials_pkg.summary import summary

diagnosis = summary(kept, input_size=(1, 3, 32, 32))
print(diagnosis.table(max_depth=1))
rows = {row.name: row for row in diagnosis.rows}
assert rows["base_model"].calls == 0 and diagnosis.total_params == 11_689_512
print("state_dict entries:", len(kept.state_dict()))
assert len(kept.state_dict()) == 128

# %% [markdown]
# 改法是把 `base_model` 放在局部变量里：`layer0` 持有的三层仍然注册在模型中，resnet18 的其余部分在 `__init__` 返回后就被回收了。

# %%
from tutorials_pkg.demo_models import ResNet18Stem

show_source(ResNet18Stem)

# %%
fixed_stem = ResNet18Stem()
print(summary(fixed_stem, input_size=(1, 3, 32, 32)).table(max_depth=1))
print(sorted(fixed_stem.state_dict()))
assert sum(p.numel() for p in fixed_stem.parameters()) == used == 9_536
assert len(fixed_stem.state_dict()) == 6

# %% [markdown]
# 在 `DistributedDataParallel` 下，用不到的参数就不只是浪费，而是错误：DDP 要等每个参数的梯度，第二个训练步会抛出 `RuntimeError`，提示传入 `find_unused_parameters=True`（这只会把问题掩盖起来，而且每一步都要多花时间）。一个进程就能看到这个错误：

# %% tags=["raises-exception"] raises="RuntimeError"
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
try:
    ddp = DistributedDataParallel(ResNet18StemKeepingBaseModel())
    for step in range(2):
        ddp(torch.randn(2, 3, 32, 32)).sum().backward()
finally:
    dist.destroy_process_group()

# %% [markdown]
# 改好的模型不需要这个参数，在 DDP 下可以正常训练：

# %%
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
try:
    ddp = DistributedDataParallel(ResNet18Stem())
    for step in range(2):
        ddp(torch.randn(2, 3, 32, 32)).sum().backward()
finally:
    dist.destroy_process_group()
print("two steps, no unused parameters")

# %% [markdown]
# ### torchsummary 的默认值：`device="cuda"`，输入不带 batch 维
#
# 调用 `torchsummary` 之前还要知道两件事。它的 `device` 默认是 `"cuda"`：有 CUDA 时，它在 GPU 上生成随机输入，模型如果还留在 CPU 上就会出错（没有 CUDA 时，它不声不响地改用 CPU）。它的 `input_size` **不带** batch 维：它自己生成一个大小为 2 的 batch（`torch.rand(2, *input_size)`），打印时把 batch 写成 `-1`。`torchinfo` 和下面的 summary 接收的都是**带** batch 维的形状。

# %%
import inspect

print(inspect.signature(torchsummary_summary))

# %% [markdown]
# 如果像 `torchinfo` 那样给出带 batch 维的形状，`torchsummary` 会再加一个 batch 维，第一个卷积就抛出 `RuntimeError`，说输入是 5 维的：

# %% tags=["raises-exception"] raises="RuntimeError"
torchsummary_summary(ResNet18Stem(), (1, 3, 32, 32), device="cpu")

# %% [markdown]
# ## 每个模块只数一次的 summary
#
# `tutorials_pkg.summary.summary` 接收模型，以及 `input_size` 和 `input_data` 二者之一（恰好一个）：`input_size` 是**包含** batch 维的形状（与 `torchinfo` 相同），或者一组形状，会在模型所在的设备上生成随机输入；`input_data` 是你自己的张量，或者由模型的位置参数组成的元组，其中每个参数都可以是张量的列表、元组或字典。它的不同之处：
#
# - 每个模块一行，来自 `named_modules()`（每个模块只出现一次，用它第一次注册时的名字；其他名字在备注里列出）；
# - 每个参数计入拥有它的第一行，所以各行加起来正好等于 `sum(p.numel() for p in model.parameters())`，共享（tied）的权重和模型自身的参数也不例外；
# - 每个模块一个前置钩子（pre-hook）和一个钩子：它们统计调用次数（在 `forward` 里被调用两次的模块会被标出）并记录形状，模块以关键字参数接收的输入（`attn(query=x, key=x, value=x)`）也会按名字列出；
# - 前向传播在 eval 模式、`torch.no_grad()` 下运行，结束后每个模块恢复各自原来的模式；钩子在 `finally` 里移除，所以前向传播失败时也会移除；
# - 用 `torch.compile` 编译过的模型，通过它包装的模块（`_orig_mod`）以 eager 方式运行来统计：编译后的模型一旦运行过，之后再加的钩子不会被它复用的编译代码看到，每一层都会显示 `not called`。

# %%
show_source(summary)

# %% [markdown]
# 各行也是数据：`name`、`type`、`input_shape`、`output_shape`、`params`、`trainable_params`、`calls`（以及 `calls > 1` 时为真的 `reused`）、`aliases`。问答里那个模型的第一层注册在两个名字下：

# %%
conv_row = diagnosis.rows[2]
print(conv_row)
print("reused:", conv_row.reused)

# %% [markdown]
# `str(result)` 是完整的表；上面用到的 `result.table(max_depth=1)` 只显示到指定深度，这时显示出来的每一行都把它下面被隐藏的行的参数算在自己身上。
#
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

# %% [markdown]
# ## 实践中常见的错误
#
# ### `Sequential` 的切片是第二个名字
#
# 重复计数并不需要 `base_model`：对 `nn.Sequential` 切片会得到一个新的 `Sequential`，里面装的是**同样的**层。把切片存成属性（方便取特征的捷径），其中每一层就都被注册了两次：

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
# ### 在训练模式下做 summary 会改变 BatchNorm 的滑动统计量
#
# `torchsummary` 在模型当前的模式下、开着 autograd 跑前向传播。在训练模式下，每个 BatchNorm 都会根据随机输入更新它的滑动均值和滑动方差：做完 summary 的模型，已经不是原来的模型了。

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
# `summary` 在 eval 模式、`torch.no_grad()` 下运行，如上一节所示：滑动统计量保持不变。

# %%
victim = ResNet18Stem()
batchnorm = victim.layer0[1]
running_mean = batchnorm.running_mean.clone()
summary(victim, input_size=(1, 3, 32, 32))
assert torch.equal(batchnorm.running_mean, running_mean)
assert batchnorm.num_batches_tracked.item() == 0 and victim.training

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
# 每个池化层都把图像缩小一半。SqueezeNet 1.1 拿到 16×16 的输入，到第三个 max-pool 时就什么都不剩了，PyTorch 在池化层内部抛出 `RuntimeError`。`summary` 抛出的就是这个错误，类型和消息都不变（CUDA 显存不足的错误也还是原来的错误），只在下面加上说明：出错的层和输入形状；因为这条消息说的是输出太小，还会提示换一个更大的输入。其他种类的错误只加第一条说明。

# %% tags=["raises-exception"] raises="RuntimeError"
squeezenet = torchvision.models.squeezenet1_1(weights=None)
summary(squeezenet, input_size=(1, 3, 16, 16))

# %% [markdown]
# 钩子已经移除，模型也没有变，所以换一个更大的输入就能正常运行；参数量与 torchvision 为 SqueezeNet 1.1 公布的一致：

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
