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
# # 中间层输出：常见错误
#
# 本章的最后一页，接在[手写数字 CNN 的特征图](../feature_maps/)之后：实践中取中间层输出时常犯的错误，每个都先运行出错的写法，再给出改正。例子大多沿用[第一页](../)的随机权重 `resnet18`、两张随机图像，以及它的第一个残差块 `layer1.0`。

# %%
import torch
from torch import nn
from torchvision.models import resnet18
from tutorials_pkg.intermediate import by_fx, by_hooks
from tutorials_pkg.source import show_source

torch.manual_seed(0)
model = resnet18(weights=None).eval()
x = torch.randn(2, 3, 224, 224)
block = model.layer1[0]  # the first residual block
stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))  # its input

# %% [markdown]
# ## 钩子没有 `clone()`
#
# 大多数人写的第一个钩子把 `output` 原样存下。在 resnet 的原地 ReLU 之下，存下的张量转眼就被 ReLU 覆盖：

# %%
from tutorials_pkg.intermediate import by_hooks_without_clone_or_removal

show_source(by_hooks_without_clone_or_removal)

# %%
torch.manual_seed(0)
fresh = resnet18(weights=None).eval()
produced = fresh.bn1(fresh.conv1(x))  # bn1's real output, about half negative
kept = by_hooks_without_clone_or_removal(fresh, x, ["bn1"])["bn1"]
print("negative values kept:", (kept < 0).sum().item(), "of", kept.numel())
assert torch.equal(kept, torch.relu(produced))  # ReLU's result, not bn1's

# %% [markdown]
# 解决办法是在钩子里 `output.clone()`，就像 [`by_hooks`](../#4-前向钩子by_hooks)：

# %%
assert torch.equal(by_hooks(fresh, x, ["bn1"])["bn1"], produced)
print("by_hooks returns bn1's output")

# %% [markdown]
# ## 钩子从不移除
#
# `by_hooks_without_clone_or_removal` 也不移除钩子：每调用一次多一个，每个钩子都让它见到的最后一个张量留在内存里。

# %%
for _ in range(2):
    by_hooks_without_clone_or_removal(fresh, x, ["bn1"])
print("hooks on bn1:", len(fresh.bn1._forward_hooks))
assert len(fresh.bn1._forward_hooks) == 3  # one from each call

# %% [markdown]
# `register_forward_hook` 返回句柄（handle），`handle.remove()` 移除钩子。`by_hooks` 在 `finally` 里移除，`forward` 失败时也一样；这里它抛出 `RuntimeError`（输入是单通道图）：

# %% tags=["raises-exception"] raises="RuntimeError"
by_hooks(model, torch.randn(1, 1, 224, 224), ["layer2"])

# %%
assert not any(module._forward_hooks for module in model.modules())
print("no hooks left on the model")

# %% [markdown]
# ## 训练模式下的 `by_hooks` 会改动 BatchNorm 的统计量
#
# `by_hooks` 按原样运行 `forward`，而刚构造出来、或者刚从训练循环出来的模型处于训练模式：这时的 `forward` 就是训练步里的那一次。BatchNorm 用当前批量的统计量归一化，并更新它的滑动统计量（Dropout 也照样随机丢弃），毫无提示。`torch.no_grad()` 挡不住：它关掉的是梯度，不是训练时的行为。

# %%
torch.manual_seed(0)
fresh_model = resnet18(weights=None)  # a new model starts in train mode
before = fresh_model.bn1.running_mean.clone()
with torch.no_grad():  # switches off gradients, not training behaviour
    by_hooks(fresh_model, x, ["layer1"])
moved = (fresh_model.bn1.running_mean - before).abs().max().item()
print(f"training={fresh_model.training}: bn1's running mean moved by up to {moved:.3f}")
assert moved > 0

# %% [markdown]
# 取特征属于推理：先调用 `.eval()`，滑动统计量就停在训练结束时的值：

# %%
before = fresh_model.bn1.running_mean.clone()
with torch.no_grad():
    by_hooks(fresh_model.eval(), x, ["layer1"])
assert torch.equal(fresh_model.bn1.running_mean, before)
print("training=False: running statistics unchanged")

# %% [markdown]
# ## 用 `x.data` 保存特征
#
# 原教程的第一种方法在 `layer1` 处保存 `x.data`。`.data` 与原张量共用内存，却切断了 autograd 的记录：之后原地修改保存的特征，模型的反向传播就会悄悄用上改过的值。下面保存 sigmoid 的输出，再原地减去均值；sigmoid 的反向传播要读它的输出，于是梯度算错了，却不报任何错：

# %%
torch.manual_seed(0)
chain = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 1))
inputs = torch.randn(5, 4)
hidden = chain[1](chain[0](inputs))  # the sigmoid's output, saved for backward
loss = chain[2](hidden).sum()
right = torch.autograd.grad(loss, chain[0].weight, retain_graph=True)[0]
features = hidden.data  # as the tutorial keeps it
features -= features.mean()  # centred in place, for another use
wrong = torch.autograd.grad(loss, chain[0].weight)[0]
print(f"gradient off by up to {(right - wrong).abs().max():.3f}, and no error")
assert not torch.allclose(right, wrong)

# %% [markdown]
# `.detach()` 同样共用内存，但 autograd 能发现这次修改并拒绝计算，抛出 `RuntimeError`（"one of the variables needed for gradient computation has been modified by an inplace operation"）：

# %% tags=["raises-exception"] raises="RuntimeError"
hidden = chain[1](chain[0](inputs))
loss = chain[2](hidden).sum()
features = hidden.detach()
features -= features.mean()
torch.autograd.grad(loss, chain[0].weight)

# %% [markdown]
# 解决办法是复制一份：`.detach().clone()`（`by_children`、`by_fx` 和 `by_hooks` 都会复制可能被之后的原地运算改掉的输出）；在 `torch.no_grad()` 下没有计算图需要保护；需要梯度的特征则原样保留：

# %%
hidden = chain[1](chain[0](inputs))
loss = chain[2](hidden).sum()
features = hidden.detach().clone()
features -= features.mean()
assert torch.equal(torch.autograd.grad(loss, chain[0].weight)[0], right)
print("with .detach().clone() the gradient is unchanged")

# %% [markdown]
# ## `nn.Sequential(*model.children())` 不等于原模型
#
# 用子模块重新拼模型（为了截断或遍历），会丢掉 `forward` 在子模块之间做的事。在 resnet 上缺少展平，抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
nn.Sequential(*model.children())(x)

# %% [markdown]
# 在残差块内部更糟：不报错，结果却不同。残差块的子模块是 `conv1, bn1, relu, conv2, bn2`，残差相加和最后的 ReLU 不在其中。

# %%
chained = nn.Sequential(*block.children())(stem)
print("max difference from the block:", (chained - block(stem)).abs().max().item())
assert not torch.allclose(chained, block(stem))

# %% [markdown]
# 只在模型本来就是链条的地方截断（resnet 到 `layer4` 为止的子模块就是：常用的主干网络），或者用 FX 或钩子：

# %%
backbone = nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc
assert torch.equal(backbone(x), by_fx(model, x, ["layer4"])["layer4"])
assert torch.equal(by_hooks(model, x, ["layer1.0"])["layer1.0"], block(stem))
print("backbone equals layer4; hooks give the block's real output")

# %% [markdown]
# ## `create_feature_extractor` 失败后模型停在训练模式
#
# `create_feature_extractor` 先切到训练模式追踪，再切到评估模式，最后恢复调用者的模式。名字写错时它半途停下：原本处于评估模式的模型变成了训练模式，此后 BatchNorm 用当前批量的统计量归一化并更新滑动统计量，毫无提示。`fx_extractor`（`by_fx` 调用它）在 `finally` 里恢复模式：

# %%
from torchvision.models.feature_extraction import create_feature_extractor

modes = []
for extract in (create_feature_extractor, lambda m, names: by_fx(m, x, names)):
    model.eval()
    try:
        extract(model, ["layer5"])
    except ValueError as error:
        print(str(error)[:70], "...")
    modes.append(model.training)
print("model.training afterwards (create_feature_extractor, by_fx):", modes)
assert modes == [True, False]
