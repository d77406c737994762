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
# # DDP：SyncBatchNorm 与未使用的参数
#
# [上一页](../)讲了 DDP 下检查点怎样保存、怎样恢复。这一页讲 DDP 对模型本身的两点要求：要跨 rank 计算统计量的 BatchNorm 得先换成 `SyncBatchNorm`；forward 从不使用的参数则会让 DDP 一直等它们的梯度。

# %% [markdown]
# ## 跨 rank 的 BatchNorm：`SyncBatchNorm`
#
# 在 DDP 下，每个 rank 的 BatchNorm 只用它自己的批量计算批统计量：每块 GPU 4 张图，就是 4 张图的统计量。`nn.SyncBatchNorm.convert_sync_batchnorm(model)` 把每个 BatchNorm 层换成 `SyncBatchNorm`，参数和缓冲区不变，统计量则在所有 rank 的批量上计算。要在用 DDP 包装之前转换：

# %%
import torch

from tutorials_pkg.distributed import sync_batchnorm_step
from tutorials_pkg.source import show_source

show_source(sync_batchnorm_step)

# %% [markdown]
# DDP 需要一个进程组；在 notebook 里建一个只有一个进程的组就足以试一试（内存里的 `HashStore` 代替了地址和端口）：

# %%
import torch.distributed as dist
from torch import nn

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
synced = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)))
print(synced)

# %% [markdown]
# `SyncBatchNorm` 要求模型放在加速器上：模型在 CPU 上且含有它时，DDP 以 `ValueError` 拒绝。（项目的 GPU 测试在两块 GPU 上检查：每个 rank 的滑动均值都是所有 rank 的整个批量的均值；GPU 不到两块的机器上，这项测试跳过，并注明原因。）

# %% tags=["raises-exception"] raises="ValueError"
from torch.nn.parallel import DistributedDataParallel as DDP

DDP(synced)

# %% [markdown]
# ## forward 从不使用的参数：`find_unused_parameters`
#
# [summary 一章](../../summary/)里有一个模型，把整个 `resnet18` 存为 `self.base_model`，却只用了它的前三层。这样注册之后，它的 11,689,512 个参数进入每一个 `state_dict`（128 个键，而模型只需要 6 个），DDP 也会等着每个参数都得到梯度。下面是同一个模型的缩小版，基于 `tiny_resnet`：

# %%
from tutorials_pkg.demo_models import RegistersUnusedBaseModel
from tutorials_pkg.distributed import count_allreduced, train_step

show_source(RegistersUnusedBaseModel, count_allreduced)

# %% [markdown]
# `count_allreduced` 注册一个通信钩子（hook），记录每次 all-reduce 传送了多少个数值，然后照常做 DDP 在没有钩子时做的事。第一步能跑完；DDP 等着那些未使用的参数的梯度，而它们永远得不到梯度，所以包含它们的桶一直没有就绪，*什么都没有*被平均：

# %%
images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
labels = torch.tensor([0, 1, 2, 3])
unused = DDP(RegistersUnusedBaseModel())
counts = count_allreduced(unused)
unused_optimizer = torch.optim.SGD(unused.parameters(), lr=0.1)
train_step(unused, unused_optimizer, images, labels)
print("values all-reduced in step 1:", counts)

# %% [markdown]
# 下一步抛出 `RuntimeError`，按编号列出没有得到梯度的参数：

# %% tags=["raises-exception"] raises="RuntimeError"
train_step(unused, unused_optimizer, images, labels)

# %% [markdown]
# 有两种修正。第一种就是 summary 一章给出的：让基础模型只做一个局部变量，这样只有 forward 用到的层才会被注册。

# %%
from tutorials_pkg.demo_models import StemAndHead

show_source(StemAndHead)

# %% [markdown]
# 第二种保留模型，传入 `find_unused_parameters=True`。这个开关是有代价的：每一步，DDP 都要从输出出发遍历一遍 autograd 图，找出没有得到梯度的参数，而且仍然会对它们做 all-reduce（传的是零），所以每一步都要传送整个基础模型：

# %%
for name, model in (("base model a local", DDP(StemAndHead())),
                    ("find_unused_parameters", DDP(RegistersUnusedBaseModel(),
                                                   find_unused_parameters=True))):
    counts = count_allreduced(model)
    model_optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        train_step(model, model_optimizer, images, labels)
    print(f"{name:22}: {len(model.module.state_dict()):2} state_dict keys, "
          f"values all-reduced per step: {counts}")
dist.destroy_process_group()

# %% [markdown]
# 这里是 5,356 个数值而不是 322 个；换成教程里的 `resnet18`，就是它的 11,689,512 个参数，float32 下每一步 46.8 MB。forward 不用的东西就不要注册；这个开关留给 forward 确实会在某些步跳过部分参数的模型。
