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
# `tutorials_pkg.intermediate` 里的四种方法签名相同：`fn(model, x, names) -> dict[str, Tensor]`，本页把它们放在一起比较：能取到什么、在哪里出错、代价多大。之后是钩子的另外两种用法：取某层的*输入*（`by_pre_hooks`），以及损失对某层输出的梯度（`grads_by_hooks`）。
#
# 本页的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

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
# `torch.fx` 用占位值运行一遍 `forward`，把每次模块调用和每个运算记成图中的节点。torchvision 的 `get_graph_node_names` 列出节点；它在 train 和 eval 模式下各追踪一次，因为两张图可能不同（见下文）：

# %%
from torchvision.models.feature_extraction import get_graph_node_names

train_nodes, eval_nodes = get_graph_node_names(model)
print(len(eval_nodes), "nodes, the same in train and eval mode:", train_nodes == eval_nodes)
print(eval_nodes[:12], eval_nodes[-3:])

# %% [markdown]
# 节点包括模块（`layer1.0.conv1`）、`forward` 里的运算（`layer1.0.add` 是残差的 `+`，`flatten` 是 `torch.flatten`），调用两次的模块有两个节点（`layer1.0.relu`、`layer1.0.relu_1`）。`layer1` 这样的前缀表示其下最后一个节点。
#
# `create_feature_extractor` 把计算图变成返回所要节点的模块，并删掉用不到的部分。`build_fx_extractor` 另做两件事：之后还会被别的运算读取的输出先复制一份（否则原地运算可能改掉它，见下文）；名字写错时列出有效节点。FX 追踪不了模型时，它指出追踪停在哪里，并建议改用 `by_hooks`，下面附上 FX 自己的报错（见下文）。追踪要花时间，多次调用时构建一次即可。

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

# %% [markdown]
# ## 各自能取到什么
#
# 在四种方法都能取到的名字上，结果逐位相同；FX 的 `fc` 节点就是模型输出：

# %%
from tutorials_pkg.intermediate import EXTRACTORS

results = {method: fn(model, x, LAYERS) for method, fn in EXTRACTORS.items()}
for method, outputs in results.items():
    assert all(torch.equal(outputs[n], results["by_fx"][n]) for n in LAYERS), method
logits = model(x)
assert torch.equal(by_fx(model, x, ["fc"])["fc"], logits)
print({name: tuple(tensor.shape) for name, tensor in results["by_children"].items()})
print(list(results), "agree; by_fx's 'fc' equals model(x)")

# %% [markdown]
# ### 嵌套模块、运算、调用两次的模块
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
# 残差的 `+` 是 `forward` 里的运算，不是模块，没有东西可挂钩子。FX 有它的节点（上面的 `layer1.0.add`）；钩子抛出 `ValueError`，列出现有的模块：

# %% tags=["raises-exception"] raises="ValueError"
by_hooks(model, x, ["layer1.0.add"])

# %% [markdown]
# resnet 的残差块把同一个 `relu` 模块用了两次：`bn1` 之后和残差相加之后。钩子触发两次，`by_hooks` 保留最后一次，也就是残差块的输出；FX 为每次调用各建一个节点（`relu`、`relu_1`）。

# %%
hooked = by_hooks(model, x, ["layer1.0.relu", "layer1.0"])
assert torch.equal(hooked["layer1.0.relu"], hooked["layer1.0"])
print("hooked layer1.0.relu equals the output of layer1.0")

# %% [markdown]
# 注册了的模块不一定会被调用。GoogLeNet 的辅助分类器 `aux1` 和 `aux2` 只在训练模式下运行（它的 `forward` 里有 `if self.training:`），所以在 eval 模式下它们的钩子从不触发，`by_hooks` 抛出 `ValueError` 并说明原因：

# %% tags=["raises-exception"] raises="ValueError"
from torchvision.models import googlenet

inception_net = googlenet(weights=None, aux_logits=True, init_weights=False).eval()
by_hooks(inception_net, torch.randn(1, 3, 64, 64), ["aux1", "inception3a"])

# %% [markdown]
# ### 模型自己的 `forward`
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
# FX 追踪的是真正的 `forward`，池化也在内：

# %%
assert torch.equal(by_fx(mobilenet, small, ["classifier"])["classifier"], mobilenet(small))
print("by_fx's 'classifier' equals mobilenet(small)")

# %% [markdown]
# ### 原地运算
#
# resnet 的 ReLU 是 `nn.ReLU(inplace=True)`：`bn1` 之后的 ReLU 直接覆盖 `bn1` 的输出张量，之前保存的对这个张量的引用，看到的就变成了 ReLU 的结果。`by_hooks` 在钩子里复制，`by_fx` 在图里复制，`by_children` 在下一个子模块运行前复制；`IntermediateLayerGetter` 返回结束时的张量，所以和后面的层一起请求的 `bn1` 已经过了 ReLU：

# %%
bn1 = model.bn1(model.conv1(x))  # what bn1 produced, by hand
for method, fn in EXTRACTORS.items():
    got = fn(model, x, ["bn1", "layer1"])["bn1"]
    print(f"{method:16} equals bn1's output: {torch.equal(got, bn1)!s:5}  min {got.min():.3f}")
assert torch.equal(by_layer_getter(model, x, ["bn1", "layer1"])["bn1"], torch.relu(bn1))

# %% [markdown]
# ### FX：依赖数据的控制流，以及两张图
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
# 解决办法是 `leaf_modules`：FX 把门控记成一次调用，不看内部（内部的东西也就取不到）。如果 `if` 判断的是 `forward` 的参数，比如 `features_only: bool`，就用 `concrete_args={"features_only": False}` 固定它。`by_fx` 把两者原样传给 torchvision。如果 `if` 写在模型自己的 `forward` 里，这两招都没用：本项目自己的 `UNet` 就在那里检查输入的形状（`check_input`），`by_fx` 停在 `UNet.check_input`，并建议改用 `by_hooks`。

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
# `create_feature_extractor` 两种模式都追踪，随 `.train()` / `.eval()` 切换。只在一种模式中存在的节点（这里的 `add`）要用 `train_return_nodes` 和 `eval_return_nodes` 请求。`by_fx` 在两种模式下请求同样的名字，所以取不到这种节点：在 train 模式下，它原样抛出 torchvision 的 `ValueError`，其中给的正是这个建议；在 eval 模式下这个节点根本不存在，它抛出自己的 `ValueError`，列出现有的节点。
#
# ### 检测模型的主干网络
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

# %% [markdown]
# ## 输入与梯度
#
# ### 某层的输入：`by_pre_hooks`
#
# 前向钩子也能拿到模块的输入，是由位置参数组成的元组，原教程为 `avgpool` 记录的就是它。*前向预钩子*（forward pre-hook，`register_forward_pre_hook`）在模块运行之前被调用，拿到同样的参数。最常见的用法：`fc` 的输入就是倒数第二层的特征向量，已经过 resnet 的 `torch.flatten`，而这个运算任何钩子都看不到。`by_pre_hooks` 记录每个指定模块的第一个输入（复制一份），钩子在 `finally` 里移除。下一节要讲的 `grads_by_hooks` 和它共用辅助函数，所以放在一起展示。

# %%
from tutorials_pkg.intermediate import by_pre_hooks, grads_by_hooks

show_source(by_pre_hooks, grads_by_hooks)

# %%
with torch.no_grad():
    penultimate = by_pre_hooks(model, x, ["fc"])["fc"]
    pooled = by_hooks(model, x, ["avgpool"])["avgpool"]
assert torch.equal(penultimate, torch.flatten(pooled, 1))
print("fc's input", tuple(penultimate.shape), "is avgpool's output", tuple(pooled.shape), "flattened")

# %% [markdown]
# 预钩子默认只拿到位置参数；用 `with_kwargs=True` 注册时，它以 `hook(module, args, kwargs)` 的形式被调用。模块用关键字参数调用时这一点就很要紧，比如这个小注意力网络调用它的 `nn.MultiheadAttention`：

# %%
from tutorials_pkg.intermediate import KeywordAttentionNet

show_source(KeywordAttentionNet)

# %% [markdown]
# `attn` 上的普通预钩子看到的是空元组；`by_pre_hooks`（`with_kwargs=True`）取 `forward` 第一个参数 `query` 的值：

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
# ### 某层的梯度：`grads_by_hooks`
#
# `register_full_backward_hook`（完整反向钩子，full backward hook）让模块在反向传播时调用 `hook(module, grad_input, grad_output)`：`grad_output[0]` 是损失对模块输出的梯度（Grad-CAM 在 `layer4` 上要的就是它）。`grads_by_hooks` 用 `torch.autograd.grad` 对 `x` 的副本求 `loss_fn(model(x))` 的梯度：与 `loss.backward()` 不同，它不往任何参数的 `.grad` 里累加，权重冻结时梯度也照样传到每一层（源码见上文 `by_pre_hooks` 处）。
#
# 损失取 `logits[:, 0].sum()` 时，`fc` 处的梯度必然在类别 0 上为 1、其余为 0；`layer4` 处的梯度就是 Grad-CAM 按通道求平均的那个：

# %%
grads = grads_by_hooks(model, x, ["layer4", "fc"], lambda logits: logits[:, 0].sum())
print({name: tuple(g.shape) for name, g in grads.items()})
one_hot = torch.zeros(2, 1000)
one_hot[:, 0] = 1
assert torch.equal(grads["fc"], one_hot)
assert all(p.grad is None for p in model.parameters())
print("the gradient at fc is one-hot; no parameter's .grad was touched")

# %% [markdown]
# 完整反向钩子有一个限制：它包装了模块的输入和输出，而 autograd 不允许之后再原地修改它们。resnet 的 `bn1` 后面紧跟 `ReLU(inplace=True)`，所以请求 `bn1` 会得到 `RuntimeError`；`grads_by_hooks` 把它换成一条指明是哪个模块做了修改、该怎么办的报错：

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
from tutorials_pkg.intermediate import extraction_costs, format_cost_table
from tutorials_pkg.measure import cpu_peak_memory_bytes

show_source(cpu_peak_memory_bytes)

# %% [markdown]
# resnet18 和 resnet50 的 `layer2` 与 `layer4`，输入一张 224×224 的图（批大小 1，让页面快些；`benchmarks/features_extraction.py` 用批大小 8）。时间是构建本页的机器上的耗时，共享机器上有噪声；`x forward` 是相对普通前向传播的倍数。其中的 `assert` 用已知答案检验内存统计：两个 4 MiB 张量加上它们的和。

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
    rows = extraction_costs(net, one_image, requests=["layer2", "layer4"], repeats=3)
    print(f"{build.__name__} on {device}\n{format_cost_table(rows)}\n")
trace_s = median_seconds(lambda: build_fx_extractor(net, ["layer4"]), repeats=3)
conv = net.layer4[1].conv2  # 512 -> 512 channels, 3x3, on 7x7
peak = peak_memory_bytes(lambda: conv(torch.randn(1, 512, 7, 7, device=device)), device)
print(f"resnet50: tracing takes {trace_s * 1e3:.0f} ms; one layer4 3x3 convolution peaks at "
      f"{peak / 2**20:.1f} MiB, its weights are {conv.weight.numel() * 4 / 2**20:.1f} MiB")

# %% [markdown]
# 怎样读这些数字：
#
# - 时间：`by_children` 和 `by_layer_getter` 在所请求的层之后停下，所以取 `layer2` 比一次前向传播便宜；钩子总要跑完整个模型。`by_fx` 也在那里停下，但它的数字包含追踪（表格下面那一行）：每次调用都要重新追踪，花的时间可能比前向传播本身还多。用 `build_fx_extractor` 构建一次，反复使用。
# - 内存：不需要梯度时，一层的输出在下一层用过后就释放，峰值是某一时刻同时存在的几个最大张量，而不是所有激活值之和。CPU 上其中之一是 oneDNN 按自己的布局复制的卷积权重：layer4 的一个 3×3 卷积，这一项约等于权重大小（最后一行），比一张图的任何激活值都大。只有峰值出现在所请求层之后时，提前停下才省内存；需要梯度时，到该层为止的激活值都要保留。
#
# | 方法 | 能取到 | 运行整个模型 | 代价 |
# |---|---|---|---|
# | `by_children` | 顶层子模块；在 `Linear` 前展平 | 否 | 到最后一个名字为止的前向传播 |
# | `by_layer_getter` | 顶层子模块；不含 `forward` 的其他操作 | 否 | 同上；不复制，原地运算会改掉结果 |
# | `by_fx` | 所有模块和运算，含嵌套；真正的 `forward` | 否，只跑所需部分 | 每次调用都追踪，再跑截断的前向传播 |
# | `by_hooks` | 所有模块，含嵌套；不含运算；复用的模块取最后一次 | 是 | 完整前向传播，每个名字复制一次 |
#
# ## 在手写数字上训练的小 CNN 的特征图
#
# 中间层输出也值得看一看。一个很小的 CNN，用 scikit-learn 自带的 8×8 手写数字训练几秒（真实数据：1,797 张图，四分之一留作测试）：

# %%
from tutorials_pkg.digits import DigitsCNN, accuracy

show_source(DigitsCNN)

# %%
from tutorials_pkg.digits import load_digits_tensors, split_train_test, train_epoch

x_train, y_train, x_test, y_test = split_train_test(*load_digits_tensors(), test_fraction=0.25)
torch.manual_seed(0)
cnn = DigitsCNN()
optimizer = torch.optim.Adam(cnn.parameters(), lr=1e-2)
order = torch.Generator().manual_seed(0)  # the order of the batches
losses = [train_epoch(cnn, optimizer, x_train, y_train, order) for _ in range(15)]
cnn.eval()
test_accuracy = accuracy(cnn, x_test, y_test)
print(f"{len(x_train)} training, {len(x_test)} test images; loss {losses[0]:.3f} -> "
      f"{losses[-1]:.3f}; test accuracy {test_accuracy:.1%}")
assert test_accuracy > 0.9

# %% [markdown]
# 一张测试图在 `relu1`（8 个通道，8×8）和 `relu2`（16 个通道，4×4）的输出，用钩子取得，由 `plot_feature_maps` 画出：第一层对笔画和边缘有响应，第二层在更低分辨率上组合它们（对这个数字，有些通道一直是零）。`svg_figure` 把图以 SVG 放进页面，任意缩放都清晰，并用图下的说明文字为它命名。

# %%
from tutorials_pkg.intermediate import plot_feature_maps, svg_figure

maps = by_hooks(cnn, x_test[:1], ["relu1", "relu2"])
print("label", y_test[0].item(), "predicted", cnn(x_test[:1]).argmax().item())
figure = plot_feature_maps(x_test[0], {name: m[0] for name, m in maps.items()})
svg_figure(figure, labelled_by="feature-maps-caption")

# %% [markdown]
# <p id="feature-maps-caption">图：一张测试数字 x（左上），以及训练好的 CNN 为它算出的 relu1 的 8 张特征图（每张 8×8）和 relu2 的 16 张特征图（每张 4×4）；每张图各用自己的色标，越亮表示激活值越大。</p>
#
# ## 实践中常见的错误
#
# ### 钩子没有 `clone()`
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
# 解决办法是在钩子里 `output.clone()`，就像 `by_hooks`：

# %%
assert torch.equal(by_hooks(fresh, x, ["bn1"])["bn1"], produced)
print("by_hooks returns bn1's output")

# %% [markdown]
# ### 钩子从不移除
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
# ### 用 `x.data` 保存特征
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
# ### `nn.Sequential(*model.children())` 不等于原模型
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
# ### `create_feature_extractor` 失败后模型停在 train 模式
#
# `create_feature_extractor` 先切到 train 模式追踪，再切到 eval 模式，最后恢复调用者的模式。名字写错时它半途停下：eval 模型回来时处于 train 模式，此后 BatchNorm 用当前批次的统计量归一化并更新滑动统计量，毫无提示。`by_fx` 在 `finally` 里恢复模式：

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
