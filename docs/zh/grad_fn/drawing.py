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
# # grad_fn：画出计算图
#
# 这是[用 grad_fn 追踪网络结构](../)的第二页：把[第一页](../#从节点回到模块)映射到各层的追踪结果画成图。网络还是那个 `tiny_resnet`（一个 stem 加上两个 torchvision 的 `BasicBlock`，源码见第一页），输入也相同：

# %%
import torch

from tutorials_pkg.demo_models import tiny_resnet
from tutorials_pkg.runtime import default_device
from tutorials_pkg.source import show_source

torch.manual_seed(0)
device = default_device()
model = tiny_resnet().to(device)
x = torch.randn(2, 3, 32, 32, device=device)

# %% [markdown]
# ## 从追踪结果到图
#
# `layer_edges` 接收一次追踪的结果，从输入到输出遍历它的计算图（`nodes_in_order` 让每个节点排在它的所有输入之后）。属于某一层的节点画成方框；合并两条分支的节点（加、乘、拼接）保留为小圆圈，因为残差连接就是在那里汇合的；其余节点（ReLU、池化、变形）直接穿过，把它的值来自哪些层传下去。

# %%
from tutorials_pkg.grad_fn import layer_edges, module_graph, trace_grad_fn

show_source(layer_edges)

# %% [markdown]
# ## `tiny_resnet` 的计算图
#
# `module_graph(trace)` 把这两者放进一个 `ModuleGraph`，它的 `mermaid()` 返回 Mermaid 源码，本站（以及 Jupyter）会把它渲染成图：

# %%
trace = trace_grad_fn(model, x)  # one forward pass
graph = module_graph(trace)
graph.mermaid("LR")  # left to right

# %% [markdown]
# ## 残差加法
#
# 两个 `+` 就是 `print(model)` 从来不显示的残差加法：第一个把 stem 的输出加到第一个 block 的输出上；第二个把带步长的捷径加到第二个 block 的输出上。图中没有任何东西是手写的。

# %%
residual_edges = {("1", "+1"), ("3.bn2", "+1"), ("4.downsample.1", "+2"), ("4.bn2", "+2")}
assert residual_edges <= set(graph.edges)
