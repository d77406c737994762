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
# # 四种方法各自能取到什么
#
# 这是“获取中间层输出的四种方法”一章的第二页。[第一页](../)讲了四种方法怎样实现：自己运行子模块（`by_children`）、`IntermediateLayerGetter`（`by_layer_getter`）、用 `torch.fx` 追踪（`by_fx`）和前向钩子（`by_hooks`）。本页把它们放在一起运行，看各自能取到什么、在哪里出错：嵌套模块与运算、模型自己的 `forward`、原地运算、FX 遇到的控制流，以及检测模型的主干网络。

# %% [markdown]
# 示例沿用第一页的设置：torchvision 的 `resnet18`，随机权重，评估模式，用同一个随机种子，输入两张随机的 224×224 图像；四种方法都从 `tutorials_pkg.intermediate` 导入。最后打印本页运行所用的版本。

# %%
import torch
from torchvision.models import resnet18
from torchvision.models.feature_extraction import get_graph_node_names

from tutorials_pkg.intermediate import EXTRACTORS, by_children, by_fx, by_hooks, by_layer_getter
from tutorials_pkg.runtime import describe_runtime
from tutorials_pkg.source import show_source

torch.manual_seed(0)
model = resnet18(weights=None).eval()
x = torch.randn(2, 3, 224, 224)
LAYERS = ["layer1", "layer2", "layer3", "layer4"]
print(describe_runtime())

# %% [markdown]
# 在四种方法都能取到的名字上，结果逐位相同；FX 的 `fc` 节点就是模型输出：

# %%
results = {method: fn(model, x, LAYERS) for method, fn in EXTRACTORS.items()}
for method, outputs in results.items():
    assert all(torch.equal(outputs[n], results["by_fx"][n]) for n in LAYERS), method
logits = model(x)
assert torch.equal(by_fx(model, x, ["fc"])["fc"], logits)
print({name: tuple(tensor.shape) for name, tensor in results["by_children"].items()})
print(list(results), "agree; by_fx's 'fc' equals model(x)")

# %% [markdown]
# ## 嵌套模块、运算、调用两次的模块
#
# 基于子模块的两种方法只看得到顶层，并明确说出来；FX 和钩子能取到 `layer1.0.conv2`，与手工计算的结果一致：

# %%
for fn in (by_children, by_layer_getter):
    try:
        fn(model, x, ["layer1.0.conv2"])
    except ValueError as error:
        print(error)
block = model.layer1[0]
stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
expected = block.conv2(block.relu(block.bn1(block.conv1(stem))))
for fn in (by_fx, by_hooks):
    assert torch.equal(fn(model, x, ["layer1.0.conv2"])["layer1.0.conv2"], expected)
print("by_fx and by_hooks: layer1.0.conv2 equals the hand-computed layer")

# %% [markdown]
# 残差的 `+` 是 `forward` 里的运算，不是模块，没有东西可挂钩子。FX 有它的节点（[第一页](../#3-用-torchfx-追踪计算图by_fx)上的 `layer1.0.add`）；钩子抛出 `ValueError`，列出现有的模块：

# %% tags=["raises-exception"] raises="ValueError"
by_hooks(model, x, ["layer1.0.add"])

# %% [markdown]
# resnet 的残差块把同一个 `relu` 模块用了两次：`bn1` 之后和残差相加之后。钩子触发两次，`by_hooks` 保留最后一次，也就是残差块的输出；FX 为每次调用各建一个节点（`relu`、`relu_1`）。

# %%
hooked = by_hooks(model, x, ["layer1.0.relu", "layer1.0"])
assert torch.equal(hooked["layer1.0.relu"], hooked["layer1.0"])
print("hooked layer1.0.relu equals the output of layer1.0")

# %% [markdown]
# 注册了的模块不一定会被调用。GoogLeNet 的辅助分类器 `aux1` 和 `aux2` 只在训练模式下运行（它的 `forward` 里有 `if self.training:`），所以在评估模式下它们的钩子从不触发，`by_hooks` 抛出 `ValueError` 并说明原因：

# %% tags=["raises-exception"] raises="ValueError"
from torchvision.models import googlenet

inception_net = googlenet(weights=None, aux_logits=True, init_weights=False).eval()
by_hooks(inception_net, torch.randn(1, 3, 64, 64), ["aux1", "inception3a"])

# %% [markdown]
# ## 模型自己的 `forward`
#
# `IntermediateLayerGetter` 只运行子模块。少了 resnet 的展平，`fc` 收到 4 维张量，抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
by_layer_getter(model, x, ["fc"])

# %% [markdown]
# `by_children` 在 `fc` 前展平，对 resnet 是对的。但它只懂这一条：`mobilenet_v2` 的 `forward` 在 `features` 和 `classifier` 之间还用函数做了平均池化，对这张 64×64 的输入，分类器收到的数是它所需的 4（2×2）倍，抛出 `RuntimeError`：

# %% tags=["raises-exception"] raises="RuntimeError"
from torchvision.models import mobilenet_v2

assert torch.equal(by_children(model, x, ["fc"])["fc"], logits)
mobilenet = mobilenet_v2(weights=None).eval()
small = torch.randn(2, 3, 64, 64)
by_children(mobilenet, small, ["classifier"])

# %% [markdown]
# 报错信息指出链在哪个子模块断了、它收到的是什么。FX 追踪的是真正的 `forward`，池化也在内：

# %%
assert torch.equal(by_fx(mobilenet, small, ["classifier"])["classifier"], mobilenet(small))
print("by_fx's 'classifier' equals mobilenet(small)")

# %% [markdown]
# 串联还要求子模块的注册顺序就是 `forward` 调用它们的顺序。`SwappedNet` 先注册 `head`，后注册 `body`；`IntermediateLayerGetter` 按注册顺序运行，把 `body(head(x))` 当作 `body` 的输出返回，不报任何错：

# %%
from torchvision.models._utils import IntermediateLayerGetter

from tutorials_pkg.intermediate import SwappedNet

torch.manual_seed(0)
swapped, rows = SwappedNet(), torch.randn(4, 8)
print([name for name, _ in swapped.named_children()])
with torch.no_grad():
    got = IntermediateLayerGetter(swapped, return_layers={"body": "body"})(rows)["body"]
    print("max difference from body(x):", f"{(got - swapped.body(rows)).abs().max():.3f}")
    assert not torch.allclose(got, swapped.body(rows))

# %% [markdown]
# 这正是 `IntermediateLayerGetter` 的限制：注册顺序必须就是调用顺序，而且同一个子模块不能用两次。`by_children` 和 `by_layer_getter` 用模型自己的 `forward` 跑一遍（跑到最后一个所要的名字为止）来核对，不符时抛出 `RuntimeError`，说明 `forward` 实际调用的是哪个子模块。同一遍核对还能发现 `ModuleList` 子模块（比如 `nn.TransformerEncoder` 的 `layers`，`forward` 遍历它，却从不调用它本身），以及 `forward` 在子模块之间做的其他计算：

# %% tags=["raises-exception"] raises="RuntimeError"
by_layer_getter(swapped, rows, ["body"])

# %% [markdown]
# ## 原地运算
#
# resnet 的 ReLU 是 `nn.ReLU(inplace=True)`：`bn1` 之后的 ReLU 直接覆盖 `bn1` 的输出张量，之前保存的对这个张量的引用，看到的就变成了 ReLU 的结果。`by_hooks` 在钩子里复制，`by_fx` 在图里复制，`by_children` 在下一个子模块运行前复制；`IntermediateLayerGetter` 返回结束时的张量，所以和后面的层一起请求的 `bn1` 已经过了 ReLU：

# %%
bn1 = model.bn1(model.conv1(x))  # what bn1 produced, by hand
getter = IntermediateLayerGetter(model, return_layers={"bn1": "bn1", "layer1": "layer1"})
results = {"IntermediateLayerGetter": getter(x)["bn1"]}
results.update({method: EXTRACTORS[method](model, x, ["bn1", "layer1"])["bn1"]
                for method in ("by_children", "by_fx", "by_hooks")})
for method, got in results.items():
    print(f"{method:23} equals bn1's output: {torch.equal(got, bn1)!s:5}  min {got.min():.3f}")
assert torch.equal(results["IntermediateLayerGetter"], torch.relu(bn1))

# %% [markdown]
# `by_layer_getter` 发现后面的子模块改动了这个输出（它的版本计数变了），于是抛出 `RuntimeError`，而不是把它返回：

# %% tags=["raises-exception"] raises="RuntimeError"
by_layer_getter(model, x, ["bn1", "layer1"])

# %% [markdown]
# ## FX：依赖数据的控制流，以及两张图
#
# 追踪时 `forward` 拿到的是占位值，不是数字，所以对输入算出的值做 `if` 判断无法确定分支。下面的小网络有这样一个门控，还只在训练时加噪声：

# %%
from tutorials_pkg.intermediate import NoisyGatedNet, SignGate

show_source(NoisyGatedNet)

# %% [markdown]
# 追踪停在门控的 `if` 上。`by_fx` 抛出 `TraceError`，指出追踪停在哪里（`SignGate.forward`）、有哪两条出路，最后附上 FX 自己的报错（"symbolically traced variables cannot be used as inputs to control flow"）：

# %% tags=["raises-exception"] raises="TraceError"
gated = NoisyGatedNet().eval()
digits_like = torch.randn(4, 1, 8, 8)
by_fx(gated, digits_like, ["fc"])

# %% [markdown]
# 解决办法是 `leaf_modules`：FX 把门控记成一次调用，不看内部（内部的东西也就取不到）。如果 `if` 判断的是 `forward` 的参数，比如 `features_only: bool`，就用 `concrete_args={"features_only": False}` 固定它。`by_fx` 把两者原样传给 torchvision。如果 `if` 写在模型自己的 `forward` 里（比如检查输入的取值），这两招都没用：`by_fx` 会指出追踪停在模型自己的代码里，并建议改用 `by_hooks`。

# %%
outputs = by_fx(gated, digits_like, ["gate", "fc"], leaf_modules=[SignGate])
assert torch.equal(outputs["fc"], gated(digits_like))
print({name: tuple(t.shape) for name, t in outputs.items()})

# %% [markdown]
# 而 `if self.training:` 在追踪时是普通的 Python 布尔值，FX 只走一个分支，两种模式得到不同的图。`get_graph_node_names` 两个都返回：

# %%
train_nodes, eval_nodes = get_graph_node_names(
    gated, tracer_kwargs={"leaf_modules": [SignGate]}, suppress_diff_warning=True)
print("train:", train_nodes)
print("eval: ", eval_nodes)
assert set(train_nodes) - set(eval_nodes) == {"randn_like", "mul", "add"}

# %% [markdown]
# `create_feature_extractor` 两种模式都追踪，随 `.train()` / `.eval()` 切换。只在一种模式中存在的节点（这里的 `add`）要用 `train_return_nodes` 和 `eval_return_nodes` 请求。`by_fx` 在两种模式下请求同样的名字，所以取不到这种节点：在训练模式下，它原样抛出 torchvision 的 `ValueError`，其中给的正是这个建议；在评估模式下这个节点根本不存在，它抛出自己的 `ValueError`，列出现有的节点。
#
# ## 检测模型的主干网络
#
# 复用检测模型的主干网络，是查看模型内部最常见的理由之一。torchvision 的检测模型接收图像的*列表*（尺寸可以不同），先缩放、归一化、拼成一批，再运行 `backbone.body`：一个 `IntermediateLayerGetter`，返回由特征图组成的 `OrderedDict`；之后是特征金字塔（`backbone`）。`by_hooks` 把两者原样记下（随机权重，`weights_backbone=None`，什么都不下载；`min_size=224` 让它跑得快）：

# %%
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

torch.manual_seed(0)
detector = fasterrcnn_mobilenet_v3_large_fpn(
    weights=None, weights_backbone=None, min_size=224, max_size=224).eval()
images = [torch.rand(3, 180, 240), torch.rand(3, 240, 200)]  # a list, as detectors take
with torch.no_grad():
    feature_maps = by_hooks(detector, images, ["backbone.body", "backbone"])
for name, maps_of_layer in feature_maps.items():
    print(f"{name:13}", type(maps_of_layer).__name__,
          {key: tuple(t.shape) for key, t in maps_of_layer.items()})

# %% [markdown]
# FX 追踪不了这个检测模型：它的 `forward` 遍历图像列表，而追踪得到的值不能遍历。`by_fx` 抛出 `TraceError` 说明这一点并建议用 `by_hooks`，下面附上 FX 的报错（"Proxy object cannot be iterated"）：

# %% tags=["raises-exception"] raises="TraceError"
by_fx(detector, images, ["backbone.body"])
