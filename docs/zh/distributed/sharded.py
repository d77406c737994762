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
# # 分片检查点：DCP 与单文件互转
#
# 在[第一页](../)和[上一页](../sync_and_unused/)里，DDP 让每个 rank 都持有完整的模型，检查点由 rank 0 写成一个文件。这一页把模型分片：每个 rank 只写自己持有的那一片；然后把分片的模型存成一个文件，再把分片检查点转成单个文件，又转回来。

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
# `state_dict` 来自 `get_state_dict(model, optimizer)`（在 `torch.distributed.checkpoint.state_dict` 里）：它对普通模型、DDP 和 FSDP 用法相同，并且用普通模型的键名来命名每个张量，优化器的也一样。设备网格（device mesh）建在 rank 所用的设备类型上（nccl 下是 `cuda`，这里是 `cpu`）。
#
# 读取是保存的镜像，只有一点不同：`dcp.load` 不返回 `state_dict`，而是原地填充传给它的那个。所以每个 rank 先构造模型和优化器（分片方式可以相同，也可以不同：DCP 读取时会重新分片），向它们要 `state_dict`，让 `dcp.load` 填好，再用 `set_state_dict` 交还给它们。

# %%
import os
import tempfile

import torch

from tutorials_pkg.distributed import load_sharded, save_sharded, shard_model
from tutorials_pkg.launcher import run_on_ranks
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())  # every file this page writes goes here
show_source(shard_model, save_sharded, load_sharded)

# %% [markdown]
# `save_sharded_run` 在每个 rank 上构造分片的模型，训练一步，再调用 `save_sharded`：

# %%
from tutorials_pkg.distributed import save_sharded_run

saved_shards = run_on_ranks(save_sharded_run, "sharded")
full = saved_shards[0]["state_dict"]

print("whole model:", {name: tuple(t.shape) for name, t in full.items()})
for rank, result in enumerate(saved_shards):
    print(f"rank {rank} held:", result["local_shapes"])
for name in sorted(os.listdir("sharded")):
    print(f"{name:14} {os.path.getsize(os.path.join('sharded', name)):5} bytes")

# %% [markdown]
# 一个新的任务读取它（`load_sharded_run`），每个 rank 都读进一个用别的权重构造的模型：

# %%
from tutorials_pkg.distributed import load_sharded_run

loaded_shards = run_on_ranks(load_sharded_run, "sharded")
for rank, result in enumerate(loaded_shards):
    same = all(torch.equal(result["state_dict"][name], full[name]) for name in full)
    momentum = [round(v, 4) for v in result["optimizer"]["state"]["2.bias"]["momentum_buffer"].tolist()]
    print(f"rank {rank}: weights as saved: {same}; momentum of 2.bias: {momentum}")
    assert same

# %% [markdown]
# ## 分片模型的单文件检查点
#
# [第一页](../#torchrun-启动的脚本)的 `save_training_state` 对分片的模型同样适用。`get_state_dict` 加上 `full_state_dict=True` 和 `cpu_offload=True`，会把各个 rank 的分片收集成完整的张量，放在 rank 0 的 CPU 上，优化器的动量也在内；`load_training_state` 里的 `set_state_dict` 再把每个 rank 的那一片还给它。（`optimizer.state_dict()` 不行：分片模型的优化器状态里只有本 rank 的分片，rank 0 存下的只是一半动量。）`one_file_from_shards` 把一个分片模型训练一步，用 `save_training_state` 存起来，再把文件读进一个用别的权重构造的新分片模型，然后两个模型各再走一步：

# %%
from tutorials_pkg.distributed import one_file_from_shards, tiny_model

both = run_on_ranks(one_file_from_shards, "sharded_state.pt")
state = torch.load("sharded_state.pt", weights_only=True)
print("in the file:", {name: tuple(t.shape) for name, t in state["model"].items()})
print("momentum of 2.bias in the file:",
      [round(v, 4) for v in state["optimizer"]["state"]["2.bias"]["momentum_buffer"].tolist()])
for rank, result in enumerate(both):
    (saved, saved_optimizer), (loaded, loaded_optimizer) = result["saved"], result["loaded"]
    same = all(torch.equal(saved[k], loaded[k]) and torch.equal(
        saved_optimizer["state"][k]["momentum_buffer"], loaded_optimizer["state"][k]["momentum_buffer"])
        for k in saved)
    print(f"rank {rank}: weights and momentum as saved: {same}; "
          f"next step's loss, saved and loaded model: {[round(v, 4) for v in result['next_losses']]}")
    assert same and result["next_losses"][0] == result["next_losses"][1]

# %% [markdown]
# 文件里是完整的张量，恢复出来的模型走的一步和保存的那个模型完全相同。收集要求 rank 0 的内存放得下整个模型；放不下时，就用上面 DCP 的分片保存。无论哪种方式，键名都是普通模型的，和第一页 DDP 模型的文件一样：

# %%
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
