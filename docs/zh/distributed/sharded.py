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
# # 分片检查点与单文件互转
#
# 在[第一页](../)和[上一页](../sync_and_unused/)里，DDP 让每个 rank 都持有完整的模型，检查点由 rank 0 写成一个文件。这一页把模型分片：每个 rank 只写自己持有的那一片；然后把分片检查点转成单个文件，再转回来。

# %% [markdown]
# ## 用 `torch.distributed.checkpoint` 保存分片检查点
#
# 一块设备装不下的模型要*分片*：用 FSDP2 的 `fully_shard`，每个参数沿第一维切开，每个 rank 只保留自己那一片。没有哪个 rank 持有整个模型，所以也没有哪个 rank 能把它写进一个文件（除非先把它收集起来，而那可能放不下）。分布式检查点包（DCP，`torch.distributed.checkpoint`）改为写一个目录：每个 rank 写自己持有的分片，rank 0 再加一个 `.metadata` 文件，记录哪个张量的哪一部分在哪里。
#
# ```mermaid
# flowchart LR
#     W["0.weight, 8×4"] -- "第 0–3 行" --> R0["rank 0"] --> F0["__0_0.distcp"]
#     W -- "第 4–7 行" --> R1["rank 1"] --> F1["__1_0.distcp"]
#     R0 --> M[".metadata"]
# ```
#
# state dict 来自 `get_model_state_dict` 和 `get_optimizer_state_dict`（在 `torch.distributed.checkpoint.state_dict` 里）：它们对普通模型、DDP 和 FSDP 用法相同，并且用普通模型的键名来命名每个张量。设备网格（device mesh）建在 rank 所用的设备类型上（nccl 下是 `cuda`，这里是 `cpu`）。
#
# 读取是保存的镜像，只有一点不同：`dcp.load` 不返回 state dict，而是原地填充传给它的那个。所以每个 rank 先构造模型和优化器（分片方式可以相同，也可以不同：DCP 读取时会重新分片），向它们要一个 state dict，让 `dcp.load` 填好，再用 `set_model_state_dict` / `set_optimizer_state_dict` 交还给它们。

# %%
import os
import tempfile

import torch

from tutorials_pkg.distributed import load_sharded, save_sharded
from tutorials_pkg.launcher import run_on_ranks
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())  # every file this page writes goes here
show_source(save_sharded, load_sharded)

# %%
saved_shards = run_on_ranks(save_sharded, "sharded")
full = saved_shards[0]["state_dict"]

print("whole model:", {name: tuple(t.shape) for name, t in full.items()})
for rank, result in enumerate(saved_shards):
    print(f"rank {rank} held:", result["local_shapes"])
for name in sorted(os.listdir("sharded")):
    print(f"{name:14} {os.path.getsize(os.path.join('sharded', name)):5} bytes")

# %% [markdown]
# 一个新的任务读取它，每个 rank 都读进一个用别的权重构造的模型：

# %%
loaded_shards = run_on_ranks(load_sharded, "sharded")
for rank, result in enumerate(loaded_shards):
    same = all(torch.equal(result["state_dict"][name], full[name]) for name in full)
    momentum = [round(v, 4) for v in result["optimizer"]["state"]["2.bias"]["momentum_buffer"].tolist()]
    print(f"rank {rank}: weights as saved: {same}; momentum of 2.bias: {momentum}")
    assert same

# %% [markdown]
# 无论用什么包装器，键名都是普通模型的：rank 0 从 DDP 模型写出的文件（这里用[第一页](../)的 `train_ddp` 训练一个 epoch 得到），和这个 FSDP 模型的检查点，用的都是 `tiny_model()` 自己的名字，最后一行检查了这一点：

# %%
from tutorials_pkg.distributed import tiny_model, train_ddp

os.makedirs("run")
run_on_ranks(train_ddp, "run", 1)  # DDP training, one epoch: rank 0 writes run/epoch1.pt
state = torch.load("run/epoch1.pt", weights_only=True)
assert list(state["model"]) == list(full) == list(tiny_model().state_dict())  # the plain model's keys

# %% [markdown]
# ## 分片检查点转成单个文件，再转回来
#
# 要把模型交给没有集群的人，可以用 `dcp_to_torch_save`（在 `torch.distributed.checkpoint.format_utils` 里）把目录转成一个 `torch.save` 文件；它会把所有内容读进一个进程，所以只在一个 rank 上或离线运行它。这个模块也能在命令行里转换：`python -m torch.distributed.checkpoint.format_utils dcp_to_torch <folder> <file>`。

# %%
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp

dcp_to_torch_save("sharded", "one_file.pt")
checkpoint = torch.load("one_file.pt", weights_only=True)
print(list(checkpoint), list(checkpoint["model"]))

model = tiny_model(seed=3)
print(model.load_state_dict(checkpoint["model"]))
assert all(torch.equal(model.state_dict()[name], full[name]) for name in full)

# %% [markdown]
# `torch_save_to_dcp` 则反过来转换，例如要从一个单文件检查点开始一次分片训练：

# %%
torch_save_to_dcp("one_file.pt", "sharded_again")
print(sorted(os.listdir("sharded_again")))

# %% [markdown]
# 不做任何转换，`dcp.load` 也能在一个进程里、不用进程组，把分片检查点直接读进一个普通模型：

# %%
from tutorials_pkg.distributed import load_sharded_into_plain_model

show_source(load_sharded_into_plain_model)

# %%
for folder in ("sharded", "sharded_again"):
    model = load_sharded_into_plain_model(folder, tiny_model(seed=4))
    same = all(torch.equal(model.state_dict()[name], full[name]) for name in full)
    print(f"{folder}: weights as saved: {same}")
    assert same
