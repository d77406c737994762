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
# # 中间层的输入、梯度与代价
#
# [上一页](../reach/)比较了取中间层输出的四种方法各自能取到什么。本页先用钩子做另外两件事：取某层的输入（`by_pre_hooks`），以及损失对某层输出的梯度（`grads_by_hooks`）；然后实测四种方法的耗时和内存。示例模型与上一页相同：随机权重、评估模式的 `resnet18`，输入两张随机的 224×224 图像。

# %%
import torch
from torchvision.models import resnet18
from tutorials_pkg.intermediate import build_fx_extractor, by_hooks
from tutorials_pkg.source import show_source

torch.manual_seed(0)
model = resnet18(weights=None).eval()
x = torch.randn(2, 3, 224, 224)

# %% [markdown]
# ## 某层的输入：`by_pre_hooks`
#
# 前向钩子也能拿到模块的输入，是由位置参数组成的元组，原教程为 `avgpool` 记录的就是它。*前向预钩子*（forward pre-hook，`register_forward_pre_hook`）在模块运行之前被调用，拿到同样的参数。最常见的用法：`fc` 的输入就是倒数第二层的特征向量，已经过 resnet 的 `torch.flatten`，而这个运算任何钩子都看不到。`hook_inputs` 记录每个指定模块的第一个输入（复制一份），钩子在 `finally` 里移除：

# %%
from tutorials_pkg.intermediate import hook_inputs

show_source(hook_inputs)

# %% [markdown]
# 工具 `by_pre_hooks` 调用它；代码上方标出的文件里，其余部分像 `by_hooks` 一样处理被包装或编译过的模型、关键字参数（`input_kwargs=`），以及写错或从未被调用的名字。

# %%
from tutorials_pkg.intermediate import by_pre_hooks, grads_by_hooks

with torch.no_grad():
    penultimate = by_pre_hooks(model, x, ["fc"])["fc"]
    pooled = by_hooks(model, x, ["avgpool"])["avgpool"]
assert torch.equal(penultimate, torch.flatten(pooled, 1))
print("fc's input", tuple(penultimate.shape), "is avgpool's output", tuple(pooled.shape), "flattened")

# %% [markdown]
# 前向预钩子默认只拿到位置参数；用 `with_kwargs=True` 注册时，它以 `hook(module, args, kwargs)` 的形式被调用。模块用关键字参数调用时这一点就很要紧，比如这个小注意力网络调用它的 `nn.MultiheadAttention`：

# %%
from tutorials_pkg.intermediate import KeywordAttentionNet

show_source(KeywordAttentionNet)

# %% [markdown]
# `attn` 上的普通前向预钩子看到的是空元组；`by_pre_hooks`（`with_kwargs=True`）取 `forward` 第一个参数 `query` 的值：

# %%
torch.manual_seed(0)
attention_net = KeywordAttentionNet().eval()
tokens = torch.randn(2, 5, 16)
seen = []
handle = attention_net.attn.register_forward_pre_hook(lambda module, args: seen.append(args))
attention_net(tokens)
handle.remove()
print("a plain pre-hook gets args =", seen[0])
assert torch.equal(by_pre_hooks(attention_net, tokens, ["attn"])["attn"], tokens)
print("by_pre_hooks gets query:", tuple(tokens.shape))

# %% [markdown]
# ## 某层的梯度：`grads_by_hooks`
#
# 损失对某层输出的梯度，正是 Grad-CAM 在 `layer4` 上要的东西。`hook_grads` 用前向钩子留下每个指定模块的输出，再用 `torch.autograd.grad` 求 `loss_fn(model(x))` 对这些输出的梯度：与 `loss.backward()` 不同，它不往任何参数的 `.grad` 里累加。不需要梯度的输出（权重冻结，或者输入是词元 id）会换成一个需要梯度的叶子张量，所以 `x` 不必是浮点数。有两处检查防止它悄悄给出错误的结果：`nn.Identity` 返回的就是输入本身，对它求梯度会把这个张量的其他用处也算进去，所以给它换上一个自己的视图；输出之后被原地修改的，拒绝计算（见下文）：

# %%
from tutorials_pkg.intermediate import hook_grads

show_source(hook_grads)

# %% [markdown]
# 工具 `grads_by_hooks` 调用它，接受的参数与其他工具相同（见代码上方标出的文件）。损失取 `logits[:, 0].sum()` 时，`fc` 处的梯度必然在类别 0 上为 1、其余为 0；`layer4` 处的梯度就是 Grad-CAM 按通道求平均的那个：

# %%
grads = grads_by_hooks(model, x, ["layer4", "fc"], lambda logits: logits[:, 0].sum())
print({name: tuple(g.shape) for name, g in grads.items()})
one_hot = torch.zeros(2, 1000)
one_hot[:, 0] = 1
assert torch.equal(grads["fc"], one_hot)
assert all(p.grad is None for p in model.parameters())
print("the gradient at fc is one-hot; no parameter's .grad was touched")

# %% [markdown]
# 语言模型的输入是词元 id，也就是整数：梯度从嵌入层的输出开始算，`x` 本身不需要梯度：

# %%
from torch import nn

torch.manual_seed(0)
token_model = nn.Sequential(nn.Embedding(100, 8), nn.Flatten(), nn.Linear(5 * 8, 2))
token_ids = torch.randint(0, 100, (3, 5))
token_grads = grads_by_hooks(token_model, token_ids, ["0"], lambda logits: logits[:, 1].sum())
assert torch.equal(token_grads["0"], token_model[2].weight[1].reshape(5, 8).expand(3, 5, 8))
print("d logit 1 / d embedding:", tuple(token_grads["0"].shape), "for ids of dtype", token_ids.dtype)

# %% [markdown]
# 输出在模块算出之后又被原地修改，就是另一回事了。resnet 的 `bn1` 后面紧跟 `ReLU(inplace=True)`，它会覆盖 `bn1` 的输出：autograd 给出的将是对 ReLU 之后那个张量的梯度，而且不报错。`hook_grads` 发现这个张量的版本计数变了，于是抛出 `RuntimeError`。（取 `grad_output` 的另一种办法 `register_full_backward_hook` 遇到同样的情况，会抛出 autograd 自己的报错。）

# %% tags=["raises-exception"] raises="RuntimeError"
grads_by_hooks(model, x, ["bn1"], lambda logits: logits[:, 0].sum())

# %% [markdown]
# 对手头的某一个张量，`Tensor.register_hook` 最简单：它以损失对该张量的梯度被调用，并且能跟上原地修改（拿到的是注册时那个值的梯度）。在一个带原地 ReLU 的小网络上，它的结果与把 ReLU 改成非原地后 `grads_by_hooks` 的结果相同：

# %%
from torch import nn

torch.manual_seed(0)
chain = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3))
inputs = torch.randn(2, 4)
hidden, seen = chain[0](inputs), []
hidden.register_hook(seen.append)  # called with d loss / d hidden
chain[2](chain[1](hidden)).sum().backward()
chain[1].inplace = False
assert torch.equal(seen[0], grads_by_hooks(chain, inputs, ["0"], torch.sum)["0"])
print("Tensor.register_hook and grads_by_hooks agree:", tuple(seen[0].shape))

# %% [markdown]
# 原教程提到的 `register_backward_hook` 已被弃用。它挂在模块 `forward` 的*最后一个* autograd 节点上：对 `Sequential(Linear, ReLU, Linear)` 来说就是最后那个 `Linear`，所以 `grad_input` 里装的是这一层的偏置梯度、对*这一层*输入的梯度和（转置的）权重梯度，而不是对整个模块输入的梯度。torch 会为此给出 `FutureWarning`（"Using a non-full backward hook when the forward contains multiple autograd Nodes is deprecated"），见下：

# %% tags=["shows-warning"]
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
inputs = torch.randn(2, 4, requires_grad=True)
seen = []
handle = net.register_backward_hook(lambda module, grad_input, grad_output: seen.append(grad_input))
net(inputs).sum().backward()
handle.remove()
bias, last_input, weight = seen[0]
assert torch.equal(bias, net[2].bias.grad) and torch.equal(weight, net[2].weight.grad.T)
print("grad_input:", [tuple(g.shape) for g in seen[0]], "; the input's gradient:", tuple(inputs.grad.shape))

# %% [markdown]
# `register_full_backward_hook` 给出文档所说的 `grad_input`：对模块输入的梯度。挂过旧式钩子的模块即使 `remove()` 之后也不接受新式钩子，所以把同样的层放进一个新的 `Sequential`：

# %%
full = []
fixed = nn.Sequential(*net)  # the same layers, a container without the old hook
handle = fixed.register_full_backward_hook(lambda module, grad_input, grad_output: full.append(grad_input))
inputs.grad = None
fixed(inputs).sum().backward()
handle.remove()
assert torch.equal(full[0][0], inputs.grad)
print("full hook's grad_input[0] is the input's gradient:", tuple(full[0][0].shape))

# %% [markdown]
# ## 实测代价
#
# `extraction_costs` 在 `torch.no_grad()` 下给每种方法的每个请求计时（预热后 3 次取中位数，各项轮流运行）并测峰值内存，旁边是一次普通前向传播。CPU 上进程内存（RSS）还包括分配器释放后留着的块，所以 `peak_memory_bytes` 改用 profiler；CUDA 上分配器自己记录峰值（`torch.cuda.max_memory_allocated`）。

# %%
from tutorials_pkg.intermediate import EXTRACTORS, chain_children, extraction_costs, format_cost_table
from tutorials_pkg.measure import cpu_peak_memory_bytes

show_source(cpu_peak_memory_bytes)

# %% [markdown]
# resnet18 和 resnet50 的 `layer2` 与 `layer4`，输入一张 224×224 的图（批大小 1，让页面快些；`benchmarks/features_extraction.py` 用批大小 8）。时间是构建本页的机器上的耗时，共享机器上有噪声；`x forward` 是相对普通前向传播的倍数。`chain_children` 是 `by_children` 去掉核对之后的核心，和四个工具一起测。其中的 `assert` 用已知答案检验内存统计：两个 4 MiB 张量加上它们的和。

# %% tags=["measured"]
from torchvision.models import resnet50
from tutorials_pkg.measure import median_seconds, peak_memory_bytes
from tutorials_pkg.runtime import default_device

assert peak_memory_bytes(lambda: torch.ones(2**20) + torch.ones(2**20)) == 3 * 4 * 2**20  # 12 MiB
device = default_device()
one_image = torch.randn(1, 3, 224, 224, device=device)
for build in (resnet18, resnet50):
    torch.manual_seed(0)
    net = build(weights=None).eval().to(device)
    methods = {**EXTRACTORS, "chain_children": chain_children}
    rows = extraction_costs(net, one_image, requests=["layer2", "layer4"], methods=methods, repeats=3)
    print(f"{build.__name__} on {device}\n{format_cost_table(rows)}\n")
trace_s = median_seconds(lambda: build_fx_extractor(net, ["layer4"]), repeats=3)
conv = net.layer4[1].conv2  # 512 -> 512 channels, 3x3, on 7x7
peak = peak_memory_bytes(lambda: conv(torch.randn(1, 512, 7, 7, device=device)), device)
print(f"resnet50: tracing takes {trace_s * 1e3:.0f} ms; one layer4 3x3 convolution peaks at "
      f"{peak / 2**20:.1f} MiB, its weights are {conv.weight.numel() * 4 / 2**20:.1f} MiB")

# %% [markdown]
# 怎样读这些数字：
#
# - 时间：`chain_children` 在所请求的层之后停下，所以取 `layer2` 比一次前向传播便宜。`by_children` 和 `by_layer_getter` 也在那里停下，但要把模型跑到那里两遍：一遍走模型自己的 `forward`，核对子模块确实是串联的，再跑一遍链。确知模型是串联的、又在意时间，就直接调用核心函数。钩子总要跑完整个模型。`by_fx` 也提前停下，但它的数字包含追踪（表格下面那一行）：每次调用都要重新追踪，花的时间可能比前向传播本身还多。用 `build_fx_extractor` 构建一次，反复使用。
# - 内存：不需要梯度时，一层的输出在下一层用过后就释放，峰值是某一时刻同时存在的几个最大张量，而不是所有激活值之和。CPU 上其中之一是 oneDNN 按自己的布局复制的卷积权重：layer4 的一个 3×3 卷积，这一项约等于权重大小（最后一行），比一张图的任何激活值都大。只有峰值出现在所请求层之后时，提前停下才省内存；需要梯度时，到该层为止的激活值都要保留。
#
# | 方法 | 能取到 | 运行整个模型 | 代价 |
# |---|---|---|---|
# | `by_children` | 顶层子模块；在 `Linear` 前展平 | 否 | 到最后一个名字为止跑两遍：先用 `forward` 核对，再跑链 |
# | `by_layer_getter` | 顶层子模块；不含 `forward` 的其他操作 | 否 | 同上；输出被后面的子模块原地改过时拒绝 |
# | `by_fx` | 所有模块和运算，含嵌套；真正的 `forward` | 否，只跑所需部分 | 每次调用都追踪，再跑截断的前向传播 |
# | `by_hooks` | 所有模块，含嵌套；不含运算；复用的模块取最后一次 | 是 | 完整前向传播，每个名字复制一次 |
