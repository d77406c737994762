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
# # 多卡与分布式下的保存与读取
#
# 训练分布在多个进程上（每块 GPU 一个进程）时，每个进程（称为一个 *rank*）要么持有模型的完整副本（DDP），要么只持有模型的一片（FSDP）。保存与读取于是多出三个问题：谁来写文件，谁要等它写完，读回来的张量落在哪个设备上。本页用真正在多个进程里运行的代码回答这些问题：CPU 上的两个 rank，通过 PyTorch 的 `gloo` 后端通信。同样的代码换成 `nccl` 后端就能在 GPU 上运行。
#
# 本页的每一段输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## 启动各个 rank
#
# 在集群上，由 `torchrun` 为每块 GPU 启动一个进程，并通过环境变量（`RANK`、`LOCAL_RANK`、`WORLD_SIZE`、`MASTER_ADDR`、`MASTER_PORT`）告诉每个进程它是谁：
#
# ```bash
# torchrun --nproc-per-node=2 train.py                   # one machine, 2 GPUs
# torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 \
#          --master-addr=10.0.0.1 --master-port=29500 train.py   # on the first of 2 machines
# ```
#
# `train.py` 的每个 rank 在调用任何集合通信（`all_reduce`、`barrier` 等）之前先加入同一个进程组，结束时再退出：
#
# ```python
# dist.init_process_group("nccl")   # reads the variables torchrun set
# torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
# ...                               # what the functions on this page do
# dist.destroy_process_group()
# ```
#
# notebook 无法由 `torchrun` 启动，所以本页用 `run_on_ranks` 自己启动各个 rank：它为每个 rank 启动一个全新的 Python 进程，设置好 `torchrun` 会设置的那些变量（端口取一个空闲端口），把它们组成一个 `gloo` 进程组，然后在每个进程里运行 `fn(rank, world_size, *args)`。每个 rank 把自己的结果，或者自己的错误和 traceback，写进一个临时目录，结果就是这样传回来的。无论发生什么，调用结束后都不会留下任何进程：一个 rank 失败时，其余的 rank 会被停掉；超过 `timeout_s` 还没结束的运行也会被停掉。
#
# ```mermaid
# sequenceDiagram
#     participant P as this process
#     participant R0 as rank 0
#     participant R1 as rank 1
#     P->>R0: spawn run_rank(0, ...)
#     P->>R1: spawn run_rank(1, ...)
#     R0-->R1: init_process_group("gloo") at MASTER_ADDR:MASTER_PORT
#     R0->>R0: fn(0, 2, *args)
#     R1->>R1: fn(1, 2, *args)
#     R0-->>P: rank0.pt (result or error)
#     R1-->>P: rank1.pt (result or error)
#     P->>P: stop what still runs; return the results or raise
# ```
#
# 启动器的代码，连同它用到的所有辅助函数：

# %%
import os
import tempfile

import torch

from tutorials_pkg.launcher import run_on_ranks
from tutorials_pkg.source import show_source

workdir = tempfile.mkdtemp()  # every checkpoint of this page goes here
show_source(run_on_ranks)

# %% [markdown]
# spawn 出来的进程会启动一个新的解释器，并按模块和名字导入 `fn`，所以 `fn` 必须定义在某个模块的顶层。定义在 notebook 单元格里的函数，新进程找不到；与其让每个 rank 都崩溃，`run_on_ranks` 直接以 `TypeError` 拒绝它：

# %% tags=["raises-exception"] raises="TypeError"
def which_rank(rank, world_size):
    return rank

run_on_ranks(which_rank)

# %% [markdown]
# 同样的函数写在脚本里就可以用，前提是脚本把 `run_on_ranks` 的调用放在 `if __name__ == "__main__":` 之下（每个新进程都会导入这个脚本，否则它们又会各自启动一遍所有 rank）。

# %% [markdown]
# ## 一步 DDP 训练，由 rank 0 保存
#
# `DistributedDataParallel` 在每个 rank 上保留模型的完整副本。构造时，它把 rank 0 的权重复制给所有 rank；`backward` 时，它对所有 rank 的梯度求平均，所以 `optimizer.step()` 之后各个副本又完全相同。这样每个 rank 都持有整个模型，只需其中一个写检查点即可，按惯例是 rank 0。`save_on_rank0` 由*每一个* rank 调用：所有 rank 一起取出 state dict（对分片的模型来说这是一次集合通信），rank 0 写文件，`barrier` 让每个 rank 都等到文件写完才继续。

# %%
from tutorials_pkg.distributed import train_and_save_on_rank0

show_source(train_and_save_on_rank0)

# %% [markdown]
# 两个 rank，各自用自己的一批数据：

# %%
weights_path = os.path.join(workdir, "weights.pt")
results = run_on_ranks(train_and_save_on_rank0, weights_path)

for rank, result in enumerate(results):
    first_row = [round(v, 4) for v in result["state_dict"]["0.weight"][0].tolist()]
    print(f"rank {rank}: loss {result['loss']:.4f}, 0.weight[0] = {first_row}")
same = all(torch.equal(a, b) for a, b in zip(results[0]["state_dict"].values(),
                                              results[1]["state_dict"].values()))
print("same weights on both ranks:", same)
assert same

# %% [markdown]
# 两个 rank 的损失不同（数据不同），权重却一位不差地相同。它们也正是单个进程从 rank 0 的初始权重出发、对两个 rank 损失的平均值走一步所得到的结果：

# %%
import torch.nn.functional as F

from tutorials_pkg.distributed import rank_batch, tiny_model

reference = tiny_model(seed=0)
mean_loss = sum(F.cross_entropy(reference(x), y) for x, y in map(rank_batch, range(2))) / 2
mean_loss.backward()
with torch.no_grad():
    for parameter in reference.parameters():
        parameter -= 0.1 * parameter.grad  # SGD, lr=0.1
close = all(torch.allclose(a, b, atol=1e-6)
            for a, b in zip(reference.state_dict().values(), results[0]["state_dict"].values()))
print("same as one process on the mean loss:", close)
assert close

# %% [markdown]
# 文件里是模型自己的键名：`get_model_state_dict` 去掉了 DDP 包装器加在每个名字前面的 `module.`。

# %%
saved = torch.load(weights_path, weights_only=True)
print(list(saved))

# %% [markdown]
# ## 每个 rank 都用 `map_location` 读取
#
# 新的任务（恢复训练或做评估）在每个 rank 上读取这个文件。每个 rank 都传入 `map_location`，也就是张量应当创建在哪个设备上：它自己的 GPU `cuda:<LOCAL_RANK>`，没有 GPU 时（比如这里）就是 CPU。

# %%
from tutorials_pkg.distributed import load_on_every_rank

show_source(load_on_every_rank)

# %%
loaded = run_on_ranks(load_on_every_rank, weights_path)
for rank, result in enumerate(loaded):
    equal = all(torch.equal(result["state_dict"][name], saved[name]) for name in saved)
    print(f"rank {rank}: on {result['device']}, keys {result['keys']}, equal to the file: {equal}")
    assert equal

# %% [markdown]
# 在 DDP 下，其实只在 rank 0 上读取也行（包装器构造时会把 rank 0 的权重复制给其他 rank），但每个 rank 都读的代价很小，而分片的模型必须这样做。

# %% [markdown]
# ## 用 `torch.distributed.checkpoint` 保存分片检查点
#
# 一块设备装不下的模型要*分片*：用 FSDP2 的 `fully_shard`，每个参数沿第一维切开，每个 rank 只保留自己那一片。没有哪个 rank 持有整个模型，所以也没有哪个 rank 能把它写进一个文件（除非先把它收集起来，而那可能放不下）。分布式检查点包（DCP，`torch.distributed.checkpoint`）改为写一个目录：每个 rank 写自己持有的分片，rank 0 再加一个 `.metadata` 文件，记录哪个张量的哪一部分在哪里。
#
# ```mermaid
# flowchart LR
#     W["0.weight, 8×4"] -- "rows 0–3" --> R0["rank 0"] --> F0["__0_0.distcp"]
#     W -- "rows 4–7" --> R1["rank 1"] --> F1["__1_0.distcp"]
#     R0 --> M[".metadata"]
# ```
#
# state dict 来自 `get_model_state_dict` 和 `get_optimizer_state_dict`（在 `torch.distributed.checkpoint.state_dict` 里）：它们对普通模型、DDP 和 FSDP 用法相同，并且用普通模型的键名来命名每个张量。
#
# 读取是保存的镜像，只有一点不同：`dcp.load` 不返回 state dict，而是原地填充传给它的那个。所以每个 rank 先构造模型和优化器（分片方式可以相同，也可以不同：DCP 读取时会重新分片），向它们要一个 state dict，让 `dcp.load` 填好，再用 `set_model_state_dict` / `set_optimizer_state_dict` 交还给它们。

# %%
from tutorials_pkg.distributed import load_sharded, save_sharded

show_source(save_sharded, load_sharded)

# %%
sharded_dir = os.path.join(workdir, "sharded")
saved_shards = run_on_ranks(save_sharded, sharded_dir)
full = saved_shards[0]["state_dict"]

print("whole model:", {name: tuple(t.shape) for name, t in full.items()})
for rank, result in enumerate(saved_shards):
    print(f"rank {rank} held:", result["local_shapes"])
for name in sorted(os.listdir(sharded_dir)):
    print(f"{name:14} {os.path.getsize(os.path.join(sharded_dir, name)):5} bytes")

# %% [markdown]
# 一个新的任务读取它，每个 rank 都读进一个用别的权重构造的模型。无论用什么包装器，键名都是普通模型的：rank 0 从 DDP 模型写出的文件，和这个 FSDP 模型的检查点，用的都是 `tiny_model()` 自己的名字，最后一行检查了这一点。

# %%
loaded_shards = run_on_ranks(load_sharded, sharded_dir)
for rank, result in enumerate(loaded_shards):
    same = all(torch.equal(result["state_dict"][name], full[name]) for name in full)
    momentum = [round(v, 4) for v in result["optimizer"]["state"]["2.bias"]["momentum_buffer"].tolist()]
    print(f"rank {rank}: weights as saved: {same}; momentum of 2.bias: {momentum}")
    assert same
assert list(saved) == list(full) == list(tiny_model().state_dict())  # the plain model's keys

# %% [markdown]
# ## 分片检查点转成单个文件，再转回来
#
# 要把模型交给没有集群的人，可以用 `dcp_to_torch_save`（在 `torch.distributed.checkpoint.format_utils` 里）把目录转成一个 `torch.save` 文件；它会把所有内容读进一个进程，所以只在一个 rank 上或离线运行它。这个模块也能在命令行里转换：`python -m torch.distributed.checkpoint.format_utils dcp_to_torch <folder> <file>`。

# %%
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp

one_file = os.path.join(workdir, "one_file.pt")
dcp_to_torch_save(sharded_dir, one_file)
checkpoint = torch.load(one_file, weights_only=True)
print(list(checkpoint), list(checkpoint["model"]))

model = tiny_model(seed=3)
print(model.load_state_dict(checkpoint["model"]))
assert all(torch.equal(model.state_dict()[name], full[name]) for name in full)

# %% [markdown]
# `torch_save_to_dcp` 则反过来转换，例如要从一个单文件检查点开始一次分片训练：

# %%
back_dir = os.path.join(workdir, "sharded_again")
torch_save_to_dcp(one_file, back_dir)
print(sorted(os.listdir(back_dir)))

# %% [markdown]
# 不做任何转换，`dcp.load` 也能在一个进程里、不用进程组，把分片检查点直接读进一个普通模型：

# %%
from tutorials_pkg.distributed import load_sharded_into_plain_model

show_source(load_sharded_into_plain_model)

# %%
for folder in (sharded_dir, back_dir):
    model = load_sharded_into_plain_model(folder, tiny_model(seed=4))
    same = all(torch.equal(model.state_dict()[name], full[name]) for name in full)
    print(f"{os.path.basename(folder)}: weights as saved: {same}")
    assert same

# %% [markdown]
# ## 实践中常见的错误
#
# ### rank 0 还没写完就去读
#
# 没有 barrier，其他 rank 不会等 rank 0，而是立刻去读。这里 rank 0 写文件前要花一秒（大检查点就要写这么久），这个函数代表“在 rank 0 上保存、然后在每个 rank 上读取”的代码：

# %%
from tutorials_pkg.distributed import load_without_barrier

show_source(load_without_barrier)

# %% [markdown]
# rank 1 找不到文件，抛出 `FileNotFoundError`；启动器停止这次运行，并抛出 `RankFailedError`，指明是哪个 rank、出了什么错：

# %% tags=["raises-exception"] raises="RankFailedError"
run_on_ranks(load_without_barrier, os.path.join(workdir, "no_barrier.pt"))

# %% [markdown]
# 如果同一路径上已有上一个 epoch 的检查点，同样的竞争就不会报错：rank 1 读到的是旧权重，或者一个写了一半的文件。反过来的错误是每个 rank 同时写同一个路径，得到的文件是最后写完的那一份，或者几份写入混在一起的损坏文件。修正方法就是前面的 `save_on_rank0`：只有 rank 0 写，`dist.barrier()` 让每个 rank 都等到文件写完，所以在“读取”一节里每个 rank 读到的权重都相同。

# %% [markdown]
# ### 保存了 DDP 包装器：每个键都带 `module.`
#
# 对 DDP 包装器调用 `model.state_dict()`，每个张量的名字都是 `module.<name>`。DDP 需要一个进程组，而只有一个进程的组就足以看到这一点，这里直接在 notebook 里建一个（内存里的 `HashStore` 代替了地址和端口）：

# %%
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
wrapper_path = os.path.join(workdir, "wrapper.pt")
torch.save(DDP(tiny_model()).state_dict(), wrapper_path)  # wrong: the wrapper's keys
dist.destroy_process_group()

wrapper_state = torch.load(wrapper_path, weights_only=True)
print(list(wrapper_state))

# %% [markdown]
# 普通模型（做推理时构造的就是它）没有这些键，`load_state_dict` 抛出 `RuntimeError`，列出缺少的键和多出来的键：

# %% tags=["raises-exception"] raises="RuntimeError"
tiny_model().load_state_dict(wrapper_state)

# %% [markdown]
# 像 `save_on_rank0` 那样保存 `get_model_state_dict(model)`（或 `model.module.state_dict()`）即可。对已经带着前缀保存的文件，用 torch 自带的 `consume_prefix_in_state_dict_if_present` 去掉前缀（原地修改，而且只处理以该前缀开头的键）：

# %%
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

consume_prefix_in_state_dict_if_present(wrapper_state, "module.")
print(list(wrapper_state))
tiny_model().load_state_dict(wrapper_state)

# %% [markdown]
# ### 读取时不给 `map_location`
#
# 检查点为每个张量记录了它保存时所在的设备，不给 `map_location` 时，`torch.load` 会把每个张量重新创建在那个设备上。`storage_locations` 读出这些记录：

# %%
from tutorials_pkg.distributed import storage_locations

show_source(storage_locations)

# %%
print(storage_locations(weights_path))
unmapped = torch.load(weights_path, weights_only=True)
assert {str(t.device) for t in unmapped.values()} == set(storage_locations(weights_path))

# %% [markdown]
# 我们的 rank 0 在 CPU 上训练，所以文件里记的是 `cpu`。从 GPU 任务保存的文件记的是 `cuda:0`。在一台有 8 块 GPU 的机器上不给 `map_location` 读取，每个 rank 都会把自己的那份副本创建在 GPU 0 上：一块 GPU 上放 8 份副本，可能显存不足，而另外七块一份都没有。在没有 GPU 的机器上，同样的读取会抛出 `RuntimeError`（“Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False”，由 `torch/serialization.py` 抛出）。像 `load_on_every_rank` 那样给每个 rank 指定它自己的设备；用字典则只重映射字典里写到的位置，例如 `{"cuda:0": f"cuda:{local_rank}"}`：

# %%
from tutorials_pkg.distributed import rank_device

for local_rank in range(2):
    device = rank_device(local_rank)  # cuda:<local_rank> on a GPU machine
    state = torch.load(weights_path, map_location=device, weights_only=True)
    print(f"local rank {local_rank}:", {str(t.device) for t in state.values()})

# %% [markdown]
# ### 一个 rank 失败，其他 rank 一直等它
#
# 一个 rank 抛出异常后，其他 rank 会在下一次集合通信里等待一个永远不会来的伙伴：

# %%
from tutorials_pkg.distributed import fail_on_rank

show_source(fail_on_rank)

# %% [markdown]
# `run_on_ranks` 发现有 rank 失败，就停掉其余的 rank，并抛出 `RankFailedError`，按失败先后列出失败的 rank：先是 rank 1 和它的 `ValueError`；如果 rank 0 在被停掉之前也走到了那一步，再列出 rank 0，它的 `all_reduce` 失去了伙伴。（在会打印完整 traceback 的地方，比如终端里，每个 rank 自己的 traceback 也会作为这个错误的起因一并打印出来。）

# %% tags=["raises-exception"] raises="RankFailedError"
run_on_ranks(fail_on_rank)

# %% [markdown]
# 没有留下任何进程：

# %%
import multiprocessing

print("processes left:", multiprocessing.active_children())

# %% [markdown]
# ### 只有 rank 0 走到的 barrier
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
# 整个集群可能白白空等半个小时。`run_on_ranks` 把 `collective_timeout_s` 传给 `init_process_group(timeout=...)`；设成 2 秒，各个 rank 很快就会放弃，运行以 `RankFailedError` 结束，错误信息说明是哪个操作超时了：

# %% tags=["raises-exception"] raises="RankFailedError"
run_on_ranks(save_with_barrier_inside_if, os.path.join(workdir, "inside_if.pt"),
             collective_timeout_s=2)

# %% [markdown]
# 修正方法是把 barrier 放到 `if` 外面，让每个 rank 都走到它，就像 `save_on_rank0` 那样，本页的第一次运行中两个 rank 都顺利通过了它。集合通信之外的等待（一个 rank 从一直为空的队列里读、一把永远不释放的锁）不受这个超时保护；`run_on_ranks` 在 `timeout_s` 之后停止整个运行，并抛出 `TimeoutError`，指明仍在运行的 rank。
