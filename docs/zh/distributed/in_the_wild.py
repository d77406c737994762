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
# # 分布式保存：常见错误
#
# 本章最后一页：实践中会出什么错。每一节先让错误真的发生，再给出修正；[上一页](../launcher/)的启动器让每次出错的运行都以一个清楚的错误结束。
#
# ## rank 0 还没写完就去读
#
# 没有 barrier，其他 rank 不会等 rank 0，而是立刻去读。这里 rank 0 在写之前先等 30 秒（大的检查点写起来可能就要这么久），这个函数代表的是「在 rank 0 上保存，然后在每个 rank 上读取」的代码：

# %%
import os
import tempfile

import torch

from tutorials_pkg.distributed import load_without_barrier
from tutorials_pkg.launcher import run_on_ranks
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())  # every file this page writes goes here
show_source(load_without_barrier)

# %% [markdown]
# rank 1 找不到文件，抛出 `FileNotFoundError`；启动器停掉 rank 0（不会等完它那 30 秒），并抛出 `RankFailedError`，指明是哪个 rank、出了什么错：

# %% tags=["raises-exception"] raises="RankFailedError"
run_on_ranks(load_without_barrier, "no_barrier.pt")

# %% [markdown]
# 如果同一路径上已有上一个 epoch 的检查点，同样的竞争就不会报错：rank 1 读到的是旧权重，或者一个写了一半的文件。反过来的错误是每个 rank 同时写同一个路径，得到的文件是最后写完的那一份，或者几份写入混在一起的损坏文件。修正方法就是[第一页](../#torchrun-启动的脚本)的 `save_training_state`：只有 rank 0 写，`dist.barrier()` 让每个 rank 都等到文件写完，所以[恢复训练](../#恢复训练每个-rank-都读取)时两个 rank 读到的状态相同。

# %% [markdown]
# ## 读取时不给 `map_location`
#
# 检查点为每个张量记下了它保存时所在的设备，不给 `map_location` 时，`torch.load` 会在那个设备上重新创建每个张量。`storage_locations` 读出这些记录：

# %%
from tutorials_pkg.distributed import storage_locations

show_source(storage_locations)

# %% [markdown]
# 拿[第一页](../#torchrun-启动的脚本)的检查点来看：这里 `main` 在 notebook 里一个只有一个进程的进程组中训练一个 epoch（内存里的 `HashStore` 代替了地址和端口），rank 0 写出 `run/epoch1.pt`：

# %%
import torch.distributed as dist

from tutorials_pkg.distributed import main

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
main(["run", "--epochs", "1"], device=torch.device("cpu"))  # in this group; main leaves it
print(storage_locations("run/epoch1.pt"))
unmapped = torch.load("run/epoch1.pt", weights_only=True)
assert {str(t.device) for t in unmapped["model"].values()} <= set(storage_locations("run/epoch1.pt"))

# %% [markdown]
# 即使由 GPU 任务保存，这个文件记下的也是 `cpu`：`save_training_state` 把一切都收集到 rank 0 的 CPU 上（`cpu_offload=True`）。在 GPU 任务里用 `torch.save(model.state_dict(), path)` 保存的文件，rank 0 模型的每个张量记下的都是 `cuda:0`。在有 8 块 GPU 的机器上不给 `map_location` 读取它，每个 rank 都会在 GPU 0 上创建这些张量：一块 GPU 上八份副本，可能因此显存不足，而另外七块 GPU 上什么都没有。在没有 GPU 的机器上，同样的读取会抛出 `RuntimeError`（「Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False」，由 `torch/serialization.py` 抛出）。应当像 `load_training_state` 那样读到 CPU 上（再由 `set_state_dict` 把每个张量放到对应参数所在的设备上），或者给每个 rank 指定它自己的设备；传一个字典只会改写其中列出的位置，例如 `{"cuda:0": f"cuda:{local_rank}"}`。

# %% [markdown]
# ## 一个 rank 出错，其他 rank 一直等它
#
# 一个 rank 抛出异常后，其他 rank 会在下一次集合通信里等一个永远不会来的同伴：

# %%
from tutorials_pkg.distributed import fail_on_rank

show_source(fail_on_rank)

# %% [markdown]
# `run_on_ranks` 发现有 rank 出错，torch 停掉其他 rank，`RankFailedError` 列出每个出错的 rank 及其异常，最先出错的排在最前。rank 0 要么发现同伴不见了（稍后抛出自己的 `RuntimeError`，列在第二行），要么在等待中被停掉；无论哪种，排在最前的都是 rank 1。错误里带着每个 rank 的 traceback，在会打印完整 traceback 的地方（比如终端）会随错误一起打印；这个单元格打印 rank 1 的 traceback 经过的函数：

# %%
import multiprocessing

from tutorials_pkg.launcher import RankFailedError

try:
    run_on_ranks(fail_on_rank)
except RankFailedError as error:
    print(str(error).splitlines()[0])  # the first to fail (a line for rank 0 may follow)
    frames = [line.rpartition(" in ")[2] for line in error.traceback.splitlines()
              if line.startswith("  File ")]
    print("its traceback:", " -> ".join(frames))
print("processes left:", multiprocessing.active_children())

# %% [markdown]
# ## 只有 rank 0 走到的 barrier
#
# 集合通信必须由每个 rank 按同样的顺序调用。把 `barrier` 缩进到 `if rank == 0:` 里面就破坏了这一点：rank 0 在 barrier 里等，其他 rank 则继续走到下一次集合通信（这里是对 loss 的 all-reduce）。

# %%
from tutorials_pkg.distributed import save_with_barrier_inside_if

show_source(save_with_barrier_inside_if)

# %% [markdown]
# 接下来会怎样，取决于后端：
#
# - **gloo**（这里的 CPU rank）：barrier 是一个独立的操作。rank 0 在 barrier 里等，rank 1 在它的 all-reduce 里等，两者对不上，都一直等到进程组超时。
# - **NCCL**（GPU）：barrier 就是对一个数的 all-reduce。rank 1 的 all-reduce 和它配成了对，于是 rank 1 拿着一个错误的和继续运行，不报任何错；rank 0 接着在自己的 all-reduce 里等一个永远不会来的同伴，直到超时后 NCCL 的 watchdog 结束这个进程。项目的 GPU 测试在两块 GPU 上展示了这两点（`test_a_barrier_only_rank_0_reaches`，标记为 `gpu`）。
#
# 超时时长就是进程组的超时，默认值是：

# %%
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

print("gloo:", default_pg_timeout, " nccl:", default_pg_nccl_timeout)

# %% [markdown]
# 一个集群可能白白空转半小时。`run_on_ranks` 把 `collective_timeout_s` 传给 `init_process_group(timeout=...)`；设成 2 秒，gloo 的各个 rank 很快就放弃，运行以 `RankFailedError` 结束，错误信息说明有一个操作超时了（哪个 rank 先超时，每次运行可能不同）：

# %%
try:
    run_on_ranks(save_with_barrier_inside_if, "inside_if.pt", collective_timeout_s=2)
except RankFailedError as error:
    print("a collective timed out:", "Timed out waiting 2000ms" in str(error))

# %% [markdown]
# 修正方法是把 barrier 放到 `if` 外面，让每个 rank 都走到它，就像[第一页](../#torchrun-启动的脚本)的 `save_training_state` 那样。集合通信之外的等待（一个 rank 从一直为空的队列里读、一把永远不释放的锁）不受这个超时保护；`run_on_ranks` 在 `timeout_s` 之后停止整个运行，并抛出 `TimeoutError`，指明仍在运行的 rank。
