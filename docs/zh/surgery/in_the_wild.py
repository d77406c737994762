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
# # 修改模型：实践中常见的错误
#
# 这是[修改模型](../)的最后一页，接在[额外的输入与输出](../inputs_and_outputs/)之后：广为流传的代码中的错误，先看它们出错（或悄无声息地算错），再看修正。

# %%
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from tutorials_pkg.digits import load_digits_tensors
from tutorials_pkg.source import show_source
from tutorials_pkg.surgery import ExtraInputNet, ExtraOutputNet, replace_module

torch.manual_seed(0)
pixels, labels = load_digits_tensors()  # (1797, 1, 8, 8), in [0, 1]
images = F.interpolate(pixels, size=32, mode="bilinear").repeat(1, 3, 1, 1)
base = resnet18(weights=None, num_classes=10).eval()  # the 10-class model of the inputs page
ink = images[:4].mean(dim=(1, 2, 3))  # and its extra input, one scalar per sample

# %% [markdown]
# ## 模型末尾带 softmax，再交给 `CrossEntropyLoss`
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
# ## 忘了自己的分类器的「额外输出」包装
#
# 为了拿到特征，这个包装把 `fc` 换成了 `nn.Identity`，却没有把分类器留在任何地方：

# %%
from tutorials_pkg.surgery import ExtraOutputNetThatDropsHead

show_source(ExtraOutputNetThatDropsHead)

# %% [markdown]
# 它的 「logits」 是 512 个特征，而不是 10 个类别得分。`CrossEntropyLoss` 察觉不到：0 到 9 的标签在 512 个类别里都合法，所以训练照样能跑。训练好的分类器也从 `state_dict` 里消失了：

# %%
forgetful = ExtraOutputNetThatDropsHead(copy.deepcopy(base))
logits, _ = forgetful(images[:4])
print(logits.shape, loss_fn(logits, labels[:4]).item())
assert logits.shape[1] == 512
assert not any(key.startswith("fc.") or ".fc." in key for key in forgetful.state_dict())

# %% [markdown]
# [`ExtraOutputNet`](../inputs_and_outputs/#额外的输出) 不改动模型的任何部分：它运行整个模型（包括分类器），用一个前向预钩子截取最后一层收到的输入。`self.head` 里存的只是这一层的名字 `"fc"`。所以它的 logits 有 10 列，与原模型的相同，分类器也仍在 `state_dict` 里。

# %%
two_outputs = ExtraOutputNet(copy.deepcopy(base))
logits, _ = two_outputs(images[:4])
print(repr(two_outputs.head), logits.shape)
assert two_outputs.head == "fc" and torch.equal(logits, base(images[:4]))
assert "model.fc.weight" in two_outputs.state_dict()

# %% [markdown]
# ## 定义了 10 类的层却从不使用的「额外输出」模型
#
# 一篇广为流传的教程里，额外输出的模型定义了一个 10 类的层 `fc1`，却从不调用它；它的 `forward` 还接收一个从不使用的额外输入。下面是我们对这个错误的重现：

# %%
from tutorials_pkg.surgery import ExtraOutputNetWithUnusedLayer

show_source(ExtraOutputNetWithUnusedLayer)

# %% [markdown]
# 不会报任何错。所谓「10 类」的输出，其实是对 ImageNet `fc` 的 1,000 个输出做的 softmax；额外输入什么也不改变；`fc1` 得不到梯度，训练永远不会改动它：

# %%
unused = ExtraOutputNetWithUnusedLayer(resnet18(weights=None)).eval()
probabilities, _ = unused(images[:4], ink)
print(probabilities.shape, [round(total, 4) for total in probabilities.sum(dim=1).tolist()])
assert torch.equal(unused(images[:4], torch.zeros(4))[0], probabilities)  # extra is ignored
probabilities.log().mean().backward()
print("fc1 gradient:", unused.fc1.weight.grad)
assert probabilities.shape[1] == 1000 and unused.fc1.weight.grad is None

# %% [markdown]
# 修正：让模型直接输出它要分的 10 个类别（或者像[换一个新的分类器](../#换一个新的分类器)那样，把一个 10 类的分类头放进它的 `fc`），softmax 交给损失函数去做，特征则用 `ExtraOutputNet` 取出。真正用上额外输入的模型是 `ExtraInputNet`。

# %%
logits, features = ExtraOutputNet(resnet18(weights=None, num_classes=10))(images[:4])
print(logits.shape, features.shape)

# %% [markdown]
# ## 代码与文字说明不符的「额外输入」模型
#
# 同一篇教程说，它的额外输入模型把一个标量拼接到倒数第二层的特征上（它用的 ResNet-50 有 2,048 个，ResNet-18 有 512 个）。代码做的却是另一回事：它运行整个模型，于是标量拼接的是 ImageNet 的 1,000 个 logits，而且先经过 ReLU 和 dropout，后面再接一个新的 `Linear(1001, 10)` 和 softmax。下面是我们的重现：

# %%
from tutorials_pkg.surgery import ExtraInputNetOnLogits

show_source(ExtraInputNetOnLogits)

# %% [markdown]
# 不会报任何错。在新层上挂一个前向预钩子，就能看到它收到的是什么：1,001 个值，即 logits 加上标量，而不是文字说明里的 513 个；ReLU 把所有负的 logits 都置成了 0（大约一半）；输出是 softmax，而 `CrossEntropyLoss` 还会再做一次（见[第一节](#模型末尾带-softmax再交给-crossentropyloss)）。

# %%
on_logits = ExtraInputNetOnLogits(resnet18(weights=None)).eval()
seen = []
hook = on_logits.fc_add.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
probabilities = on_logits(images[:4], ink)
hook.remove()
zeroed = (seen[0][:, :1000] == 0).float().mean().item()
print(f"fc_add gets {seen[0].shape[1]} values per sample; {zeroed:.0%} of the logits are zeroed")
assert seen[0].shape[1] == 1000 + 1 and 0.3 < zeroed < 0.7
assert torch.allclose(probabilities.sum(dim=1), torch.ones(4))

# %% [markdown]
# [`ExtraInputNet`](../inputs_and_outputs/#额外的输入) 做的才是文字说明里的事：把额外输入拼接到分类器收到的 512 个特征上（它的新 `fc` 接收 512 + 1 个值），这 512 个特征沿用训练好的分类器的权重，额外输入的权重为 0，所以一开始的计算结果与原模型相同；它输出的是 logits：

# %%
joined = ExtraInputNet(copy.deepcopy(base), extra_features=1).eval()
logits = joined(images[:4], ink)
print(joined.fc, f"largest difference from the model: {(logits - base(images[:4])).abs().max():.1e}")
assert joined.fc.in_features == 512 + 1 and torch.allclose(logits, base(images[:4]), atol=1e-5)

# %% [markdown]
# ## 用 `children()` 切出的主干丢掉了 `forward` 里用代码做的事
#
# 去掉分类器的一种常见写法是 `nn.Sequential(*list(model.children())[:-1])`。它只保留注册过的子模块，别的都没有了：`forward` 在子模块之间用代码做的事全都丢掉。ResNet-18 的 `forward` 在 `fc` 之前把池化后的特征图展平，所以切出的主干返回 `(N, 512, 1, 1)`，而不是 `(N, 512)`：

# %%
resnet = resnet18(weights=None).eval()
body = nn.Sequential(*list(resnet.children())[:-1])
print(body(images[:4]).shape)
assert body(images[:4]).shape == (4, 512, 1, 1)

# %% [markdown]
# 在它后面接一个新的分类头就会出错，抛出 `RuntimeError`：`nn.Linear` 作用在最后一维上，而这一维的大小是 1。

# %% tags=["raises-exception"] raises="RuntimeError"
nn.Sequential(body, nn.Linear(512, 10))(images[:4])

# %% [markdown]
# torchvision 的 `mobilenet_v2` 连池化都是 `forward` 里的代码，所以切出的模型返回的是最后的特征图，而且不报错：一张 64×64 的图得到 2×2 个位置，而不是一个向量。

# %%
from torchvision.models import mobilenet_v2

mobile = mobilenet_v2(weights=None).eval()
trunk = nn.Sequential(*list(mobile.children())[:-1])
x64 = torch.randn(2, 3, 64, 64)
print(trunk(x64).shape)
assert trunk(x64).shape == (2, 1280, 2, 2)

# %% [markdown]
# 保留 `forward`，只用 `nn.Identity` 替换分类器：模型返回的就是分类器原本收到的向量。

# %%
resnet.fc = nn.Identity()
mobile.classifier = nn.Identity()
print(resnet(images[:4]).shape, mobile(x64).shape)
assert resnet(images[:4]).shape == (4, 512) and mobile(x64).shape == (2, 1280)

# %% [markdown]
# ## 在替换之前创建的优化器
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
# ## 遍历 `named_modules()` 的同时替换层
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
# ## 别名而不是副本
#
# 赋值不会复制模型：`finetuned = base` 只是同一个对象的第二个名字，所以改动「新模型」也就改动了原模型。

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
# `copy.deepcopy` 生成一个独立的模型，参数和缓冲区都是新的；原模型保持原样：

# %%
base = resnet18(weights=None).eval()
wrapped = ExtraInputNet(copy.deepcopy(base), extra_features=1)
assert base(images[:2]).shape == (2, 1000)
assert all(p.data_ptr() != q.data_ptr() for p, q in zip(base.parameters(), wrapped.parameters()))
print(base.fc)
