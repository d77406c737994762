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
# # 模型定义：实践中常见的错误
#
# 这是[模型定义的三种方式](../)一章的第二页：上一页讲了三种容器怎样注册它们装着的层；本页收集实践中常见的错误。每个错误都先实际运行、看它出错（或者用断言证明结果不对），再给出改法。
#
# 本页可以单独运行：下面先载入用到的模块和上一页的手写数字数据，并打印运行环境的版本。

# %%
import torch
from torch import nn

from tutorials_pkg.definition import MultiHeadNet, ResidualMLP
from tutorials_pkg.digits import load_digits_tensors
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.source import show_source

print(describe_runtime())
images, _ = load_digits_tensors(flatten=True)  # pixels scaled to [0, 1]
x = images[:8]  # 8 images
print(x.shape)

# %% [markdown]
# ## 子类忘了调用 `super().__init__()`
#
# 每个 `nn.Module` 子类都必须先调用 `super().__init__()`，再给自己赋值层：这一调用会创建 `_parameters`、`_buffers`、`_modules` 这几个字典，`nn.Module.__setattr__` 正是把赋值的层登记在这些字典里。少了这一步，第一句 `self.fc = ...` 就会失败：

# %%
from tutorials_pkg.definition import MLPWithoutSuperInit

show_source(MLPWithoutSuperInit)

# %% [markdown]
# 一构建就抛出 `AttributeError`，错误发生在 `__init__` 里：

# %% tags=["raises-exception"] raises="AttributeError"
MLPWithoutSuperInit()

# %% [markdown]
# 修正办法就是[上一页](../)每个模型 `__init__` 的第一行 `super().__init__()`，比如 [`ResidualMLP`](../#nnmodulelist重复的模块自己写-forward)。
#
# 容器的子类同样需要这一调用。一篇广为流传的教程继承了 `nn.ModuleList`，在那里也忘了 `super().__init__()`，结果一样：第一次给模块赋值时抛出 `AttributeError`：

# %%
from tutorials_pkg.definition import LayerListWithoutSuperInit

show_source(LayerListWithoutSuperInit)

# %% tags=["raises-exception"] raises="AttributeError"
LayerListWithoutSuperInit([nn.Linear(64, 32), nn.ReLU()])

# %% [markdown]
# 修正办法还是在第一行调用 `super().__init__()`。
#
# ## 放在普通 Python 列表里的层没有被注册
#
# 这看起来是一个有两层的模型：

# %%
from tutorials_pkg.definition import UnregisteredListMLP, count_parameters

show_source(UnregisteredListMLP)

# %% [markdown]
# 它能运行，但 PyTorch 并不知道它的层：没有参数（用 `model.parameters()` 构建的优化器什么也训练不了），`state_dict` 是空的（什么也存不下来）：

# %%
plain = UnregisteredListMLP(features=64)
print(plain(x).shape)
print("parameters:", count_parameters(plain))
print("state_dict:", plain.state_dict())
assert count_parameters(plain) == 0 and len(plain.state_dict()) == 0

# %% [markdown]
# `.to()` 也管不到这些层。换到 GPU 时，这些层会留在 CPU 上；改变数据类型则在任何机器上都能看到同样的问题，前向传播抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
plain = plain.to(torch.float64)
plain(x.to(torch.float64))

# %% [markdown]
# 改用 `nn.ModuleList` 即可，就像[上一页](../#nnmodulelist重复的模块自己写-forward)的 `ResidualMLP`：3 个模块，每个有 64×64 个权重和 64 个偏置，共 12,480 个参数，全部可见。

# %%
print("parameters:", count_parameters(ResidualMLP(features=64, depth=3)))
assert count_parameters(ResidualMLP(features=64, depth=3)) == 3 * (64 * 64 + 64)

# %% [markdown]
# ## 放在普通 Python 字典里的分类头同样没有被注册
#
# `dict` 也一样：下面是把分类头放进普通字典、而不是 `nn.ModuleDict` 的 [`MultiHeadNet`](../#nnmoduledict按名字选择模块)。

# %%
from tutorials_pkg.definition import UnregisteredDictMultiHeadNet

show_source(UnregisteredDictMultiHeadNet)

# %% [markdown]
# PyTorch 只看得到主干，看不到任何分类头：参数是 2,080 个而不是 2,476 个，`state_dict` 里也没有分类头，保存下来的模型会丢掉它们。

# %%
loose = UnregisteredDictMultiHeadNet()
print("parameters:", count_parameters(loose), "with ModuleDict:", count_parameters(MultiHeadNet()))
print("state_dict:", list(loose.state_dict().keys()))
assert count_parameters(MultiHeadNet()) - count_parameters(loose) == 32 * 10 + 10 + 32 * 2 + 2

# %% [markdown]
# `.to()` 只转换主干，不转换分类头，所以第一个分类头就抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
loose = loose.to(torch.float64)
loose(x.to(torch.float64), head="digit")

# %% [markdown]
# ## `[nn.Linear(4, 4)] * 3` 是同一层用了三次
#
# 列表乘法重复的是**引用**：三个元素是同一个层，共享同一组权重。

# %%
shared = nn.Sequential(*[nn.Linear(4, 4)] * 3)
print(shared[0] is shared[1] is shared[2])
print("parameters:", count_parameters(shared))
assert count_parameters(shared) == 4 * 4 + 4  # one layer's worth, not three

# %% [markdown]
# 每个位置各建一个新层：

# %%
separate = nn.Sequential(*[nn.Linear(4, 4) for _ in range(3)])
print(separate[0] is separate[1])
print("parameters:", count_parameters(separate))

# %% [markdown]
# ## `OrderedDict` 里重复的名字会悄悄丢掉一层
#
# 字典每个键只保留一个值：第二个 `"fc"` 覆盖了第一个，而且没有任何报错。

# %%
from collections import OrderedDict

dropped = nn.Sequential(OrderedDict([
    ("fc", nn.Linear(64, 32)),
    ("fc", nn.Linear(32, 10)),
]))
print(dropped)
assert len(dropped) == 1  # two layers were written, one is left

# %% [markdown]
# 剩下的模型需要 32 维输入，所以输入 64 维的手写数字时抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
dropped(x)

# %% [markdown]
# 每层起一个不同的名字；当名字是程序生成的时候，构建后检查一下长度。

# %%
fixed = nn.Sequential(OrderedDict([("fc1", nn.Linear(64, 32)), ("fc2", nn.Linear(32, 10))]))
assert len(fixed) == 2
print(fixed(x).shape)

# %% [markdown]
# ## `ModuleDict` 拒绝某些键
#
# 已经是 `ModuleDict` 属性的键会引发 `KeyError`：既包括它的方法（`keys`、`type`、`forward`……），也包括每个模块在 `__init__` 里设置的属性，比如 `training`：

# %% tags=["raises-exception"] raises="KeyError"
blocks = nn.ModuleDict()
blocks["type"] = nn.Linear(4, 4)

# %% [markdown]
# `training` 不是类的属性，只是每个实例的属性，所以 `hasattr(nn.ModuleDict, key)` 这样的检查会放过它，赋值时同样抛出 `KeyError`：

# %% tags=["raises-exception"] raises="KeyError"
print(hasattr(nn.ModuleDict, "training"), hasattr(nn.ModuleDict(), "training"))
blocks["training"] = nn.Linear(4, 4)

# %% [markdown]
# 带点号的键也一样，而 `layer1.0.conv1` 这样的层名正带有点号；同样是 `KeyError`：

# %% tags=["raises-exception"] raises="KeyError"
blocks["layer1.0.conv1"] = nn.Linear(4, 4)

# %% [markdown]
# `module_key` 把任意层名变成字典能接受的键。只把点号换成 `_` 是不行的：`layer1.0` 和 `layer1_0` 是两个不同的层，却会得到同一个键。所以点号换成 `/`，而名字里原有的 `%` 或 `/` 先按 URL 的方式转义（`%25`、`%2F`）；恰好是 `ModuleDict` 实例属性的名字，末尾再加一个 `/`。别的名字不可能得到这样的键，因为层名不会以点号结尾：

# %%
from tutorials_pkg.definition import module_key

show_source(module_key)

# %%
names = ["type", "training", "layer1.0.conv1", "layer1_0_conv1", "layer1.0", "layer1_0"]
for name in names:
    blocks[module_key(name)] = nn.Linear(4, 4)
print({name: module_key(name) for name in names})
assert len(blocks) == len(names)  # distinct names, distinct keys

# %% [markdown]
# ## `MySequential` 里拼错的 `OrderedDict`
#
# 一篇广为流传的教程像[上一页](../#nnsequential-内部做了什么)那样重写 `nn.Sequential`，也写了 `OrderedDict` 分支，却拼成了 `OrderDict`。Python 直到执行那一行时才查找名字，而参数不止一个时，`len(args) == 1 and ...` 在查到这个名字之前就停下了，所以常见的测试（传几层进去）能通过：

# %%
from collections import OrderedDict


class MySequentialAsPrinted(nn.Module):  # the tutorial's version, misspelling included
    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderDict):  # OrderDict: not a name
            for key, module in args[0].items():
                self.add_module(key, module)
        else:
            for idx, module in enumerate(args):
                self.add_module(str(idx), module)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x


several = MySequentialAsPrinted(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
print(list(several._modules), several(x).shape)

# %% [markdown]
# 这个分支本来要处理的情形，即传入一个 `OrderedDict`，会抛出 `NameError`：

# %% tags=["raises-exception"] raises="NameError"
MySequentialAsPrinted(OrderedDict([("fc1", nn.Linear(64, 32)), ("act", nn.ReLU())]))

# %% [markdown]
# 只传一个参数时都是如此，只有一层的链也不例外：只要 `len(args) == 1`，就会执行到 `isinstance(args[0], OrderDict)`。

# %%
try:
    MySequentialAsPrinted(nn.Linear(64, 10))
except NameError as error:
    print("NameError:", error)
else:
    raise AssertionError("a single layer should reach the misspelt name")

# %% [markdown]
# 上一页的 `MySequential` 拼写正确，两种用法都支持：

# %%
from tutorials_pkg.definition import MySequential

print(list(MySequential(OrderedDict([("fc1", nn.Linear(64, 32)), ("act", nn.ReLU())]))._modules))
print(list(MySequential(nn.Linear(64, 10))._modules))

# %% [markdown]
# ## 打印结果里的 `grad_fn=<AddmmBackward>`
#
# 同一篇教程打印出的模型输出带着 `grad_fn=<AddmmBackward>`。在今天的 torch 上，这个节点叫 `AddmmBackward0`：反向节点的名字带一个编号，用来区分同一个算子的不同求导公式（`pow` 的指数是数和是张量时，分别是 `PowBackward0` 和 `PowBackward1`）。拿打印出的名字和 `"AddmmBackward"` 比较的代码，现在永远匹配不上；应当去掉末尾的数字，或者直接和带编号的名字比较：

# %%
torch.manual_seed(0)  # the printed values, the same at every build
out = MultiHeadNet()(x[:2], head="parity")
print(out)
name = type(out.grad_fn).__name__
assert name == "AddmmBackward0" and name != "AddmmBackward"
w = torch.ones(3, requires_grad=True)
print("w ** 2:", type(w.pow(2).grad_fn).__name__, " w ** w:", type(w.pow(w).grad_fn).__name__)
assert name.rstrip("0123456789") == "AddmmBackward"  # the name without its number
