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
# # 修改模型
#
# 模型很少从零写起：通常是拿一个现成的模型（往往带着训练好的权重）来改。把分类器换成你自己的类别数，按名字替换深处的某一层，只训练新加的部分，让第一层多接收一个输入通道，给每个样本多喂一个数，在 logits 之外再拿到特征。本页的每一处修改，一开始计算的结果都和修改前的模型相同，页面会逐一验证。
#
# 本页的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## 手术对象：ResNet-18
#
# 所有例子都用 torchvision 的 ResNet-18。构建网站时没有网络，所以用随机权重（`weights=None`）。有网络时，同一行代码就会下载 ImageNet 权重，下面的内容都不用改：
#
# ```python
# from torchvision.models import resnet18, ResNet18_Weights
#
# model = resnet18(weights="DEFAULT")            # torchvision 现有最好的权重
# model = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)   # 或者指名要哪一份
# preprocess = ResNet18_Weights.DEFAULT.transforms()         # 与之配套的输入预处理
# ```
#
# 模型是一棵由具名模块组成的树。`named_children()` 列出第一层；最后一层 `fc` 是 ImageNet 1,000 个类别的分类器。

# %%
import torch
from torch import nn
from torchvision.models import resnet18

torch.manual_seed(0)
model = resnet18(weights=None)
print([name for name, _ in model.named_children()])
print(model.fc)

# %% [markdown]
# 较早的代码和许多教程写的是 `resnet18(pretrained=True)`。`pretrained` 参数从 torchvision 0.13 起已被弃用：它仍然能用，但会给出下面两条 `UserWarning`；`pretrained=True` 相当于 `weights=ResNet18_Weights.IMAGENET1K_V1`，即 torchvision 最早发布的那份权重。这不一定是今天 `"DEFAULT"` 给出的权重：对 ResNet-50 来说，`pretrained=True` 指的是 `IMAGENET1K_V1`，而 `DEFAULT` 是更好的 `IMAGENET1K_V2`。`pretrained=False` 相当于 `weights=None`，下面这个单元格传的就是它，所以什么也不会下载：

# %%
import warnings

from torchvision.models import ResNet50_Weights

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    resnet18(pretrained=False)
for warning in caught:
    print(f"{warning.category.__name__}: {warning.message}")
print("ResNet50_Weights.DEFAULT is", ResNet50_Weights.DEFAULT.name)

# %% [markdown]
# 数据是真实的：scikit-learn 自带的 8×8 手写数字，放大到 32×32，再复制成三个通道，看起来就像小的 RGB 图片。

# %%
import torch.nn.functional as F
from tutorials_pkg.digits import load_digits_tensors

pixels, labels = load_digits_tensors()  # (1797, 1, 8, 8), in [0, 1]
images = F.interpolate(pixels, size=32, mode="bilinear").repeat(1, 3, 1, 1)
print(images.shape, labels.shape)

# %% [markdown]
# ## 换一个新的分类器
#
# 要分的是 10 个数字类别，所以把输出 1,000 个类别的 `fc` 换成一个新的分类头。用 `OrderedDict` 构建的 `nn.Sequential` 会给每一层起名字，这些名字会出现在 `state_dict` 和错误信息里：

# %%
from tutorials_pkg.source import show_source
from tutorials_pkg.surgery import classifier_head

show_source(classifier_head)

# %% [markdown]
# `replace_module` 把一个模块放到某个（带点号的）名字所在的位置，并返回原来的模块。它用 `nn.Module.get_submodule` 找到父模块（`get_submodule` 会把 `"layer1.0.conv1"` 这样的名字逐级解析成属性），再在父模块上设置最后一段名字。名字不存在时，`get_module` 抛出 `KeyError`，列出父模块的子模块和相近的名字。

# %%
from tutorials_pkg.surgery import replace_module

show_source(replace_module)

# %%
old_fc = replace_module(model, "fc", classifier_head(model.fc.in_features, 10))
print("old:", old_fc)
print("new:", model.fc)
print(model(images[:4]).shape)

# %% [markdown]
# 这一层的名字取决于它被放到哪里：它仍然叫 `fc`，权重保存为 `fc.fc1.weight` 等。一篇广为流传的教程把这样的分类头建在一个名叫 `classifier` 的变量里，用 `net.fc = classifier` 赋值，然后说这一层现在叫 `classifier`；可 PyTorch 从来看不到变量名，只看得到属性名，所以 `model.classifier` 会抛出 `AttributeError`：

# %%
print(list(model._modules)[-1], [key for key in model.state_dict() if key.startswith("fc.")][:2])

# %% tags=["raises-exception"] raises="AttributeError"
model.classifier

# %% [markdown]
# ### 按点号名字替换深处的一层
#
# 名字就是 `named_modules()` 打印出的那些，`Sequential` 的下标也算在内。这里在最后一个残差块的第二个卷积前加一个 `Dropout2d`。返回的旧模块被放回新模块里，所以它的权重保留下来：评估模式下 dropout 什么都不做，输出与修改前完全相同。新建的模块处于训练模式，所以原本处于评估模式的模型，手术之后要再调用一次 `.eval()`。

# %%
model.eval()
before = model(images[:4])
conv = replace_module(model, "layer4.1.conv2", nn.Identity())
replace_module(model, "layer4.1.conv2", nn.Sequential(nn.Dropout2d(0.1), conv))
print(model.layer4[1].conv2)
print("the new Sequential is in training mode:", model.layer4[1].conv2.training)
model.eval()  # again: modules are created in training mode
assert torch.equal(model(images[:4]), before)

# %% [markdown]
# 名字拼错时会抛出 `KeyError`，而且模型还没有被改动：

# %% tags=["raises-exception"] raises="KeyError"
replace_module(model, "layer4.1.conv3", nn.Identity())

# %% [markdown]
# 较新的 torch 也提供 `model.set_submodule(name, module)`。它的默认值 `strict=False` 在名字最后一段不存在时会**新增**一个模块，于是同样的拼写错误会悄悄加出一个 `forward` 永远不会调用的层（用 `strict=True` 则会抛出 `AttributeError`）：

# %%
import copy

other = copy.deepcopy(model)
other.set_submodule("layer4.1.conv3", nn.Identity())
print(list(other.layer4[1]._modules))
assert "conv3" in other.layer4[1]._modules  # a new, unused layer; conv2 is unchanged

# %% [markdown]
# ## 只训练新的分类头
#
# 有训练好的权重时，常见的第一步是保持主干不变，只训练新的分类头。把参数的 `requires_grad` 设为 `False`，autograd 就不再计算它的梯度，任何优化器都不会改动它。`freeze_except` 对某个子模块以外的所有参数这样做：

# %%
from tutorials_pkg.surgery import freeze_except

show_source(freeze_except)

# %%
trained = freeze_except(model, "fc")
print(trained)
total = sum(p.numel() for p in model.parameters())
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
print(f"trainable: {trainable:,} of {total:,} parameters")
assert trainable == 512 * 256 + 256 + 256 * 10 + 10

# %% [markdown]
# `freeze_except` 认的是参数对象本身，而不是参数的名字。所以如果某一层的权重与另一层绑定（语言模型的输出层和输入嵌入共用一个矩阵），这一层仍然可以训练，共用的权重以它的两个名字都列出来：训练分类头也会改动嵌入。空名字表示整个模型，会被拒绝（`ValueError`）；拼错的名字则得到 `replace_module` 那样的 `KeyError`。

# %%
from tutorials_pkg.demo_models import TiedEmbeddingNet

print(freeze_except(TiedEmbeddingNet(), "out"))

# %% [markdown]
# 还有两件事，才能让主干真正保持不动：
#
# - **在替换之后再创建优化器**，并且只传入需要训练的参数。优化器保存的是创建时交给它的那些参数张量；之后新建的分类头不在其中（最后一节会演示这样出错）。
# - **让冻结的 BatchNorm 层保持评估模式。** `requires_grad` 只能让权重不动，处于训练模式的 BatchNorm 层在每个 batch 上仍然会更新滑动统计量（running mean 和 running variance）。先 `model.eval()`，再 `model.fc.train()`，就只训练分类头。
#
# 训练几步，然后检查主干的每一个张量（包括 buffer）都与原来逐位相同。（损失下降得慢，是因为这个主干是随机的；用 ImageNet 权重时它的特征要好得多。）

# %%
optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
backbone_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
head_before = model.fc.fc2.weight.clone()

model.eval()
model.fc.train()
for step in range(20):
    batch = slice(step * 64, (step + 1) * 64)
    loss = F.cross_entropy(model(images[batch]), labels[batch])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 5 == 4:
        print(f"step {step + 1}: loss {loss.item():.3f}")

backbone_after = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
assert all(torch.equal(backbone_before[k], backbone_after[k]) for k in backbone_before)
assert not torch.equal(model.fc.fc2.weight, head_before)

# %% [markdown]
# 如果在训练模式下跑同样的步骤，即使所有权重都冻结了，每个 BatchNorm 层的滑动统计量也会被改动：

# %%
probe = copy.deepcopy(model).train()
running_mean = probe.bn1.running_mean.clone()
with torch.no_grad():
    probe(images[:64])
assert not torch.equal(probe.bn1.running_mean, running_mean)  # a frozen layer changed
print(f"bn1.running_mean moved by {(probe.bn1.running_mean - running_mean).abs().max():.4f}")

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
# 最后一个 `nn.Linear` 在 ResNet 里是 `fc`，在 blocks 一页的 `MobileNetV1` 里是 `classifier`，在 `MobileNetV2` 和 torchvision 的 `mobilenet_v2` 里是（dropout 之后的）`classifier.1`；所以若以 `head="fc"` 为默认值，只适合第一种。`head=` 给的名字不存在时，会得到 `replace_module` 那样的 `KeyError`，并列出相近的名字：

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
# `ExtraInputNet` 则会接管传给它的模型：它的主体就是这个模型本身，只是最后一层被替换了。所以它的例子都传入 `copy.deepcopy(base)`；最后一节会演示不这样做的后果。它的 `state_dict` 键以 `body.` 和 `fc.` 开头，`ExtraOutputNet` 的则以 `model.` 开头，所以要先把训练好的权重加载进模型，再包装。

# %% [markdown]
# ## 实践中常见的错误
#
# ### 模型末尾带 softmax，再交给 `CrossEntropyLoss`
#
# `nn.CrossEntropyLoss` 要的是 logits：它自己会做 `log_softmax`。以 `nn.Softmax` 结尾的模型会经过两次 softmax，而且不会报任何错：

# %%
from tutorials_pkg.surgery import classifier_ending_in_softmax

show_source(classifier_ending_in_softmax)

# %% [markdown]
# 损失算一下就清楚了。取一个完全自信且正确的预测：正确类别的 logit 为 10，其余九个为 0。真实的损失几乎为零。经过一次 softmax 之后，损失函数的输入落在 [0, 1] 之间，它最好也只能看到正确类别为 1、其余九个为 0，所以损失永远不会低于 log(1 + 9/e) ≈ 1.46。本该把错误类别压下去的梯度也变小了：

# %%
import math

logits = torch.zeros(1, 10)
logits[0, 3] = 10.0
target = torch.tensor([3])
loss_fn = nn.CrossEntropyLoss()

right = loss_fn(logits, target)
twice = loss_fn(torch.softmax(logits, dim=1), target)
print(f"loss on logits: {right.item():.2e}   loss on softmax output: {twice.item():.3f}")
assert twice.item() > math.log(1 + 9 / math.e) - 1e-6  # the floor, however good the model

wrong = torch.zeros(1, 10, requires_grad=True)
with torch.no_grad():
    wrong[0, 5] = 5.0  # confidently wrong: class 5 instead of 3
loss_fn(wrong, target).backward()
grad_right = wrong.grad.clone()
wrong.grad = None
loss_fn(torch.softmax(wrong, dim=1), target).backward()
print(f"gradient on the wrong class: {grad_right[0, 5]:.3f} from logits, "
      f"{wrong.grad[0, 5]:.3f} through the extra softmax")
assert wrong.grad[0, 5].abs() < grad_right[0, 5].abs() / 5

# %% [markdown]
# 改正：模型返回 logits，需要概率时在模型外面做 softmax。

# %%
head = nn.Linear(64, 10)
features_in = torch.randn(8, 64)
loss = loss_fn(head(features_in), torch.arange(8))       # training: logits
probabilities = torch.softmax(head(features_in), dim=1)   # inference: probabilities
print(loss.item() > 0, probabilities.sum(dim=1))

# %% [markdown]
# ### 忘了自己的分类器的“额外输出”包装
#
# 为了拿到特征，这个包装把 `fc` 换成了 `nn.Identity`，却没有把分类器留在任何地方：

# %%
from tutorials_pkg.surgery import ExtraOutputNetThatDropsHead

show_source(ExtraOutputNetThatDropsHead)

# %% [markdown]
# 它的 “logits” 是 512 个特征，而不是 10 个类别得分。`CrossEntropyLoss` 察觉不到：0 到 9 的标签在 512 个类别里都合法，所以训练照样能跑。训练好的分类器也从 `state_dict` 里消失了：

# %%
forgetful = ExtraOutputNetThatDropsHead(copy.deepcopy(base))
logits, _ = forgetful(images[:4])
print(logits.shape, loss_fn(logits, labels[:4]).item())
assert logits.shape[1] == 512
assert not any(key.startswith("fc.") or ".fc." in key for key in forgetful.state_dict())

# %% [markdown]
# 上面的 `ExtraOutputNet` 把分类器保存为 `self.head` 并调用它，所以它的 logits 有 10 列，且与原模型的相同。

# %%
logits, _ = ExtraOutputNet(copy.deepcopy(base))(images[:4])
assert logits.shape[1] == 10 and "model.fc.weight" in ExtraOutputNet(copy.deepcopy(base)).state_dict()

# %% [markdown]
# ### 定义了 10 类的层却从不使用的“额外输出”模型
#
# 一篇广为流传的教程里，额外输出的模型定义了一个 10 类的层 `fc1`，却从不调用它；它的 `forward` 还接收一个从不使用的额外输入。下面是我们对这个错误的重现：

# %%
from tutorials_pkg.surgery import ExtraOutputNetWithUnusedLayer

show_source(ExtraOutputNetWithUnusedLayer)

# %% [markdown]
# 不会报任何错。所谓“10 类”的输出，其实是对 ImageNet `fc` 的 1,000 个输出做的 softmax；额外输入什么也不改变；`fc1` 得不到梯度，训练永远不会改动它：

# %%
unused = ExtraOutputNetWithUnusedLayer(resnet18(weights=None)).eval()
probabilities, _ = unused(images[:4], ink)
print(probabilities.shape, [round(total, 4) for total in probabilities.sum(dim=1).tolist()])
assert torch.equal(unused(images[:4], torch.zeros(4))[0], probabilities)  # extra is ignored
probabilities.log().mean().backward()
print("fc1 gradient:", unused.fc1.weight.grad)
assert probabilities.shape[1] == 1000 and unused.fc1.weight.grad is None

# %% [markdown]
# 修正：让模型直接输出它要分的 10 个类别（或者像第一节那样，把一个 10 类的分类头放进它的 `fc`），softmax 交给损失函数去做，特征则用 `ExtraOutputNet` 取出。真正用上额外输入的模型是 `ExtraInputNet`。

# %%
logits, features = ExtraOutputNet(resnet18(weights=None, num_classes=10))(images[:4])
print(logits.shape, features.shape)

# %% [markdown]
# ### 在替换之前创建的优化器
#
# 优化器保存的是创建时交给它的参数张量。之后换上的分类头不在其中：它的梯度照样被算出来，然后没有任何人使用。

# %%
early = resnet18(weights=None, num_classes=10)
optimizer = torch.optim.SGD(early.parameters(), lr=0.1)  # built too early
early.fc = nn.Linear(512, 10)
head_before = early.fc.weight.clone()
F.cross_entropy(early(images[:8]), labels[:8]).backward()
optimizer.step()
assert early.fc.weight.grad is not None and torch.equal(early.fc.weight, head_before)
print("the new head has a gradient and did not move")

# %% [markdown]
# 在对模型的最后一次修改之后再创建优化器：

# %%
optimizer = torch.optim.SGD(early.parameters(), lr=0.1)
optimizer.step()
assert not torch.equal(early.fc.weight, head_before)

# %% [markdown]
# ### 遍历 `named_modules()` 的同时替换层
#
# 一个想把所有 ReLU 换成 SiLU 的循环，在模型上用 `setattr` 和带点号的名字，结果抛出 `RuntimeError`。`nn.Module.__setattr__` 不会拆分名字：`setattr(model, "layer1.0.relu", m)` 会在模型本身上新增一个名叫 `"layer1.0.relu"` 的子模块，这就改变了 `named_modules()` 正在遍历的字典。

# %% tags=["raises-exception"] raises="RuntimeError"
broken = resnet18(weights=None)
for name, module in broken.named_modules():
    if isinstance(module, nn.ReLU):
        setattr(broken, name, nn.SiLU())

# %% [markdown]
# 此时模型已经被破坏：它有了名字里带点号的子模块，而 `layer1` 里真正的 ReLU 还在原处。

# %%
print(list(broken._modules))
assert "layer1.0.relu" in broken._modules and isinstance(broken.layer1[0].relu, nn.ReLU)

# %% [markdown]
# 如果循环里用的是正确的替换方式，在这个 torch 版本上会怎样？`_modules` 是普通的 `dict`（按插入顺序排列），给已有的键赋新值不会改变字典的大小，所以 Python 不会报错。生成器已经读出了它刚交给你的那个模块，接下来会进入这个旧模块的子模块；放在同一名字下的替换品不会被访问，所以包含旧模块的替换品不会被一遍又一遍地再包装。能这样工作，靠的是 `named_modules()` 的实现细节；新增或删除子模块的替换就会出错。

# %%
inside = resnet18(weights=None)
visited = []
for name, module in inside.named_modules():
    if isinstance(module, nn.Conv2d):
        visited.append(name)
        replace_module(inside, name, nn.Sequential(module, nn.Dropout2d(0.1)))
print(len(visited), "convolutions wrapped, each once:", inside.layer1[0].conv1)
assert len(visited) == 20 and isinstance(inside.layer1[0].conv1[0], nn.Conv2d)

# %% [markdown]
# 依赖这种细节的代码很脆弱。先收集名字，再替换。名字本身就来自 `named_modules()`，所以这里用 torch 自带的 `set_submodule(name, module, strict=True)` 就够了：

# %%
from tutorials_pkg.surgery import replace_modules_of_type

show_source(replace_modules_of_type)

# %%
fixed = resnet18(weights=None)
names = replace_modules_of_type(fixed, nn.ReLU, lambda old: nn.SiLU(inplace=True))
print(names)
assert not any(isinstance(m, nn.ReLU) for m in fixed.modules())
print(fixed(images[:2]).shape)

# %% [markdown]
# 一个模块若以两个名字注册，两个名字下都会被替换，而且换成同一个新模块，原来共用的仍然共用。所有新模块都在模型改动之前建好；彼此嵌套的匹配项（这里指所有 `Sequential`，`layer2` 里就装着 `layer2.0.downsample`）会在替换任何东西之前被拒绝，抛出 `ValueError`：

# %% tags=["raises-exception"] raises="ValueError"
replace_modules_of_type(fixed, nn.Sequential, lambda old: nn.Identity())

# %% [markdown]
# ### 别名而不是副本
#
# 赋值不会复制模型：`finetuned = base` 只是同一个对象的第二个名字，所以改动“新模型”也就改动了原模型。

# %%
base = resnet18(weights=None)
finetuned = base
finetuned.fc = nn.Linear(512, 10)
print(base.fc)
assert base.fc.out_features == 10  # the original lost its 1,000-class head

# %% [markdown]
# `ExtraInputNet` 会接管传给它的模型，所以这里用别名会改变原模型的计算结果：它现在返回的是特征。

# %%
base = resnet18(weights=None).eval()
wrapped = ExtraInputNet(base, extra_features=1)
assert base(images[:2]).shape == (2, 512)  # not logits any more

# %% [markdown]
# `copy.deepcopy` 生成一个独立的模型，参数和 buffer 都是新的；原模型保持原样：

# %%
base = resnet18(weights=None).eval()
wrapped = ExtraInputNet(copy.deepcopy(base), extra_features=1)
assert base(images[:2]).shape == (2, 1000)
assert all(p.data_ptr() != q.data_ptr() for p, q in zip(base.parameters(), wrapped.parameters()))
print(base.fc)
