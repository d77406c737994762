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
# # 启动进程：`torch.multiprocessing`
#
# `torchrun` 从命令行启动各个 rank。在 Python 里（脚本、测试、这个 notebook），用 `torch.multiprocessing.spawn` 启动：`mp.spawn(fn, args, nprocs)` 在 `nprocs` 个新进程里运行 `fn(i, *args)`，每个进程都是一个全新的解释器，然后等它们结束。每个 rank 还需要 `torchrun` 本来会提供的东西：`init_process_group` 读取的那些变量（`MASTER_ADDR`、`MASTER_PORT`、`RANK`、`WORLD_SIZE`；[第一页](../)的 `init_distributed` 还要读 `LOCAL_RANK`），以及一个可以加入的进程组。只需要下面几行：

# %%
import os
import tempfile

import torch

from tutorials_pkg.distributed import spawn_ranks
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())  # every file this page writes goes here
show_source(spawn_ranks)

# %% [markdown]
# 这里用它们运行[上一页](../sharded/)的 `save_sharded_run`，每块 GPU 一个 rank（没有 GPU 时是两个 CPU rank）；每个 rank 写下自己的分片：

# %%
from tutorials_pkg.distributed import save_sharded_run

spawn_ranks(save_sharded_run, "spawned", world_size=torch.cuda.device_count() or 2)
print(sorted(os.listdir("spawned")))

# %% [markdown]
# 某个 rank 抛出异常时，`mp.spawn` 停掉其他 rank，并在这里抛出 `ProcessRaisedException`，附上那个 rank 的 traceback；没有留下 traceback 就死掉的 rank（比如被内存不足时的 OOM killer 杀掉），对应的是 `ProcessExitedException`。它不做的事有三件：把 `fn` 的返回值交回来；到了期限就放弃（一个 rank 等一个永远不会来的同伴，要等到进程组超时为止，默认 30 分钟）；停掉 rank 自己启动的进程。
#
# ## 本章的 `run_on_ranks` 多做了什么
#
# 本章的页面和测试需要这三件事，所以改用 `run_on_ranks`：它是页面的辅助代码，不是供复制的示例，代码在 `tutorials_pkg/launcher.py`，建立在 `torch.multiprocessing.start_processes`（`mp.spawn` 调用的就是它）之上。`run_on_ranks(fn, *args)` 在一个 `gloo` 进程组里（在 GPU 上用 `backend="nccl"`，或者传 `None`，让 `fn` 自己加入进程组）于每个 rank 上运行 `fn(rank, world_size, *args)`，返回每个 rank 的返回值，并且保证三点：
#
# - 出错的 rank 连同它的 traceback 一起报出：`RankFailedError` 列出每个出错的 rank 及其异常，最先出错的排在最前，它们的 traceback 作为异常的 cause。（torch 报告的是它最先注意到退出的那个 rank，而那常常只是失去了同伴的 rank。）
# - 调用结束后不留下任何进程：每个 rank 各自带领一个进程组，结束时每个进程组都被杀掉，rank 在组里启动的进程（`subprocess.Popen` 启动的、fork 出来的子进程）也一起结束。
# - 超时就是错误：超过 `timeout_s` 还在运行，就停掉并抛出 `TimeoutError`；`collective_timeout_s` 限定进程组里每一次集合通信的时长，让互相等待的 rank 早些放弃。
#
# ```mermaid
# sequenceDiagram
#     participant P as 本进程
#     participant R0 as rank 0
#     participant R1 as rank 1
#     P->>R0: start_processes：fn(0, 2, *args)
#     P->>R1: fn(1, 2, *args)
#     R0-->R1: 在 MASTER_ADDR:MASTER_PORT 上 init_process_group
#     R0-->>P: 它的结果，或它的 traceback
#     R1-->>P: 它的结果，或它的 traceback
#     P->>P: 杀掉每个 rank 的进程组，再返回结果或抛出异常
# ```
#
# 每个 rank 都拿到 `torchrun` 文档列出的全部变量，取值和 `torchrun --standalone` 给的一样（端口是一个空闲端口）：

# %%
from tutorials_pkg.launcher import torchrun_variables

for name, value in torchrun_variables(rank=1, world_size=2, port=29500).items():
    print(f"{name:27} {value}")

# %% [markdown]
# ## 只接受定义在模块里的函数
#
# 新进程启动一个全新的解释器，按模块和名字导入 `fn`，所以 `fn` 必须定义在某个模块的顶层。定义在 notebook 单元格里的函数，新进程找不到：用 `mp.spawn` 时，每个 rank 都在启动过程中死掉（`ProcessExitedException`）。`run_on_ranks` 则当场以 `TypeError` 拒绝它：

# %% tags=["raises-exception"] raises="TypeError"
from tutorials_pkg.distributed import run_on_ranks  # defined in tutorials_pkg.launcher


def which_rank(rank, world_size):
    return rank

run_on_ranks(which_rank)

# %% [markdown]
# ## 在脚本里
#
# 同样的函数写在脚本里就可以用，前提是脚本把 `spawn_ranks`（或 `mp.spawn`、`run_on_ranks`）的调用放在 `if __name__ == "__main__":` 之下（每个新进程都会导入这个脚本，否则它们又会各自启动一遍所有 rank）。
