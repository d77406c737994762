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
# `tutorials_pkg.intermediate` 里的四种方法签名相同：`fn(model, x, names) -> dict[str, Tensor]`，本章把它们放在一起比较：能取到什么、在哪里出错、代价多大。另外还有钩子的两种用法：取某层的*输入*（`by_pre_hooks`），以及损失对某层输出的梯度（`grads_by_hooks`）。它们都是工具，要能处理读者带来的各种模型；本页展示的是每个工具的核心，即工具自己调用的那个短函数，供你复制。本章分五页：
#
# - 本页：四种方法怎样实现，以及各工具接受什么；
# - [四种方法各自能取到什么](reach/)：嵌套模块与运算、模型自己的 `forward`（以及注册顺序与调用顺序不同的子模块）、原地运算、FX 遇到的控制流，以及检测模型的主干网络；
# - [中间层的输入、梯度与代价](inputs_and_gradients/)：`by_pre_hooks`、`grads_by_hooks`，以及四种方法实测的耗时和内存；
# - [手写数字 CNN 的特征图](feature_maps/)：训练一个小 CNN，把它的中间层输出画出来；
# - [中间层输出：常见错误](in_the_wild/)：钩子不复制输出、从不移除，训练模式下的 `by_hooks`，用 `x.data` 保存特征，`nn.Sequential(*model.children())`，以及 `create_feature_extractor` 失败后留下的训练模式。
#
# 本章的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# 示例模型：torchvision 的 `resnet18`，随机权重，评估模式（BatchNorm 使用滑动统计量），输入两张随机的 224×224 图像。层的名字是属性名组成的路径：`named_children()` 给出顶层，`named_modules()` 给出所有嵌套模块。resnet 自己的 `forward` 按顺序调用子模块，并在 `fc` 之前调用 `torch.flatten(x, 1)`。

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
# 依次调用顶层子模块，保留所要的输出。`chain_children` 像 resnet 的 `forward` 一样在 `nn.Linear` 子模块前展平（flatten），并在用到的最后一个子模块之后停下：

# %%
from tutorials_pkg.intermediate import chain_children
from tutorials_pkg.source import show_source

show_source(chain_children)

# %% [markdown]
# 只有当 `forward` 除了按注册顺序调用子模块之外什么也不做时，这条链才等于模型。工具 `by_children` 先用模型自己的 `forward` 跑一遍（跑到最后一个所要的名字为止）核对这一点，再调用 `chain_children`；核对不通过，或者链在中途断了，它就拒绝并说明原因，指出是哪个子模块（[下一页](reach/#模型自己的-forward)演示这两种情况）。代码上方标出的文件里，其余部分处理被包装或编译过的模型、关键字参数和不认识的名字（抛出 `ValueError`，列出能取到的名字，四个工具都是如此）。

# %%
from tutorials_pkg.intermediate import by_children

print({name: tuple(t.shape) for name, t in by_children(model, x, ["layer1", "fc"]).items()})

# %% [markdown]
# ## 2. torchvision 的 `IntermediateLayerGetter`：`by_layer_getter`
#
# torchvision 的分割模型用 `IntermediateLayerGetter` 构建主干网络（它在私有模块 `torchvision.models._utils` 里，导入路径可能会变）。它是一个 `nn.ModuleDict`，装着从第一个子模块直到所要的最后一个子模块之间的全部子模块（不只是所要的那几个），`forward` 把它们串起来：相当于不展平的 `chain_children`，返回的是运行结束时张量的样子。`by_layer_getter` 像 `by_children` 一样先核对。

# %%
from tutorials_pkg.intermediate import layer_getter_outputs

show_source(layer_getter_outputs)

# %% [markdown]
# `return_layers` 把每个子模块映射到其输出的键，所以它的值可以给输出改名。torchvision 的分割模型把 `layer4` 取作 `"out"`、把 `layer3` 取作 `"aux"`；返回的字典按子模块的顺序排列：

# %%
from torchvision.models._utils import IntermediateLayerGetter

backbone = IntermediateLayerGetter(model, return_layers={"layer4": "out", "layer3": "aux"})
with torch.no_grad():
    renamed = backbone(x)
print({key: tuple(t.shape) for key, t in renamed.items()})
assert list(renamed) == ["aux", "out"]

# %% [markdown]
# ## 3. 用 `torch.fx` 追踪计算图：`by_fx`
#
# `torch.fx` 用占位值运行一遍 `forward`，把每次模块调用和每个运算记成图中的节点。torchvision 的 `get_graph_node_names` 列出节点；它在训练模式和评估模式下各追踪一次，因为两张图可能不同（见下一页的[两张图](reach/#fx依赖数据的控制流以及两张图)）：

# %%
from torchvision.models.feature_extraction import get_graph_node_names

train_nodes, eval_nodes = get_graph_node_names(model)
print(len(eval_nodes), "nodes, the same in train and eval mode:", train_nodes == eval_nodes)
print(eval_nodes[:12], eval_nodes[-3:])

# %% [markdown]
# 节点包括模块（`layer1.0.conv1`）、`forward` 里的运算（`layer1.0.add` 是残差的 `+`，`flatten` 是 `torch.flatten`），调用两次的模块有两个节点（`layer1.0.relu`、`layer1.0.relu_1`）。`layer1` 这样的前缀表示其下最后一个节点。
#
# `create_feature_extractor` 把计算图变成返回所要节点的模块，并删掉用不到的部分。`fx_extractor` 另做两件事：之后还会被别的运算读取的输出先复制一份（否则原地运算可能改掉它，见[原地运算](reach/#原地运算)）；追踪失败时把模型恢复到调用前的模式（见[常见错误](in_the_wild/#create_feature_extractor-失败后模型停在训练模式)）：

# %%
from tutorials_pkg.intermediate import fx_extractor

show_source(fx_extractor)

# %% [markdown]
# 工具 `build_fx_extractor` 和 `by_fx` 调用它。文件里其余部分在名字写错时列出有效节点；FX 追踪不了模型时，指出追踪停在哪里并建议改用 `by_hooks`，报错信息的末尾是 FX 自己的报错（见[下一页](reach/#fx依赖数据的控制流以及两张图)）。追踪要花时间，多次调用时构建一次即可。

# %%
from tutorials_pkg.intermediate import build_fx_extractor, by_fx

features = by_fx(model, x, [*LAYERS, "layer1.0.add", "flatten"])
print({name: tuple(tensor.shape) for name, tensor in features.items()})
print(build_fx_extractor(model, ["layer2"]).code.strip().splitlines()[-1])  # ends at layer2

# %% [markdown]
# ## 4. 前向钩子：`by_hooks`
#
# `register_forward_hook` 让模块每次运行时把输出交给一个函数。模型原样运行，包括它自己的 `forward`，任何深度的模块都能挂钩子。两个细节保证正确：钩子保存输出的副本（`map_tensors` 复制其中的每个张量，检测模型主干网络返回的字典也不例外）；钩子在 `finally` 里移除，`forward` 抛出异常时也一样：

# %%
from tutorials_pkg.intermediate import hook_outputs

show_source(hook_outputs)

# %% [markdown]
# 工具 `by_hooks` 调用 `hook_outputs`。文件里其余部分在名字不认识时列出所有名字；`forward` 从未调用的模块，用 `ValueError` 说明原因（而不是因为缺键而出错）；用 `torch.compile` 或 DDP 包装的模型按里面的模块运行，编译过的部分以 eager 方式运行，原因如下。
#
# ### 钩子与 `torch.compile`
#
# 编译后的代码执行的是 `torch.compile` 编译那个 `forward` 时看到的钩子；只有当时已经挂着钩子的模块，它才会检查有没有新加的钩子。一个编译时没有钩子的模型，第一次调用之后再加的钩子不会触发；同一个类的另一个模型会复用这份编译好的代码，它在第一次调用之前加上的钩子也不会触发。两种情况都没有任何提示：

# %%
from torch import nn

torch._dynamo.reset()  # no compiled code yet, as in a new process
fired = []
plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
compiled_plain = torch.compile(plain, backend="eager")
compiled_plain(torch.randn(2, 3))  # compiled while it has no hook
plain[0].register_forward_hook(lambda *args: fired.append("plain: added after its first call"))
compiled_plain(torch.randn(2, 3))
second = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
second[0].register_forward_hook(lambda *args: fired.append("second: added before its first call"))
compiled_second = torch.compile(second, backend="eager")
compiled_second(torch.randn(2, 3))
print("hooks that fired:", fired)
assert fired == []

# %% [markdown]
# 几个钩子工具用 `torch.compiler.set_stance("force_eager")` 运行编译过的部分，执行它们的 Python 代码，钩子也就会触发；编译过的模型，`named_modules()` 给出的名字带 `_orig_mod.`，带不带这个前缀工具都接受：

# %%
from tutorials_pkg.intermediate import by_hooks

small_x = torch.randn(2, 3)
with torch.no_grad():
    for name in ("_orig_mod.0", "0"):
        assert torch.equal(by_hooks(compiled_second, small_x, [name])[name], second[0](small_x))
print([name for name, _ in compiled_second.named_modules()], "-> both spellings work")

# %% [markdown]
# ## 各工具接受什么
#
# - `model`：任何 `nn.Module`。用 `torch.compile`、`DataParallel` 或 DDP 包装过的，按里面的模块运行，其中编译过的部分以 eager 方式运行。TorchScript 模块不能挂钩子（torch 会直接报错）：请传入脚本化之前的模块。
# - `x`：模型的那一个参数，是什么都行：张量、检测模型的图像列表、字典、词元 id（token id）。元组表示多个位置参数；关键字参数用 `input_kwargs={"mask": mask}` 传入。
# - `names`：一个字符串或一个列表。钩子能取到每个模块（`named_modules()`），`by_fx` 能取到每个节点（`get_graph_node_names`），`by_children` 和 `by_layer_getter` 只能取顶层子模块（`named_children()`）；这两个把 `x` 交给第一个子模块，`forward` 不只是子模块串联的模型会被拒绝。
# - 返回什么：按请求顺序排列的 `{name: output}`。`by_hooks` 按模块返回的原样给出输出（张量、元组、字典），其中的张量都是副本；`by_pre_hooks` 给出模块的第一个输入；`grads_by_hooks` 给出损失对每个张量输出的梯度，不要求 `x` 是浮点数。
# - 拒绝什么、怎样拒绝：不认识的名字（`ValueError`，列出所有名字）；`forward` 从未调用的模块（`ValueError`）；不是子模块串联的模型（`RuntimeError`，指出是哪个子模块）；FX 追踪不了的模型（`TraceError`，指出停在哪里）。
