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
# 前向传播运行时，autograd 会记录每个张量是怎样算出来的：每个结果都带着一个 `grad_fn`，即计算图中将来负责计算它的梯度的那个节点；每个节点的 `next_functions` 指向它的各个输入所对应的节点。记录下来的这张图，就是模型**实际运行**时的样子，包括 `print(model)` 看不到的残差连接。剪枝工具正是读这张图，找出必须一起剪的层。本页把节点映射回产生它们的模块，画出这张图，并找出被残差加法绑在一起的通道。
#
# 本页的每一段输出，都是构建网站时实际运行代码得到的，运行环境就是下面打印的版本。

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

relu_node = y.grad_fn
bn_node = relu_node.next_functions[0][0]
conv_node = bn_node.next_functions[0][0]
for node in (relu_node, bn_node, conv_node):
    inputs = [(parent.name() if parent else None, index) for parent, index in node.next_functions]
    print(f"{node.name():26} next_functions: {inputs}")

# %% [markdown]
# 直接打印节点，得到的是它的类名和内存地址；`node.name()` 只给出类名，遍历计算图用的就是它。`next_functions` 的每一项是一个二元组（节点，该节点输出的序号）。`AccumulateGrad` 节点是叶子：一个需要梯度的张量，这里就是参数（`node.variable` 就是参数本身）。`None` 表示一个不需要梯度的输入：图片 `x`，以及不存在的 bias。这是 PyTorch 文档对 `torch.autograd.graph.Node.next_functions` 的说明，遍历这张图只需要这些。
#
# ## 从节点回到模块
#
# 计算图只认识运算，不认识模块。在每个关心的层上挂一个钩子（hook）：前向钩子能看到这一层的输出，从而拿到它的 `grad_fn`；一个从该节点到该层的字典，把两者联系了起来。`grad_fn_modules` 返回这个字典；实际的工作由 `trace_grad_fn` 完成，它还保留了模型的输出（遍历的起点）和模型运行时的输入（遍历的终点）。朴素写法会出错的地方（见最后一节），两者都处理了：在 autograd 什么都不记录的地方拒绝运行；追踪期间让每个参数都需要梯度（冻结的层不产生计算图），结束后把每个标志恢复原样；在 eval 模式下运行并恢复每个模块的模式（BatchNorm 的滑动统计量不会变）；两个层共用同一个节点时抛出异常。它们接收输入的方式与模型相同：一个张量，或者作为唯一参数的张量列表或字典（检测模型的图像列表：`grad_fn_modules(model, images)` 调用的是 `model(images)`），或者一个由位置参数组成的元组；模型运行在输入的副本上，所以就地修改输入的模型不会改动你的张量。`types` 可以是一个模块类，也可以是由模块类组成的列表或元组。

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
# `module_graph` 接收一次追踪的结果，从输出往回走，遍历它的计算图。属于某一层的节点画成方框；合并两条分支的节点（加、乘、拼接）保留为小圆圈，因为残差连接就是在那里汇合的；其余节点（ReLU、池化、变形）直接穿过。`graph.mermaid()` 返回 Mermaid 源码，本站（以及 Jupyter）会把它渲染成图：

# %%
from tutorials_pkg.grad_fn import module_graph, trace_grad_fn

show_source(module_graph)

# %%
trace = trace_grad_fn(model, x)  # one forward pass, for the graph and the groups below
graph = module_graph(trace)
graph.mermaid("LR")  # left to right

# %% [markdown]
# 两个 `+` 就是 `print(model)` 从来不显示的残差加法：第一个把 stem 的输出加到第一个 block 的输出上；第二个把带步长的捷径加到第二个 block 的输出上。图中没有任何东西是手写的。

# %%
residual_edges = {("1", "+1"), ("3.bn2", "+1"), ("4.downsample.1", "+2"), ("4.bn2", "+2")}
assert residual_edges <= set(graph.edges)

# %% [markdown]
# ## 残差加法绑定的通道
#
# 结构化剪枝删除的是整个通道：删掉一个卷积的第 *k* 个输出通道，就要删掉它后面 BatchNorm 的第 *k* 个通道，以及每个读取它的层的第 *k* 个输入通道。有了残差加法，就得一组层一起删：`a + b` 要求 `a` 和 `b` 的通道相同，所以从产生 `a` 的卷积里删掉第 *k* 个通道，就必须从产生 `b` 的卷积里也删掉，还要从读取这个和的所有层里删掉。`coupled_channel_groups` 从计算图里找出这些组：从输入走到输出，卷积或全连接层开启新的通道，逐元素的运算（加法、激活、池化、BatchNorm、depthwise 卷积）把它所有输入的通道并成一组。

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
# 所以默认的 `types` 都是真正做计算的层（`Conv2d`、`BatchNorm2d`、`Linear`、`PReLU`）。in-place 的 ReLU 不会冲突：它把张量的 `grad_fn` 换成一个新节点，新节点的输入是旧节点。被调用两次的模块也不算冲突：两个节点，一个模块。
#
# ## 为什么默认是二维的层，而不是 `_ConvNd` 和 `_BatchNorm`
#
# 本页针对的那篇 YOLOv5 剪枝博客，给每个 `_ConvNd` 和 `_BatchNorm` 都挂了钩子。它们是所有卷积、所有 BatchNorm 的私有基类（名字以下划线开头，`torch.nn` 不导出它们），包括一维和三维的层、`SyncBatchNorm`，以及转置卷积，而转置卷积的权重把**输出**通道放在第 1 维，不是第 0 维：

# %%
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

print("exported by torch.nn:", hasattr(nn, "_ConvNd"), hasattr(nn, "_BatchNorm"))
covered = [cls.__name__ for cls in (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d, nn.SyncBatchNorm)
           if issubclass(cls, (_ConvNd, _BatchNorm))]
print("also matched:", covered)
print("Conv2d(4, 8, 3).weight:         ", tuple(nn.Conv2d(4, 8, 3).weight.shape))
print("ConvTranspose2d(4, 8, 3).weight:", tuple(nn.ConvTranspose2d(4, 8, 3).weight.shape))
assert len(covered) == 4

# %% [markdown]
# 默认的类型，正是上面剪枝一节能够剪通道的层。转置卷积就剪不了，剪枝函数会抛出 `TypeError` 说明这一点，而不是剪错维度：

# %% tags=["raises-exception"] raises="TypeError"
from tutorials_pkg.grad_fn import keep_output_channels

keep_output_channels(nn.ConvTranspose2d(4, 8, 3), torch.tensor([0, 1]))

# %% [markdown]
# 如果只要节点到层的映射，任何层都可以：把需要的类以列表或元组的形式传入。一个一维卷积网络（音频、序列）：

# %%
audio = nn.Sequential(nn.Conv1d(2, 4, 5), nn.BatchNorm1d(4), nn.ReLU(), nn.Conv1d(4, 4, 5))
audio_nodes = grad_fn_modules(audio, torch.randn(1, 2, 32), types=[nn.Conv1d, nn.BatchNorm1d])
print([(node.name(), type(module).__name__) for node, module in audio_nodes.items()])
assert len(audio_nodes) == 3 and not grad_fn_modules(audio, torch.randn(1, 2, 32))

# %% [markdown]
# ## 追踪结果在释放之前一直占着计算图
#
# 每个节点都保存着 autograd 计算梯度时要用的东西：卷积保存它的输入，BatchNorm 保存它的输入和统计量，ReLU 保存它的输出。`grad_fn_modules` 返回的字典持有这些节点，并通过它们的 `next_functions` 持有整张计算图，所以只要你还留着这个字典，那次前向传播保存的每个激活值都留在内存里（在 GPU 上就是显存）。`SavedTensors` 借助 `torch.autograd.graph.saved_tensors_hooks`，记录一段代码里 autograd 保存了什么，以及其中还有多少没有释放：

# %%
from tutorials_pkg.grad_fn import SavedTensors

show_source(SavedTensors)

# %%
with SavedTensors() as saved:
    kept_nodes = grad_fn_modules(model, x)
print(f"activations the nodes hold: {saved.kept_bytes():,} bytes")
layer_names = sorted(names[module] for module in set(kept_nodes.values()))
del kept_nodes  # keep the names (plain strings), drop the nodes
print(f"after del:                  {saved.kept_bytes():,} bytes")
assert saved.kept_bytes() == 0 and len(layer_names) == 13

# %% [markdown]
# `module_graph` 和 `coupled_channel_groups` 返回的是名字，不是节点，所以它们的结果不占计算图；上面为它们留着的 `trace` 则一直占着自己的计算图，直到它也被释放。
#
# ## 实践中常见的错误
#
# ### 在 `torch.no_grad()` 下追踪
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
# ### 冻结的层得到 `None` 键
#
# 即使梯度是开着的，只要参数被冻结、输入又不需要梯度，同样会悄悄合并：冻结层的输出没有 `grad_fn`。只有保持可训练的最后一层拿到了真正的键。那篇 YOLOv5 博客遇到的正是这个问题：在把每个参数都设成 `requires_grad=True` 之前，它的 backbone 各层都落在 `None` 这个键下。

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

# %% [markdown]
# ### 在循环里重新赋值的钩子列表
#
# 那篇博客在循环里注册钩子，每访问一层就写一次 `hooks = [m.register_forward_hook(...)]`。每次赋值都换掉了整个列表，所以循环结束后列表里只剩**最后一个**句柄，"移除所有钩子"只移除了一个：

# %%
from tutorials_pkg.grad_fn import grad_fn_modules_keeping_only_the_last_hook

show_source(grad_fn_modules_keeping_only_the_last_hook)

# %% [markdown]
# 十三个钩子里有十二个留在各自的模块上。之后的每次前向传播，无论是训练还是评估，都会继续往字典里添加条目，而字典又留着每一次前向传播的计算图和激活值（见"追踪结果在释放之前一直占着计算图"）：

# %%
leaky = tiny_resnet().to(device)
leaky_nodes = grad_fn_modules_keeping_only_the_last_hook(leaky, x)
still_hooked = [name for name, m in leaky.named_modules() if m._forward_hooks]
print(len(leaky_nodes), "nodes;", len(still_hooked), "modules still hooked:", still_hooked[:4], "...")
leaky(x)  # one more forward pass, anywhere later
print(len(leaky_nodes), "nodes after one more forward pass")
assert len(still_hooked) == 12 and len(leaky_nodes) == 13 + 12

# %% [markdown]
# `trace_grad_fn`（源码见上文）用一个列表推导式得到所有句柄，并在 `finally` 里把它们全部移除：

# %%
clean = tiny_resnet().to(device)
grad_fn_modules(clean, x)
assert not any(m._forward_hooks for m in clean.modules())
print("hooks left:", sum(len(m._forward_hooks) for m in clean.modules()))

# %% [markdown]
# ### `torch.load('best.pt')['model']`
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
# `weights_only=False` 可以加载它，但会执行 pickle 里指定的任何代码：只对你自己生成或完全信任的文件这样做。长久之计是保存 `state_dict`，在代码里构建模型；[模型保存与读取](../save_load/)一页讲了怎么做，以及怎样安全地加载这类文件。加载出来的模型参数是冻结的，和那篇博客里一样，`grad_fn_modules` 照样能追踪：

# %%
trusted = torch.load(checkpoint, weights_only=False)["model"].to(device)
folder.cleanup()
print(len(grad_fn_modules(trusted, x)), "layers traced")
assert not any(p.requires_grad for p in trusted.parameters())
