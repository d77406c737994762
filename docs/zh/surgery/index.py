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
# 模型很少从零写起：通常是拿一个现成的模型（往往带着训练好的权重）来改。把分类器换成你自己的类别数，按名字替换深处的某一层，只训练新加的部分，让第一层多接收一个输入通道，给每个样本多喂一个数，在 logits 之外再拿到特征。本章的每一处修改，一开始计算的结果都和修改前的模型相同，各页会逐一验证。本章分为三页：
#
# - 本页：示例模型 ResNet-18；换一个新的分类器，按点号名字替换深处的一层；只训练新的分类头。
# - [额外的输入与输出](inputs_and_outputs/)：第四个输入通道，每个样本多一个输入，在 logits 之外再拿到特征。
# - [修改模型：实践中常见的错误](in_the_wild/)：广为流传的代码中的错误，先看它们出错，再看修正。
#
# 本章的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## 示例模型：ResNet-18
#
# 所有例子都用 torchvision 的 ResNet-18。构建网站时没有网络，所以用随机权重（`weights=None`）。有网络时，同一行代码就会下载 ImageNet 权重：
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
# 权重是针对特定的类别训练出来的。在同一次调用里既要训练好的权重、又要 10 个类别，torchvision 会拒绝，抛出 `ValueError`，而且是在下载任何东西之前：

# %% tags=["raises-exception"] raises="ValueError"
from torchvision.models import ResNet18_Weights

resnet18(weights=ResNet18_Weights.DEFAULT, num_classes=10)

# %% [markdown]
# 正确的做法是按权重训练时的样子、用 1,000 个类别构建模型，加载权重，再替换分类头；本页从[换一个新的分类器](#换一个新的分类器)起就是这样做的：
#
# ```python
# model = resnet18(weights=ResNet18_Weights.DEFAULT)   # 1,000 个类别，与权重相符
# model.fc = nn.Linear(model.fc.in_features, 10)       # 再换上你自己类别数的分类头
# ```
#
# 这里用同一个模型的 `state_dict` 代替下载的权重；`fc` 以外的每一个权重都保留下来。（后面几页从 `resnet18(weights=None, num_classes=10)` 开始，它代表的就是这样得到的模型。）

# %%
downloaded = resnet18(weights=None).state_dict()  # stands in for the ImageNet weights
pretrained = resnet18(weights=None)               # 1,000 classes, so the weights fit
pretrained.load_state_dict(downloaded)
pretrained.fc = nn.Linear(pretrained.fc.in_features, 10)
kept = [k for k in downloaded if not k.startswith("fc.")]
assert all(torch.equal(pretrained.state_dict()[k], downloaded[k]) for k in kept)
print(pretrained.fc, f"and {len(kept)} tensors of the ImageNet model kept")

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
# ### 新分类头的数据类型和设备要与模型一致
#
# 新建的层总是 `float32`、放在 CPU 上，不管周围的模型是什么样。模型调用过 `.double()`（或者在 GPU 上）时，新分类头就与其余部分不一致，第一次前向传播就在它这里出错，抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
precise = resnet18(weights=None).double().eval()
replace_module(precise, "fc", classifier_head(precise.fc.in_features, 10))
precise(images[:2].double())

# %% [markdown]
# `Module.to(tensor)` 把模块转换成那个张量的数据类型、移到它所在的设备，所以 `.to(old.weight)` 让新分类头与被替换的层保持一致，在 CPU 和 GPU 上都适用：

# %%
precise = resnet18(weights=None).double().eval()
head = classifier_head(precise.fc.in_features, 10).to(precise.fc.weight)
replace_module(precise, "fc", head.eval())
print(precise(images[:2].double()).dtype)

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
# `freeze_except` 认的是参数对象本身，而不是参数的名字。所以如果某一层的权重与另一层绑定（语言模型的输出层和输入嵌入共用一个矩阵），这一层仍然可以训练，共用的权重以它的两个名字都列出来：训练分类头也会改动嵌入。空名字表示整个模型，会被拒绝（`ValueError`）；名字拼错时，则像 `replace_module` 一样抛出 `KeyError`。

# %%
from tutorials_pkg.demo_models import TiedEmbeddingNet

print(freeze_except(TiedEmbeddingNet(), "out"))

# %% [markdown]
# 还有两件事，才能让主干真正保持不动：
#
# - **在替换之后再创建优化器**，并且只传入需要训练的参数。优化器保存的是创建时交给它的那些参数张量；之后新建的分类头不在其中（[实践中常见的错误](in_the_wild/#在替换之前创建的优化器)一页会演示这样出错）。
# - **让冻结的 BatchNorm 层保持评估模式。** `requires_grad` 只能让权重不动，处于训练模式的 BatchNorm 层在每个批量上仍然会更新滑动统计量（running mean 和 running variance）。先 `model.eval()`，再 `model.fc.train()`，就只训练分类头。
#
# 训练几步，然后检查主干的每一个张量（包括缓冲区）都与原来逐位相同。（损失下降得慢，是因为这个主干是随机的；用 ImageNet 权重时它的特征要好得多。）

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
# 训练循环通常在每个 epoch 开头调用 `model.train()`。这一调用作用于每一个模块，冻结的 BatchNorm 层也不例外，于是抵消了上面的 `model.eval()`：下一个批量一来，它们的滑动统计量又会变动。

# %%
model.train()  # the first line of a usual epoch
print("bn1 in training mode again:", model.bn1.training)
running_mean = model.bn1.running_mean.clone()
with torch.no_grad():
    model(images[:64])
assert not torch.equal(model.bn1.running_mean, running_mean)

# %% [markdown]
# 在循环调用 `model.train()` 的地方，改为调用 `train_only(model, "fc")`：它让整个模型进入评估模式，再让那一个子模块回到训练模式，每个 epoch 都这样做。

# %%
from tutorials_pkg.surgery import train_only

show_source(train_only)

# %%
train_only(model, "fc")
running_mean = model.bn1.running_mean.clone()
with torch.no_grad():
    model(images[:64])
assert torch.equal(model.bn1.running_mean, running_mean) and model.fc.training
print("bn1 in training mode:", model.bn1.training, "| fc in training mode:", model.fc.training)
