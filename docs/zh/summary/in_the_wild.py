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
# # 模型结构概览：常见错误
#
# 这是[模型结构概览（summary）](../)一章的最后一页，接在[真实模型上的 summary](../real_models/) 之后，收集实践中常见的错误：每个错误都先实际运行、看它出错（或者用断言证明结果不对），再给出改法。用到的 `ResNet18Stem` 是[第一页](../#要改的是模型而不只是工具)改好的模型。
#
# 本页可以单独运行：下面先载入用到的模块，并打印运行环境的版本。

# %%
import contextlib
import io
import re

import torch
import torchvision
from torch import nn
from torchsummary import summary as torchsummary_summary

from tutorials_pkg.demo_models import ResNet18Stem
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.source import show_source
from tutorials_pkg.summary import summary

torch.manual_seed(0)
print(describe_runtime())

# %% [markdown]
# ## `Sequential` 的切片是第二个名字
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
# ## 在训练模式下做 summary 会改变 BatchNorm 的滑动统计量
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
# `summary` 在评估模式、`torch.no_grad()` 下运行，如[上一页](../real_models/#模型保持原样)所示：滑动统计量保持不变。

# %%
victim = ResNet18Stem()
batchnorm = victim.layer0[1]
running_mean = batchnorm.running_mean.clone()
summary(victim, input_size=(1, 3, 32, 32))
assert torch.equal(batchnorm.running_mean, running_mean)
assert batchnorm.num_batches_tracked.item() == 0 and victim.training

# %% [markdown]
# ## 只有 `model.eval()`，没有切换回去
#
# 手写的 summary 如果调用了 `model.eval()` 却忘了切换回去，模型就停留在评估模式：接下来的训练中 BatchNorm 被冻结、dropout 被关闭，而且没有任何提示。事后调用 `model.train()` 也不对：它会把你特意冻结在评估模式的部分也打开。

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
# ## 输入对模型来说太小
#
# 每个池化层都把图像缩小一半。SqueezeNet 1.1 拿到 16×16 的输入，到第三个 max-pool 时就什么都不剩了，PyTorch 在池化层内部抛出 `RuntimeError`。`summary` 抛出的就是这个错误，类型和消息都不变（CUDA 显存不足的错误也还是原来的错误）：消息本身已经说明输出太小。PyTorch 说不出的是错误发生在模型的哪个位置，所以 `summary` 在下面加一条说明：出错的层和输入形状。

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
# ## 两种输入都给，或者都不给
#
# `input_size` 和 `input_data` 二选一。两个都传（或都不传）会抛出 `ValueError`，而不是悄悄地选用其中一个：

# %% tags=["raises-exception"] raises="ValueError"
summary(squeezenet, input_size=(1, 3, 64, 64), input_data=torch.randn(1, 3, 64, 64))

# %% [markdown]
# ## torchsummary 只数 `weight` 和 `bias`，遇到元组和 `None` 就出错
#
# `torchsummary` 读取层的 `weight` 和 `bias` 属性来数参数。名字不是这两个的参数都被漏掉：类别 token、位置嵌入、`nn.LSTM` 的 `weight_ih_l0`、`nn.MultiheadAttention` 的 `in_proj_weight`。下面是视觉 Transformer 里那样的类别 token：

# %%
class ClassToken(nn.Module):  # a learnable token put before the sequence, as in ViT
    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, 8))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.cat([self.token.expand(len(x), -1, -1), x], 1))


printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    torchsummary_summary(ClassToken(), (5, 8), device="cpu")
reported = int(re.search(r"Total params: ([\d,]+)", printed.getvalue()).group(1))
print(f"torchsummary: {reported}; the model has {sum(p.numel() for p in ClassToken().parameters())}")
assert reported == 8 * 2 + 2  # fc only: the token's 8 are not a .weight or .bias

# %% [markdown]
# 它还假定每个输出都是张量，或者由张量组成的一层列表，对其中每一项调用 `.size()`。`nn.LSTM` 返回 `(output, (h, c))`，`nn.MultiheadAttention(..., need_weights=False)` 返回 `(output, None)`：两者都会抛出 `AttributeError`。

# %% tags=["raises-exception"] raises="AttributeError"
class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        out, _ = self.lstm(x)  # (output, (h, c)): a tuple inside a tuple
        return self.fc(out[:, -1])


lstm_model = LSTMClassifier()
torchsummary_summary(lstm_model, (5, 8), device="cpu")

# %% [markdown]
# 出错之后，`torchsummary` 的钩子还留在模型上：它只在前向传播成功之后才移除钩子。`summary` 记录输出中每个张量的形状，不管它在哪一层，其他值原样保留；参数按模块来数，不管叫什么名字：

# %%
print("hooks left on lstm_model.lstm:", len(lstm_model.lstm._forward_hooks))
for model in (ClassToken(), LSTMClassifier()):
    counted = summary(model, input_size=(1, 5, 8))
    print(type(model).__name__, counted.total_params, counted.rows[1].output_shape)
    assert counted.total_params == sum(p.numel() for p in model.parameters())

# %% [markdown]
# ## 脚本化的模型
#
# `torch.jit.script` 和 `torch.jit.trace` 把模型变成 TorchScript，而 TorchScript 模块不接受前向钩子。`summary` 在运行任何东西之前就指出这一点：抛出 `TypeError`，说明哪个模块是脚本化的（整个模型，或者被脚本化的那个子模块），以及应该传入什么。（在 torch 2.14 上，`torch.jit.script` 本身还会发出 `FutureWarning`：TorchScript 已被弃用，建议改用 `torch.compile` 和 `torch.export`。）

# %% tags=["raises-exception", "shows-warning"] raises="TypeError"
summary(torch.jit.script(ResNet18Stem()), input_size=(1, 3, 32, 32))

# %% [markdown]
# 应该做 summary 的，是脚本化之前的模块：

# %%
print(f"{summary(ResNet18Stem(), input_size=(1, 3, 32, 32)).total_params:,}")
