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
# # 启动器：`run_on_ranks`
#
# 本章从[第一页](../)起就用 `run_on_ranks` 在多个进程里运行函数，[上一页](../sharded/)的分片检查点也是这样保存和读取的。这一页给出它的代码，以及它对要运行的函数有什么要求。
#
# ## 它做什么，保证什么
#
# `run_on_ranks(fn, *args)` 为每个 rank 启动一个全新的 Python 进程，设置好 `torchrun` 会设置的那些变量（端口取一个空闲端口），把各个 rank 组成一个 `gloo` 进程组（在 GPU 上用 `backend="nccl"`，或者传 `None`，让 `fn` 像 `torchrun` 脚本那样自己加入进程组），然后在每个进程里运行 `fn(rank, world_size, *args)`。它守住三个承诺，而自己写的启动器很容易在这些地方出错：
#
# - 每个 rank 先把自己的结果（或者错误和 traceback）写到一个临时文件名下，写完再改名，所以一个在写入途中被停掉的 rank 不会留下写了一半的文件：调用方拿到的是这个 rank 真正的错误，或者运行超过 `timeout_s` 时承诺的 `TimeoutError`，绝不会是一个 `EOFError`。
# - 每个 rank 运行在自己的会话（session）里，停掉一个 rank 时，它启动的所有进程（`subprocess.Popen` 启动的、fork 出来的子进程）也一并停掉，所以它们都不会比这次调用活得更久，也不会一直占着调用方的输出管道。
# - 无法传回的结果（numpy 数组、lambda）在 rank 里就被拒绝，抛出的 `TypeError` 指明是哪个 rank、结果里的哪一项，而不是在调用方抛出一个反序列化错误。
#
# ```mermaid
# sequenceDiagram
#     participant P as 本进程
#     participant R0 as rank 0
#     participant R1 as rank 1
#     P->>R0: 启动 run_rank(0, ...)
#     P->>R1: 启动 run_rank(1, ...)
#     R0-->R1: 在 MASTER_ADDR:MASTER_PORT 上 init_process_group("gloo")
#     R0->>R0: fn(0, 2, *args)
#     R1->>R1: fn(1, 2, *args)
#     R0-->>P: rank0.pt（结果或错误）
#     R1-->>P: rank1.pt（结果或错误）
#     P->>P: 停掉仍在运行的进程；返回结果或抛出异常
# ```
#
# 启动器的代码，连同它用到的所有辅助函数：

# %%
from tutorials_pkg.distributed import run_on_ranks  # defined in tutorials_pkg.launcher
from tutorials_pkg.source import show_source

show_source(run_on_ranks)

# %% [markdown]
# ## 只接受定义在模块里的函数
#
# spawn 出来的进程会启动一个新的解释器，并按模块和名字导入 `fn`，所以 `fn` 必须定义在某个模块的顶层。定义在 notebook 单元格里的函数，新进程找不到；与其让每个 rank 都崩溃，`run_on_ranks` 直接以 `TypeError` 拒绝它：

# %% tags=["raises-exception"] raises="TypeError"
def which_rank(rank, world_size):
    return rank

run_on_ranks(which_rank)

# %% [markdown]
# ## 在脚本里
#
# 同样的函数写在脚本里就可以用，前提是脚本把 `run_on_ranks` 的调用放在 `if __name__ == "__main__":` 之下（每个新进程都会导入这个脚本，否则它们又会各自启动一遍所有 rank）。
