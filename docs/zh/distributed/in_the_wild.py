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
# 本章的最后一页：实践中常见的错误。每一节先让错误真的发生，再给出修正；出错的运行都由[上一页](../launcher/)的启动器以明确的错误结束。
#
# ## rank 0 还没写完就去读
#
# 没有 barrier，其他 rank 不会等 rank 0，而是立刻去读。这里 rank 0 写文件前要花 30 秒（大检查点可能要写这么久），这个函数代表“在 rank 0 上保存、然后在每个 rank 上读取”的代码：

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
# rank 1 找不到文件，抛出 `FileNotFoundError`；启动器停掉 rank 0（不会等满那 30 秒），并抛出 `RankFailedError`，指明是哪个 rank、出了什么错：

# %% tags=["raises-exception"] raises="RankFailedError"
run_on_ranks(load_without_barrier, "no_barrier.pt")

# %% [markdown]
# 如果同一路径上已有上一个 epoch 的检查点，同样的竞争就不会报错：rank 1 读到的是旧权重，或者一个写了一半的文件。反过来的错误是每个 rank 同时写同一个路径，得到的文件是最后写完的那一份，或者几份写入混在一起的损坏文件。修正方法就是[第一页](../#torchrun-启动的脚本)的 `save_training_state`：只有 rank 0 写，`dist.barrier()` 让每个 rank 都等到文件写完，所以[恢复训练](../#恢复训练每个-rank-都读取各自读到自己的设备上)时两个 rank 读到的状态相同。

# %% [markdown]
# ## 读取时不给 `map_location`
#
# 检查点为每个张量记录了它保存时所在的设备，不给 `map_location` 时，`torch.load` 会把每个张量重新创建在那个设备上。`storage_locations` 读出这些记录：

# %%
from tutorials_pkg.distributed import storage_locations

show_source(storage_locations)

# %% [markdown]
# 拿[第一页](../#每个-rank-最后的权重都相同)的训练来看：用 `train_ddp` 在两个 CPU rank 上训练一个 epoch，再读 rank 0 写出的检查点：

# %%
from tutorials_pkg.distributed import train_ddp

os.makedirs("run")
run_on_ranks(train_ddp, "run", 1)  # one epoch: rank 0 writes run/epoch1.pt
print(storage_locations("run/epoch1.pt"))
unmapped = torch.load("run/epoch1.pt", weights_only=True)
assert {str(t.device) for t in unmapped["model"].values()} <= set(storage_locations("run/epoch1.pt"))

# %% [markdown]
# 我们的 rank 在 CPU 上训练，所以文件里记的是 `cpu`。从 GPU 任务保存的文件，对 rank 0 留在 GPU 上的那些张量记的是 `cuda:0`（这里是优化器的动量；权重已经收集到了 CPU 上）。在一台有 8 块 GPU 的机器上不给 `map_location` 读取，每个 rank 都会把这些张量创建在 GPU 0 上：一块 GPU 上放 8 份副本，可能显存不足，而另外七块一份都没有。在没有 GPU 的机器上，同样的读取会抛出 `RuntimeError`（“Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False”，由 `torch/serialization.py` 抛出）。像 `load_training_state` 那样给每个 rank 指定它自己的设备；用字典则只重映射字典里写到的位置，例如 `{"cuda:0": f"cuda:{local_rank}"}`。

# %% [markdown]
# ## 一个 rank 失败，其他 rank 一直等它
#
# 一个 rank 抛出异常后，其他 rank 会在下一次集合通信里等待一个永远不会来的伙伴：

# %%
from tutorials_pkg.distributed import fail_on_rank

show_source(fail_on_rank)

# %% [markdown]
# `run_on_ranks` 发现有 rank 失败，就停掉其余的 rank，并抛出 `RankFailedError`，按失败先后列出失败的 rank，以及被它停掉的 rank。rank 0 要么发现伙伴消失了（它自己的 `RuntimeError`，带着对方的地址和端口），要么在等待中被停掉；这个单元格只打印不受这一点影响的内容。（在会打印完整 traceback 的地方，比如终端里，每个 rank 自己的 traceback 也会作为这个错误的起因一并打印出来。）

# %%
import multiprocessing

from tutorials_pkg.launcher import RankFailedError

try:
    run_on_ranks(fail_on_rank)
except RankFailedError as error:
    first = next(iter(error.failures))
    print(f"first to fail: rank {first} with {error.failures[first]}")
    print("ranks that ended without a result:", sorted({*error.failures, *error.stopped}))
print("processes left:", multiprocessing.active_children())

# %% [markdown]
# ## 只有 rank 0 走到的 barrier
#
# 集合通信必须由每个 rank 以相同的顺序调用。把 `barrier` 缩进到 `if rank == 0:` 里面就破坏了这一点：rank 0 在 barrier 里等，其他 rank 去做下一次集合通信，双方互相等待。

# %%
from tutorials_pkg.distributed import save_with_barrier_inside_if

show_source(save_with_barrier_inside_if)

# %% [markdown]
# 要等多久，取决于进程组的超时时间，默认是：

# %%
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

print("gloo:", default_pg_timeout, " nccl:", default_pg_nccl_timeout)

# %% [markdown]
# 整个集群可能白白空等半个小时。`run_on_ranks` 把 `collective_timeout_s` 传给 `init_process_group(timeout=...)`；设成 2 秒，各个 rank 很快就会放弃，运行以 `RankFailedError` 结束，错误信息说明有一个操作超时了（哪个 rank 先超时每次运行都不一样，另一个随后失去伙伴）：

# %%
try:
    run_on_ranks(save_with_barrier_inside_if, "inside_if.pt", collective_timeout_s=2)
except RankFailedError as error:
    print("a collective timed out:",
          any("Timed out waiting 2000ms" in message for message in error.failures.values()))
    print("ranks that ended without a result:", sorted({*error.failures, *error.stopped}))

# %% [markdown]
# 修正方法是把 barrier 放到 `if` 外面，让每个 rank 都走到它，就像[第一页](../#torchrun-启动的脚本)的 `save_training_state` 那样；本页上面那次训练里，两个 rank 都顺利通过了它。集合通信之外的等待（一个 rank 从一直为空的队列里读、一把永远不释放的锁）不受这个超时保护；`run_on_ranks` 在 `timeout_s` 之后停止整个运行，并抛出 `TimeoutError`，指明仍在运行的 rank。
