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
# # 模型定义的三种方式
#
# PyTorch 提供三种容器，把层组合成模型：`nn.Sequential`、`nn.ModuleList` 和 `nn.ModuleDict`。三者都会**注册**它们装着的层：注册之后，PyTorch 才找得到这些层的参数，保存时才会把它们写进 `state_dict`，调用 `.to()` 时才会把它们一起移到别的设备或转换成别的数据类型。三者的区别在于谁决定计算顺序：`nn.Sequential` 按固定的链条依次执行；另外两种则由你自己写的 `forward` 决定。
#
# 本章分两页：
#
# - 本页：三种容器各自的用法，`nn.Sequential` 内部做了什么，缓冲区，以及什么时候用哪一种；
# - [模型定义：实践中常见的错误](in_the_wild/)：没有注册的层、忘了 `super().__init__()`、重名的层、`ModuleDict` 不接受的键，每个错误都先实际运行、看它出错，再给出改法。
#
# 本页的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# 示例用的是真实数据：scikit-learn 自带 8×8 的手写数字图片（1,797 张），每张图是一个长度为 64 的向量。

# %%
import torch

from tutorials_pkg.digits import load_digits_tensors

images, labels = load_digits_tensors(flatten=True)  # pixels scaled to [0, 1]
x, y = images[:8], labels[:8]  # 8 images
print(x.shape, y.tolist())

# %% [markdown]
# ## `nn.Sequential`：一条直链
#
# 如果每一层只是把结果交给下一层，别的什么都不做，就按顺序把层列出来。`nn.Sequential` 连 `forward` 都替你写好了。下面是 `tutorials_pkg.definition` 里的原样代码（它需要的 import 一并给出，复制下来就能单独运行）：

# %%
from tutorials_pkg.definition import mlp_sequential
from tutorials_pkg.source import show_source

show_source(mlp_sequential)

# %%
model = mlp_sequential()
print(model)
print(model(x).shape)

# %% [markdown]
# 层按位置命名：`0`、`1`、`2`。这些名字就是 `state_dict` 的键，也是取出某一层的方式（`model[0]`）。

# %%
print(list(model.state_dict().keys()))
print(model[0])

# %% [markdown]
# ### 用 `OrderedDict` 给层命名
#
# 改为传入一个 `OrderedDict`，层就用你起的名字。计算顺序仍然是字典的顺序。

# %%
from tutorials_pkg.definition import mlp_named

show_source(mlp_named)

# %%
named = mlp_named()
print(named)
print(list(named.state_dict().keys()))
print(named.fc1)

# %% [markdown]
# ## `nn.ModuleList`：重复的模块，自己写 `forward`
#
# `ModuleList` 是一个会注册其元素的列表。它没有 `forward`：由你自己遍历，这样就能加入直链表达不了的东西，比如给每个模块加一条跳跃连接（skip connection）。

# %%
from torch import nn

from tutorials_pkg.definition import ResidualMLP

show_source(ResidualMLP)

# %% [markdown]
# 画成图（`depth=3`）：
#
# ```mermaid
# flowchart LR
#     x([x]) --> b0["blocks[0] + ReLU"] --> s0((+))
#     x --> s0
#     s0 --> b1["blocks[1] + ReLU"] --> s1((+))
#     s0 --> s1
#     s1 --> b2["blocks[2] + ReLU"] --> s2((+))
#     s1 --> s2
#     s2 --> y([输出])
# ```

# %%
residual = ResidualMLP(features=64, depth=3)
print(residual)
print(residual(x).shape)
print([name for name, _ in residual.named_parameters()])

# %% [markdown]
# 三个模块的参数全都注册了：每个模块有 64×64 个权重和 64 个偏置，共 12,480 个参数。`count_parameters` 把 `model.parameters()` 里每个参数的元素个数加起来，也就是 PyTorch 会训练、保存和移动的参数：

# %%
from tutorials_pkg.definition import count_parameters

print("parameters:", count_parameters(residual))
assert count_parameters(residual) == 3 * (64 * 64 + 64)

# %% [markdown]
# `ModuleList` 可以像列表一样扩充：`append` 添加一个模块，`extend` 添加多个，`insert` 在指定位置插入一个。每个新模块都会被注册，按位置的名字也会随顺序重新编号：

# %%
grown = nn.ModuleList([nn.Linear(64, 32)])
grown.append(nn.ReLU())
grown.extend([nn.Linear(32, 10)])
grown.insert(1, nn.Dropout(0.1))
print(grown)
print(list(grown.state_dict().keys()))

# %% [markdown]
# ### `ModuleList` 不能被调用
#
# `ModuleList` 装着层，却没有 `forward`，所以调用它会引发 `NotImplementedError`：

# %% tags=["raises-exception"] raises="NotImplementedError"
stack = nn.ModuleList([nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)])
stack(x)

# %% [markdown]
# 在你自己的 `forward` 里遍历它（像 `ResidualMLP` 那样）；如果它就是一条直链，就把它展开放进 `Sequential`：

# %%
chain = nn.Sequential(*stack)
print(chain(x).shape)

# %% [markdown]
# ## `nn.ModuleDict`：按名字选择模块
#
# `ModuleDict` 是一个会注册其值的字典。当 `forward` 需要按名字挑选模块时就用它。这里的例子是在共享的主干上接两个分类头，按名字选用其中之一：一个判断是哪个数字，一个判断是奇数还是偶数。

# %%
from tutorials_pkg.definition import MultiHeadNet

show_source(MultiHeadNet)

# %%
multi = MultiHeadNet()
print(multi.heads)
print("digit:", multi(x, head="digit").shape)
print("parity:", multi(x, head="parity").shape)

# %% [markdown]
# 如果键是合法的 Python 标识符，它也可以当作属性访问：`multi.heads.digit` 与 `multi.heads["digit"]` 是同一个模块。用下标访问则对任何键都适用。

# %%
print(multi.heads.digit is multi.heads["digit"])

# %% [markdown]
# 分类头的名字不存在时，抛出 `KeyError`，并列出现有的分类头：

# %% tags=["raises-exception"] raises="KeyError"
multi(x, head="colour")

# %% [markdown]
# ## `nn.Sequential` 内部做了什么
#
# `Sequential` 是一个 `nn.Module`：它对每一层调用 `add_module`，把层存进 `self._modules`；它的 `forward` 按顺序遍历这个字典。它的 `__init__` 既可以接收若干层（按位置命名），也可以接收一个 `OrderedDict`（键就是层名）。`_modules` 是普通的 `dict`（按插入顺序排列，Python 3.7 起所有 `dict` 都是如此），而不是 `OrderedDict`：那是较早版本的 torch 用的，不少教程至今还这么说。十五行代码就能做到同样的事，两种调用方式都支持：

# %%
from tutorials_pkg.definition import MySequential

show_source(MySequential)

# %% [markdown]
# 给它同样的层，它的 `state_dict` 键与 `nn.Sequential` 相同，计算结果也相同：

# %%
layers = [nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)]
ours, theirs = MySequential(*layers), nn.Sequential(*layers)
print(type(ours._modules), list(ours._modules.keys()))
print(list(ours.state_dict().keys()) == list(theirs.state_dict().keys()))
print(torch.equal(ours(x), theirs(x)))
assert type(ours._modules) is dict and type(theirs._modules) is dict

# %% [markdown]
# 给它一个 `OrderedDict`，层名也相同：

# %%
from collections import OrderedDict

named_layers = OrderedDict([("fc1", nn.Linear(64, 32)), ("act", nn.ReLU()), ("fc2", nn.Linear(32, 10))])
ours, theirs = MySequential(named_layers), nn.Sequential(named_layers)
print(list(ours._modules.keys()), list(ours.state_dict().keys()) == list(theirs.state_dict().keys()))
assert list(ours._modules) == list(theirs._modules) == ["fc1", "act", "fc2"]
assert torch.equal(ours(x), theirs(x))

# %% [markdown]
# 一篇广为流传的教程在这个分支里把 `OrderedDict` 写成了 `OrderDict`；[下一页](in_the_wild/#mysequential-里拼错的-ordereddict)演示这样会怎样。
#
# ### 只有一个输入，逐层传下去
#
# `nn.Sequential.forward` 只接收一个输入，并把上一层的输出交给下一层。没有办法在中途给某一层第二个输入：用两个参数调用这条链，会抛出 `TypeError`。

# %% tags=["raises-exception"] raises="TypeError"
chain = mlp_sequential()
chain(x, torch.ones(8, 1))

# %% [markdown]
# 有第二个输入的模型，需要自己写 `forward`。下面把额外输入（每张图一个数）拼接到主干输出的特征上，再交给分类头；主干本身仍然可以是一个 `Sequential`：

# %%
from tutorials_pkg.definition import MLPWithExtraInput

show_source(MLPWithExtraInput)

# %%
ink = x.mean(dim=1, keepdim=True)  # (8, 1): how much ink each digit has
print(MLPWithExtraInput(extra_features=1)(x, ink).shape)

# %% [markdown]
# ## 要保存但不训练的张量：缓冲区
#
# 有些张量属于模型，却不是学出来的：比如用来标准化输入的均值和标准差，又比如 BatchNorm 的滑动统计量。`register_buffer` 用来注册这样的张量（称为缓冲区，buffer）：它会写进 `state_dict`，也会随 `.to()` 移动，但它不是参数，任何优化器都不会改动它。（作为普通属性存放的张量，这两样都得不到。）

# %%
from tutorials_pkg.definition import Standardize

show_source(Standardize)

# %%
scale = Standardize(images.mean(), images.std())
print("parameters:", list(scale.parameters()))
print("state_dict:", {k: round(v.item(), 4) for k, v in scale.state_dict().items()})
print("dtype after .to(torch.float64):", scale.to(torch.float64).mean.dtype)
standardized = Standardize(images.mean(), images.std())(images)
print(f"mean {standardized.mean():.3f}, std {standardized.std():.3f}")

# %% [markdown]
# `register_buffer(name, tensor, persistent=False)` 注册的缓冲区同样随 `.to()` 移动，但不写进 `state_dict`：适合模型能根据构造参数重新算出来的张量（查找表、掩码），不必在每个检查点里占空间。它仍然出现在 `named_buffers()` 里：

# %%
holder = nn.Module()
holder.register_buffer("table", torch.arange(4.0), persistent=False)
print("state_dict:", list(holder.state_dict().keys()))
print("buffers:", [name for name, _ in holder.named_buffers()])

# %% [markdown]
# ## 什么时候用哪一种
#
# | 容器 | 适用场景 | `forward` | 层的名字 |
# |---|---|---|---|
# | `nn.Sequential` | 一条直链，每层把结果交给下一层 | 已替你写好 | `0`、`1`……或 `OrderedDict` 的键 |
# | `nn.ModuleList` | 重复的模块、循环、跳跃连接 | 自己写：遍历它 | `0`、`1`…… |
# | `nn.ModuleDict` | 按名字选择的模块（分类头、分支、按任务区分的层） | 自己写：按键取用 | 你起的键 |
#
# 它们可以互相嵌套：`ModuleList` 里装 `Sequential` 模块就很常见。普通的 Python `list` 或 `dict` 则做不到这些，[下一页](in_the_wild/)会演示。
