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
# # 用 grad_fn 追踪网络结构
#
# 前向传播运行时，autograd 会记录每个张量是怎样得到的：每个结果都带着一个 `grad_fn`，即计算图中将来负责计算它的梯度的那个节点；每个节点的 `next_functions` 指向它的输入所对应的节点。这张记录下来的图，就是模型**实际运行**时的样子，包括 `print(model)` 看不到的残差连接。剪枝工具正是读这张图，来找出必须一起剪的层。本页把节点映射回产生它们的模块，画出这张图，并找出被残差加法绑在一起的通道。
#
# 本页的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## `grad_fn` 与 `next_functions`
#
# 一个卷积、一个 BatchNorm 和一个 ReLU。结果的 `grad_fn` 是 ReLU 的节点；它的 `next_functions` 通向 BatchNorm 的节点，再从那里通向卷积的节点：

# %%
import torch
from torch import nn

torch.manual_seed(0)
conv, bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
x = torch.randn(1, 3, 8, 8)
y = torch.relu(bn(conv(x)))

print(y.grad_fn)
print(y.grad_fn.next_functions)
print(y.grad_fn.next_functions[0][0].next_functions)
print(y.grad_fn.next_functions[0][0].next_functions[0][0].next_functions)

# %% [markdown]
# `next_functions` 的每一项是一个二元组（节点，该节点输出的序号）。`AccumulateGrad` 节点是叶子：一个需要梯度的张量，这里就是参数（`node.variable` 就是参数本身）。`None` 表示一个不需要梯度的输入：图片 `x`，以及不存在的 bias。这就是 PyTorch 文档中 `torch.autograd.graph.Node.next_functions` 的说明，遍历这张图只需要这些。
#
# ## 从节点回到模块
#
# 计算图只认识运算，不认识模块。在每个关心的层上挂一个 forward hook，就能看到这一层的输出，从而拿到它的 `grad_fn`：一个从该节点到该层的字典，就是两者之间的桥梁。`grad_fn_modules` 返回这个字典；真正干活的是 `trace_grad_fn`，它还保留了模型的输出（遍历的起点）和模型运行时的输入（遍历的终点）。两者都照顾到了朴素写法会出错的地方（见最后一节）：在 autograd 什么都不记录的地方拒绝运行；追踪期间让每个参数都需要梯度（冻结的层不产生计算图），结束后把每个标志恢复原样；在 eval 模式下运行并恢复每个模块的模式（BatchNorm 统计量不会变）；两个层共用同一个节点时抛出异常。

# %%
from tutorials_pkg.grad_fn import grad_fn_modules
from tutorials_pkg.source import show_source

show_source(grad_fn_modules)

# %% [markdown]
# 要追踪的网络：一个 stem 加上两个 torchvision 的 `BasicBlock`，第二个在捷径（shortcut）上有一个带步长的 1×1 卷积，和 ResNet 的 `layer2` 一样。

# %%
from tutorials_pkg.demo_models import tiny_resnet

show_source(tiny_resnet)

# %%
from tutorials_pkg.runtime import default_device

device = default_device()
model = tiny_resnet().to(device)
x = torch.randn(2, 3, 32, 32, device=device)

nodes = grad_fn_modules(model, x)
names = {module: name for name, module in model.named_modules()}
for node, module in nodes.items():
    print(f"{node.name():28} <- {names[module]} ({type(module).__name__})")
layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
assert len(nodes) == len(layers) == 13

# %% [markdown]
# ## 画出计算图
#
# `module_graph` 接收一次追踪的结果，从输出往回走，遍历它的计算图。属于某一层的节点画成方框；合并两条分支的节点（加、乘、拼接）保留为小圆圈，因为残差连接就是在那里汇合的；其余节点（ReLU、池化、变形）直接穿过。结果会把自己画成一张 mermaid 图：

# %%
from tutorials_pkg.grad_fn import module_graph, trace_grad_fn

show_source(module_graph)

# %%
trace = trace_grad_fn(model, x)  # one forward pass, for the graph and the groups below
graph = module_graph(trace)
graph.mermaid()

# %% [markdown]
# 两个 `+` 就是 `print(model)` 从来不显示的残差加法：第一个把 stem 的输出加到第一个 block 的输出上；第二个把带步长的捷径加到第二个 block 的输出上。图中没有任何东西是手写的。

# %%
residual_edges = {("1", "+1"), ("3.bn2", "+1"), ("4.downsample.1", "+2"), ("4.bn2", "+2")}
assert residual_edges <= set(graph.edges)

# %% [markdown]
# ## 残差加法绑定的通道
#
# 结构化剪枝删除的是整个通道：删掉一个卷积的第 *k* 个输出通道，就要删掉它后面 BatchNorm 的第 *k* 个通道，以及每个读取它的层的第 *k* 个输入通道。残差加法让这件事变成了一组层的事：`a + b` 要求 `a` 和 `b` 的通道相同，所以从产生 `a` 的卷积里删掉第 *k* 个通道，就必须从产生 `b` 的卷积里也删掉，还要从读取这个和的所有层里删掉。`coupled_channel_groups` 从计算图里找出这些组：从输入走到输出，卷积或全连接层开启新的通道，逐元素的运算（加法、激活、池化、BatchNorm、depthwise 卷积）把它所有输入的通道并成一组。

# %%
from tutorials_pkg.grad_fn import coupled_channel_groups

show_source(coupled_channel_groups)

# %%
for group in coupled_channel_groups(trace):
    print(group)

# %% [markdown]
# 第一组是第一个 block 的残差主干：stem 卷积及其 BatchNorm，以及这个 block 的 `conv2` 及其 BatchNorm，都写入同样的 8 个通道。ResNet-18 的 `layer1` 是同一回事，只是规模更大：stem 和两个 block 的第二个卷积共用 64 个通道，由四个卷积读取。

# %%
import torchvision

resnet = torchvision.models.resnet18(weights=None).to(device).eval()
image = torch.randn(1, 3, 64, 64, device=device)
resnet_groups = coupled_channel_groups(trace_grad_fn(resnet, image))
stream = next(group for group in resnet_groups if "layer1.0.conv2" in group.layers)
print("layers:   ", stream.layers)
print("consumers:", stream.consumers)
assert stream.layers == ["conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2",
                         "layer1.1.conv2", "layer1.1.bn2"]

# %% [markdown]
# 只剪组里的一个卷积（这里让 `layer1.0.conv2` 及其 BatchNorm 失去第 0 个通道），形状在加法处就对不上了，抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
from tutorials_pkg.grad_fn import ChannelGroup, prune_channel_group

alone = ChannelGroup(["layer1.0.conv2", "layer1.0.bn2"], [])
prune_channel_group(resnet, alone, drop=[0])
resnet(image)

# %% [markdown]
# 把整个组一起剪，也就是所有写入这个通道的层和所有读取它的层，得到的更小的网络可以正常运行：

# %%
show_source(prune_channel_group)

# %%
resnet = torchvision.models.resnet18(weights=None).to(device).eval()
before = sum(p.numel() for p in resnet.parameters())
prune_channel_group(resnet, stream, drop=list(range(16)))  # 64 -> 48 channels
after = sum(p.numel() for p in resnet.parameters())
print(resnet(image).shape, f"parameters {before:,} -> {after:,}")
assert resnet.layer1[1].conv2.out_channels == 48
assert resnet.layer2[0].conv1.in_channels == 48

# %% [markdown]
# 删哪些通道（权重最小的，或对损失影响最小的）由剪枝方法决定；哪些层必须一起删，由计算图决定。
#
# ## 冻结的参数
#
# 一个冻结的层（参数的 `requires_grad=False`），如果它的输入也不需要梯度，就不会记录自己的计算图。`grad_fn_modules` 在追踪期间让每个参数都需要梯度，并把每个标志恢复原样：

# %%
frozen = tiny_resnet().to(device)
for param in frozen.parameters():
    param.requires_grad_(False)
frozen[7].requires_grad_(True)  # fine-tune the last layer only
flags = [param.requires_grad for param in frozen.parameters()]

print(len(grad_fn_modules(frozen, x)), "layers traced")
assert [param.requires_grad for param in frozen.parameters()] == flags

# %% [markdown]
# ## 会冲突的情况：`nn.Identity`
#
# 一个原样返回输入的模块，返回的是**同一个张量**，所以它的输出带着它输入的 `grad_fn`。`nn.Identity` 是这样，eval 模式下的 `nn.Dropout` 也是。作为字典的键，这样的两层就成了一层：

# %%
conv_out = conv(torch.randn(1, 3, 8, 8))
print(nn.Identity()(conv_out).grad_fn is conv_out.grad_fn)
print(nn.Dropout().eval()(conv_out).grad_fn is conv_out.grad_fn)

# %% [markdown]
# 这就是默认的 `types` 都是真正做计算的层（`Conv2d`、`BatchNorm2d`、`Linear`、`PReLU`）的原因。in-place 的 ReLU 不会冲突：它把张量的 `grad_fn` 换成一个新节点，新节点的输入是旧节点。被调用两次的模块也不算冲突：两个节点，一个模块。
#
# ## 实践中常见的错误
#
# ### 在 `torch.no_grad()` 下追踪
#
# 朴素的写法只有三行：一个 hook，存下 `{output.grad_fn: module}`。

# %%
from tutorials_pkg.grad_fn import grad_fn_modules_without_checks

show_source(grad_fn_modules_without_checks)

# %% [markdown]
# 在关闭梯度的地方调用它（比如在评估循环里），每个 `grad_fn` 都是 `None`：十三个层全都落在同一个键上，最后一个获胜。没有任何报错。

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
# ### 冻结的层得到 `None` 键
#
# 即使梯度是开着的，只要参数被冻结、输入又不需要梯度，同样会悄悄合并：冻结层的输出没有 `grad_fn`。只有保持可训练的最后一层拿到了真正的键：

# %%
naive = grad_fn_modules_without_checks(frozen, x)
print({node and node.name(): type(module).__name__ for node, module in naive.items()})
assert None in naive and len(naive) == 2  # twelve frozen layers on one None key

# %% [markdown]
# `grad_fn_modules` 在同一个冻结的模型上追踪到了全部 13 层（见上文）。
#
# ### `Identity` 悄悄顶替了它前面的层
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
