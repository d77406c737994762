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
# # grad_fn：常见错误
#
# 这是[用 grad_fn 追踪网络结构](../)的最后一页，前一页是[必须一起剪的通道](../pruning/)。下面是朴素的追踪写法会出错的地方，其中好几处出自本章针对的那篇 YOLOv5 剪枝博客；每一处都先演示出错，再用[第一页](../#从节点回到模块)的 `grad_fn_modules` 解决。网络和输入与第一页相同：

# %%
import torch
from torch import nn

from tutorials_pkg.demo_models import tiny_resnet
from tutorials_pkg.grad_fn import grad_fn_modules
from tutorials_pkg.runtime import default_device
from tutorials_pkg.source import show_source

torch.manual_seed(0)
device = default_device()
model = tiny_resnet().to(device)
x = torch.randn(2, 3, 32, 32, device=device)

# %% [markdown]
# ## 在 `torch.no_grad()` 下追踪
#
# 朴素的写法只有三行：一个钩子，存下 `{output.grad_fn: module}`。

# %%
from tutorials_pkg.grad_fn import grad_fn_modules_without_checks

show_source(grad_fn_modules_without_checks)

# %% [markdown]
# 在关闭梯度的地方调用它（比如在评估循环里），每个 `grad_fn` 都是 `None`：十三个层全都落在同一个键上，只留下最后一个。没有任何报错。

# %%
with torch.no_grad():
    naive = grad_fn_modules_without_checks(model, x)
print(naive)
assert list(naive) == [None] and naive[None] is model[7]

# %% [markdown]
# `grad_fn_modules` 先检查 `torch.is_grad_enabled()`，并抛出一个说明该怎么做的 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.no_grad():
    grad_fn_modules(model, x)

# %% [markdown]
# 在 `torch.inference_mode()` 里更糟：即使 `torch.enable_grad()` 在那里也记录不了任何东西。`grad_fn_modules` 检查 `torch.is_inference_mode_enabled()`，同样抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
with torch.inference_mode(), torch.enable_grad():
    grad_fn_modules(model, x)

# %% [markdown]
# 解决办法是在这些代码块之外追踪，或者在追踪时重新打开梯度；这在 `no_grad` 下有效（在 `inference_mode` 下无效）：

# %%
with torch.no_grad():
    with torch.enable_grad():
        traced = grad_fn_modules(model, x)
assert None not in traced and len(traced) == 13

# %% [markdown]
# ## 冻结的层得到 `None` 键
#
# 即使梯度是开着的，只要参数被冻结（这里像微调时那样，只留最后一层可训练）、输入又不需要梯度，同样会悄悄合并：冻结层的输出没有 `grad_fn`。只有保持可训练的最后一层拿到了真正的键。那篇 YOLOv5 博客遇到的正是这个问题：在把每个参数都设成 `requires_grad=True` 之前，它的 backbone 各层都落在 `None` 这个键下。

# %%
frozen = tiny_resnet().to(device)
for param in frozen.parameters():
    param.requires_grad_(False)
frozen[7].requires_grad_(True)  # fine-tune the last layer only

naive = grad_fn_modules_without_checks(frozen, x)
print({node and node.name(): type(module).__name__ for node, module in naive.items()})
assert None in naive and len(naive) == 2  # twelve frozen layers on one None key

# %% [markdown]
# `grad_fn_modules` 在同一个冻结的模型上追踪到了全部 13 层（见[冻结的参数](../#冻结的参数)）。
#
# ## `Identity` 悄悄顶替了它前面的层
#
# 把 `nn.Identity` 放进 types（比如想找出模型改造后留下的占位层），朴素的映射就丢掉了卷积：Identity 的输出带着卷积的节点，后来的赋值覆盖了先前的。

# %%
with_identity = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Identity(), nn.ReLU()).to(device)
naive = grad_fn_modules_without_checks(with_identity, x, types=(nn.Conv2d, nn.Identity))
print({node.name(): module for node, module in naive.items()})
assert list(naive.values()) == [with_identity[1]]  # the Conv2d is gone

# %% [markdown]
# `grad_fn_modules` 发现某个节点已经属于另一个层，抛出一个同时点名两者的 `ValueError`：

# %% tags=["raises-exception"] raises="ValueError"
grad_fn_modules(with_identity, x, types=(nn.Conv2d, nn.Identity))

# %% [markdown]
# 把原样传递输入的层排除在 `types` 之外；默认的 `types` 已经这样做了：

# %%
traced = grad_fn_modules(with_identity, x)
print({node.name(): module for node, module in traced.items()})
assert list(traced.values()) == [with_identity[0]]

# %% [markdown]
# ## 在循环里重新赋值的钩子列表
#
# 那篇博客在循环里注册钩子，每访问一层就写一次 `hooks = [m.register_forward_hook(...)]`。每次赋值都换掉了整个列表，所以循环结束后列表里只剩**最后一个**句柄，"移除所有钩子"只移除了一个：

# %%
from tutorials_pkg.grad_fn import grad_fn_modules_keeping_only_the_last_hook

show_source(grad_fn_modules_keeping_only_the_last_hook)

# %% [markdown]
# 十三个钩子里有十二个留在各自的模块上。之后的每次前向传播，无论是训练还是评估，都会继续往字典里添加条目，而字典又留着每一次前向传播的计算图和激活值（见[追踪结果在释放之前一直占着计算图](../#追踪结果在释放之前一直占着计算图)）：

# %%
leaky = tiny_resnet().to(device)
leaky_nodes = grad_fn_modules_keeping_only_the_last_hook(leaky, x)
still_hooked = [name for name, m in leaky.named_modules() if m._forward_hooks]
print(len(leaky_nodes), "nodes;", len(still_hooked), "modules still hooked:", still_hooked[:4], "...")
leaky(x)  # one more forward pass, anywhere later
print(len(leaky_nodes), "nodes after one more forward pass")
assert len(still_hooked) == 12 and len(leaky_nodes) == 13 + 12

# %% [markdown]
# `grad_fn_modules` 调用的 `record_grad_fn`（源码见[第一页](../#从节点回到模块)）用一个列表推导式得到所有句柄，并在 `finally` 里把它们全部移除：

# %%
clean = tiny_resnet().to(device)
grad_fn_modules(clean, x)
assert not any(m._forward_hooks for m in clean.modules())
print("hooks left:", sum(len(m._forward_hooks) for m in clean.modules()))

# %% [markdown]
# ## `torch.load('best.pt')['model']`
#
# 那篇博客用 `torch.load('best.pt')['model']` 加载模型：checkpoint 里存的是整个 pickle 化的模型。从 PyTorch 2.6 起，`torch.load` 默认 `weights_only=True`，只反序列化张量、普通的 Python 值和容器，以及白名单里的类；模型的类不在其中，于是抛出 `UnpicklingError`：

# %% tags=["raises-exception"] raises="UnpicklingError"
import os
import tempfile

folder = tempfile.TemporaryDirectory()
checkpoint = os.path.join(folder.name, "best.pt")
torch.save({"model": tiny_resnet().requires_grad_(False), "epoch": 3}, checkpoint)
torch.load(checkpoint)["model"]

# %% [markdown]
# `weights_only=False` 可以加载它，但会执行 pickle 里指定的任何代码：只对你自己生成或完全信任的文件这样做。长久之计是保存 `state_dict`，在代码里构建模型；[模型保存与读取](../../save_load/)一页讲了怎么做，以及怎样安全地加载这类文件。加载出来的模型参数是冻结的，和那篇博客里一样，`grad_fn_modules` 照样能追踪：

# %%
trusted = torch.load(checkpoint, weights_only=False)["model"].to(device)
folder.cleanup()
print(len(grad_fn_modules(trusted, x)), "layers traced")
assert not any(p.requires_grad for p in trusted.parameters())
