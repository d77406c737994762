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
# # 获取中间层输出的四种方法
#
# 模型的 `forward` 只返回最后一层。很多时候我们要的是中间某层的结果：给另一个模型用的特征、检测模型的主干网络（backbone）、想看一看的特征图。常用的办法有四种：
#
# 1. 自己按顺序运行模型的顶层子模块；
# 2. 让 torchvision 的 `IntermediateLayerGetter` 做同样的事；
# 3. 用 `torch.fx` 把模型追踪（trace）成计算图，返回任意节点（torchvision 的 `create_feature_extractor`）；
# 4. 模型照常运行，用前向钩子（forward hook）记录输出。
#
# `tutorials_pkg.intermediate` 里的四种方法签名相同：`fn(model, x, names) -> dict[str, Tensor]`，本章把它们放在一起比较：能取到什么、在哪里出错、代价多大。另外还有钩子的两种用法：取某层的*输入*（`by_pre_hooks`），以及损失对某层输出的梯度（`grads_by_hooks`）。本章分五页：
#
# - 本页：四种方法怎样实现；
# - [四种方法各自能取到什么](reach/)：嵌套模块与运算、模型自己的 `forward`、原地运算、FX 遇到的控制流，以及检测模型的主干网络；
# - [中间层的输入、梯度与代价](inputs_and_gradients/)：`by_pre_hooks`、`grads_by_hooks`，以及四种方法实测的耗时和内存；
# - [手写数字 CNN 的特征图](feature_maps/)：训练一个小 CNN，把它的中间层输出画出来；
# - [中间层输出：常见错误](in_the_wild/)：钩子不复制输出、从不移除，用 `x.data` 保存特征，`nn.Sequential(*model.children())`，以及 `create_feature_extractor` 失败后留下的 train 模式。
#
# 本章的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# 示例模型：torchvision 的 `resnet18`，随机权重，eval 模式（BatchNorm 使用滑动统计量），输入两张随机的 224×224 图像。层的名字是属性名组成的路径：`named_children()` 给出顶层，`named_modules()` 给出所有嵌套模块。resnet 自己的 `forward` 按顺序调用子模块，并在 `fc` 之前调用 `torch.flatten(x, 1)`。

# %%
import torch
from torchvision.models import resnet18

torch.manual_seed(0)
model = resnet18(weights=None).eval()
x = torch.randn(2, 3, 224, 224)
LAYERS = ["layer1", "layer2", "layer3", "layer4"]
print([name for name, _ in model.named_children()])
print(len(list(model.named_modules())), "modules, e.g.", [n for n, _ in model.named_modules()][5:8])

# %% [markdown]
# ## 1. 自己运行子模块：`by_children`
#
# 依次调用顶层子模块，保留所要的输出。它像 resnet 的 `forward` 一样在 `nn.Linear` 子模块前展平（flatten），并在用到的最后一个子模块之后停下。名字不认识时抛出 `ValueError`，列出能取到的名字，四种方法都是如此。

# %%
from tutorials_pkg.intermediate import by_children
from tutorials_pkg.source import show_source

show_source(by_children)

# %% [markdown]
# ## 2. torchvision 的 `IntermediateLayerGetter`：`by_layer_getter`
#
# torchvision 的分割模型用 `IntermediateLayerGetter` 构建主干网络（它在私有模块 `torchvision.models._utils` 里，导入路径可能会变）。它是装着所需子模块的 `nn.ModuleDict`，`forward` 把它们串起来：相当于不展平的 `by_children`，返回的是运行结束时张量的样子。

# %%
from tutorials_pkg.intermediate import by_layer_getter

show_source(by_layer_getter)

# %% [markdown]
# ## 3. 用 `torch.fx` 追踪计算图：`by_fx`
#
# `torch.fx` 用占位值运行一遍 `forward`，把每次模块调用和每个运算记成图中的节点。torchvision 的 `get_graph_node_names` 列出节点；它在 train 和 eval 模式下各追踪一次，因为两张图可能不同（见下一页的[两张图](reach/#fx依赖数据的控制流以及两张图)）：

# %%
from torchvision.models.feature_extraction import get_graph_node_names

train_nodes, eval_nodes = get_graph_node_names(model)
print(len(eval_nodes), "nodes, the same in train and eval mode:", train_nodes == eval_nodes)
print(eval_nodes[:12], eval_nodes[-3:])

# %% [markdown]
# 节点包括模块（`layer1.0.conv1`）、`forward` 里的运算（`layer1.0.add` 是残差的 `+`，`flatten` 是 `torch.flatten`），调用两次的模块有两个节点（`layer1.0.relu`、`layer1.0.relu_1`）。`layer1` 这样的前缀表示其下最后一个节点。
#
# `create_feature_extractor` 把计算图变成返回所要节点的模块，并删掉用不到的部分。`build_fx_extractor` 另做两件事：之后还会被别的运算读取的输出先复制一份（否则原地运算可能改掉它，见[原地运算](reach/#原地运算)）；名字写错时列出有效节点。FX 追踪不了模型时，它指出追踪停在哪里，并建议改用 `by_hooks`，下面附上 FX 自己的报错（见[下一页](reach/#fx依赖数据的控制流以及两张图)）。追踪要花时间，多次调用时构建一次即可。

# %%
from tutorials_pkg.intermediate import build_fx_extractor, by_fx

show_source(by_fx)

# %%
features = by_fx(model, x, [*LAYERS, "layer1.0.add", "flatten"])
print({name: tuple(tensor.shape) for name, tensor in features.items()})
print(build_fx_extractor(model, ["layer2"]).code.strip().splitlines()[-1])  # ends at layer2

# %% [markdown]
# ## 4. 前向钩子：`by_hooks`
#
# `register_forward_hook` 让模块每次运行时把输出交给一个函数。模型原样运行，包括它自己的 `forward`，任何深度的模块都能挂钩子。两个细节保证正确：钩子保存输出的副本（`_copy` 复制其中的每个张量，检测模型主干网络返回的字典也不例外）；钩子在 `finally` 里移除，`forward` 抛出异常时也一样。`forward` 从未调用的模块什么也记录不到，`by_hooks` 会用 `ValueError` 说明原因，而不是因为缺键而出错。用 `torch.compile` 包装的模型按原模块（`_orig_mod`）运行，因为编译后的代码里，模块上的钩子永远不会触发；层的名字沿用原模型的，不带 `_orig_mod.` 前缀。

# %%
from tutorials_pkg.intermediate import by_hooks

show_source(by_hooks)
