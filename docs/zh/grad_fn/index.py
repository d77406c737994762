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
# 前向传播运行时，autograd 会记录每个张量是怎样算出来的：每个结果都带着一个 `grad_fn`，即计算图中将来负责计算它的梯度的那个节点；每个节点的 `next_functions` 指向它的各个输入所对应的节点。记录下来的这张图，就是模型**实际运行**时的样子，包括 `print(model)` 看不到的残差连接。剪枝工具正是读这张图，找出必须一起剪的层。本页把节点映射回产生它们的模块；后面几页画出这张图，并找出必须一起剪的通道：
#
# - [画出计算图](drawing/)：把追踪到的网络画成图，图中是各个层和残差加法。
# - [必须一起剪的通道](pruning/)：残差加法、拼接和切分把哪些通道绑在一起，以及怎样把它们作为一组剪掉，也包括一个小型 YOLO 式检测网络。
# - [常见错误](in_the_wild/)：在 `no_grad` 下追踪、冻结的层、`Identity`、没有移除的钩子、`torch.load`。
#
# 本章的每一段输出，都是构建网站时实际运行代码得到的，运行环境就是下面打印的版本。

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
# 计算图只认识运算，不认识模块。在每个关心的层上挂一个钩子（hook）：前向钩子能看到这一层的输出，从而拿到它的 `grad_fn`；一个从该节点到该层的字典，把两者联系了起来。`record_grad_fn` 挂上这样的钩子把模型运行一次；它还为每一层记下它读取的张量所对应的节点（剪枝一页要用到），以及模型的输出，也就是遍历计算图的起点：

# %%
from tutorials_pkg.grad_fn import record_grad_fn
from tutorials_pkg.source import show_source

show_source(record_grad_fn)

# %% [markdown]
# 其中有两行防止的是悄无声息的错误结果：autograd 没有记录的输出没有节点（它的 `grad_fn` 是 `None`，所有这样的输出会挤在同一个键上）；原样返回输入的层会占用它前面那一层的节点（见[常见错误](in_the_wild/)）。
#
# `grad_fn_modules(model, x)` 返回这个字典，`trace_grad_fn` 返回完整的追踪结果；两者都调用 `record_grad_fn`，`tutorials_pkg/grad_fn/trace.py` 里其余的代码处理朴素写法会出错的地方：在 autograd 什么都不记录的地方（`no_grad`、`inference_mode`）拒绝运行；追踪期间让每个参数都需要梯度（冻结的层不产生计算图），结束后把每个标志恢复原样；在评估模式下运行并恢复每个模块的模式（BatchNorm 的滑动统计量不会变）；让模型运行在输入的副本上，所以原地修改输入的模型不会改动你的张量。它们接收输入的方式与模型相同：一个张量，或者作为唯一参数的张量列表或字典（检测模型的图像列表：`grad_fn_modules(model, images)` 调用的是 `model(images)`），或者一个由位置参数组成的元组。`types` 可以是一个模块类，也可以是由模块类组成的列表或元组。

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

from tutorials_pkg.grad_fn import grad_fn_modules

nodes = grad_fn_modules(model, x)
names = {module: name for name, module in model.named_modules()}
for node, module in nodes.items():
    print(f"{node.name():28} <- {names[module]} ({type(module).__name__})")
layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
assert len(nodes) == len(layers) == 13

# %% [markdown]
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
# 一个原样返回输入的模块，返回的是**同一个张量**，所以它的输出带着它输入的 `grad_fn`。`nn.Identity` 是这样，评估模式下的 `nn.Dropout` 也是。作为字典的键，这样的两层就成了一层：

# %%
conv_out = conv(torch.randn(1, 3, 8, 8))
print(nn.Identity()(conv_out).grad_fn is conv_out.grad_fn)
print(nn.Dropout().eval()(conv_out).grad_fn is conv_out.grad_fn)

# %% [markdown]
# 所以默认的 `types` 都是真正做计算的层：各种卷积（一维、二维、三维和转置卷积）、`Linear`、各种 BatchNorm、`GroupNorm`、`LayerNorm` 和 `PReLU`。in-place 的 ReLU 不会冲突：它把张量的 `grad_fn` 换成一个新节点，新节点的输入是旧节点。被调用两次的模块也不算冲突：两个节点，一个模块。
#
# ## 逐个列出的层，而不是 `_ConvNd` 和 `_BatchNorm`
#
# 本章针对的那篇 YOLOv5 剪枝博客，给每个 `_ConvNd` 和 `_BatchNorm` 都挂了钩子。它们是所有卷积、所有 BatchNorm 的私有基类（名字以下划线开头，`torch.nn` 不导出它们），包括一维和三维的层、`SyncBatchNorm`，以及转置卷积，而转置卷积的权重把**输出**通道放在第 1 维，不是第 0 维：

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
# 如果剪枝工具认为每个卷积的权重都是 (out, in, ...)，那么对转置卷积，它想剪输出通道，剪掉的却是输入通道。默认的 `types` 逐个列出类名，所以不会有哪种层在没有为它写好规则的情况下被映射进来；[剪枝一页](pruning/)的 `cut_conv` 从第 1 维取转置卷积的输出通道。保留 `ConvTranspose2d(4, 8, 3)` 的第 0、1 个输出通道：

# %%
from tutorials_pkg.grad_fn import cut_conv

cut = cut_conv(nn.ConvTranspose2d(4, 8, 3), keep_out=torch.tensor([0, 1]), keep_in=None)
print("weight:", tuple(cut["weight"].shape), " out_channels:", cut["out_channels"])
assert cut["weight"].shape == (4, 2, 3, 3)

# %% [markdown]
# 如果只要节点到层的映射，任何层都可以：把需要的类以列表或元组的形式传入。一个一维卷积网络（音频、序列），只映射其中的卷积：

# %%
audio = nn.Sequential(nn.Conv1d(2, 4, 5), nn.BatchNorm1d(4), nn.ReLU(), nn.Conv1d(4, 4, 5))
audio_nodes = grad_fn_modules(audio, torch.randn(1, 2, 32), types=[nn.Conv1d])
print([(node.name(), type(module).__name__) for node, module in audio_nodes.items()])
assert len(audio_nodes) == 2 and len(grad_fn_modules(audio, torch.randn(1, 2, 32))) == 3

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
# `module_graph`（[画出计算图](drawing/)）和 `coupled_channel_groups`（[必须一起剪的通道](pruning/)）返回的是名字，不是节点，所以它们的结果不占计算图；那两页为它们留着的 `trace` 则一直占着自己的计算图，直到它也被释放。
