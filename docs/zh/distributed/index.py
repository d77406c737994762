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
# 训练分布在多个进程上（每块 GPU 一个进程）时，每个进程（称为一个 *rank*）要么持有模型的完整副本（DDP），要么只持有模型的一片（FSDP）。保存与读取于是多出三个问题：谁来写文件，谁要等它写完，读回来的张量落在哪个设备上。本章用真正在多个进程里运行的代码回答这些问题，共五页：
#
# - 本页：用 `torchrun` 启动的训练脚本，每个 rank 最后的权重为什么相同，恢复训练时每个 rank 怎样读取，以及 `DataParallel` 和 DDP 加在每个键前面的 `module.`。
# - [DDP：SyncBatchNorm 与未使用的参数](sync_and_unused/)：跨 rank 的 BatchNorm，以及 forward 从不使用的参数。
# - [分片检查点：DCP 与单文件互转](sharded/)：用 `torch.distributed.checkpoint` 保存分片检查点，把它转成单个文件，再转回来。
# - [启动进程：torch.multiprocessing](launcher/)：不用 `torchrun`、在 Python 里启动各个 rank 的几行代码，以及本章的 `run_on_ranks` 在此之上多做了什么。
# - [分布式保存：常见错误](in_the_wild/)：实践中常见的错误，先让它真的发生，再修正。
#
# 本页从用 `torchrun` 启动的训练脚本讲起。脚本自己选择设备：在有 GPU 的机器上，每个 rank 使用自己的那块 GPU 和 `nccl` 后端；没有 GPU 时（构建本站的机器就是这样），每个 rank 在 CPU 上用 `gloo` 后端工作。本章其余部分在两个 CPU rank 上运行同样的函数，以便看清它们内部发生了什么；项目的 GPU 测试则在两块 GPU 上用 `nccl` 运行它们（GPU 不到两块的机器上，这些测试跳过，并注明原因）。
#
# 本章每一页的输出，都是构建网站时真正运行代码得到的，运行环境就是下面打印的版本。

# %%
from tutorials_pkg.runtime import describe_runtime

print(describe_runtime())

# %% [markdown]
# ## `torchrun` 启动的脚本
#
# `torchrun` 为每块 GPU 启动一个进程，并通过环境变量告诉每个进程它是谁：`RANK`（它在所有进程中的编号）、`LOCAL_RANK`（它在本机上的编号）、`WORLD_SIZE`，以及 `MASTER_ADDR` / `MASTER_PORT`（rank 0 在哪里等其他进程）：
#
# ```bash
# torchrun --nproc-per-node=2 train.py checkpoints      # 一台机器，2 块 GPU
# torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 \
#          --master-addr=10.0.0.1 --master-port=29500 train.py checkpoints   # 两台机器中的第一台
# ```
#
# 下面就是整个脚本：`main` 以及它调用的一切。把它存为 `train.py`，末尾加上 `if __name__ == "__main__": main()`，就是上面的命令所运行的脚本。（`tutorials_pkg.distributed` 模块本身也以这一行结尾，所以 `torchrun --nproc-per-node=2 -m tutorials_pkg.distributed checkpoints` 也能运行它。）

# %%
import os
import tempfile

import torch

from tutorials_pkg.distributed import main
from tutorials_pkg.source import show_source

os.chdir(tempfile.mkdtemp())  # every file this page writes goes here
show_source(main)

# %% [markdown]
# 各部分的作用：
#
# - `init_distributed` 读取 `LOCAL_RANK`，有 GPU 时*先*调用 `torch.cuda.set_device`，再调用 `init_process_group`：这样 NCCL 和这个进程之后的所有 CUDA 调用用的都是这块 GPU，而不是 GPU 0。`device_id=` 把进程组绑定到同一块 GPU（NCCL 会立即建立通信器，配置有误时在这里就报错，而不是等到第一次集合通信）。没有 GPU 时，进程组在 CPU 上使用 `gloo`。
# - `DDP(model)` 包装放在同一个设备上的模型，这个设备是本 rank 的 GPU 或者 CPU（这样的模型，`device_ids` 可以不传，保持 `None`）。DDP 构造时会把 rank 0 的权重复制给每个 rank，所以每个 rank 可以用各自的种子构造模型。
# - `DistributedSampler` 根据进程组的 rank 和 world size，给每个 rank 分一份属于它自己的数据。每个 epoch 开始时调用 `set_epoch(epoch)`，才会重新打乱，而且所有 rank 的打乱方式相同。
# - `save_training_state` 由*每一个* rank 调用。`get_state_dict` 把模型和优化器的完整状态收集到 rank 0 的 CPU 上，键名是参数名（这是一次集合通信：分片的 FSDP 模型每个 rank 只有一片，见[分片检查点一页](sharded/#分片模型的单文件检查点)）；rank 0 写文件，`barrier` 让每个 rank 都等到文件写完才继续。每个 rank 的随机数生成器状态（CPU 的和它那些 GPU 的）也存进去，供带 dropout 或随机数据增强的模型使用。
# - `load_training_state` 同样由每个 rank 调用。它把文件读到 CPU 上，再由 `set_state_dict` 把每个张量放到对应参数所在的设备上（FSDP 则是每个 rank 留下自己那一片）。
# - `main` 在 `destroy_process_group()` 之前先调用 `gc.collect()`，让训练留在循环引用里的对象趁进程组还在时释放。如果等到进程退出时才释放，那时进程组已经不在了，有时会让某个 rank 异常终止（「terminate called without an active exception」）。
# - `main` 还有两个 `torchrun` 从不传的参数：`device`，用于在已经建好的进程组里训练（本章其余部分就这样运行它）；`load`，下文错误的做法会把它换掉。
#
# 这个简短的写法有意省去了一点：rank 0 用普通的 `torch.save` 写每个 epoch 的文件，任务如果在写的过程中被杀掉，这个文件只写了一半（之前各个 epoch 的文件不受影响）。要安全地覆盖同一个路径，就先在旁边写一个临时文件再改名，像 [`save_checkpoint`](../save_load/checkpoints/) 那样。
#
# 下面把上面这段代码加上那最后一行存为 `train.py`，在本页里启动它（`torchrun` 命令运行的就是 `python -m torch.distributed.run`；`--standalone` 在本机的一个空闲端口上安排各个 rank 会合）：

# %%
import subprocess
import sys
from pathlib import Path

from tutorials_pkg.source import source_with_imports

Path("train.py").write_text(source_with_imports(main) + '\n\nif __name__ == "__main__":\n    main()\n')
nproc = torch.cuda.device_count() or 2  # one process per GPU; two CPU processes without one
command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "train.py", "torchrun_job"]
job = subprocess.run(command, capture_output=True, text=True)
assert job.returncode == 0, job.stderr[-3000:]
print(sorted(os.listdir("torchrun_job")))

# %% [markdown]
# 每个 rank 都在自己那一份数据上训练，rank 0 在每个 epoch 之后写了一个检查点。

# %% [markdown]
# ## 每个 rank 最后的权重都相同
#
# `torchrun` 任务没法把 Python 对象交回这个 notebook。为了看清各个 rank 内部，本页用 `run_on_ranks`（来自 `tutorials_pkg.launcher` 的页面辅助代码，见[启动进程](launcher/)一页）运行同一个 `main`：它为每个 rank 启动一个全新的进程，设置好 `torchrun` 会设置的那些变量，把它们组成一个 `gloo` 进程组，并返回每个 rank 的返回值。`train_ddp` 在这个进程组里调用 `main`，返回每个 rank 训练结束时的权重、学习率和随机数状态。

# %%
from tutorials_pkg.distributed import train_ddp
from tutorials_pkg.launcher import run_on_ranks

results = run_on_ranks(train_ddp, "run")  # two CPU ranks, two epochs

same = all(torch.equal(results[0]["state_dict"][k], results[1]["state_dict"][k])
           for k in results[0]["state_dict"])
print("devices:", [result["device"] for result in results])
print("same weights on both ranks:", same)
assert same

# %% [markdown]
# 两个 rank 的权重一位不差地相同，尽管每个 rank 只看到了自己那一份数据。手动给定 rank 和 world size 的 `DistributedSampler` 可以显示这两份数据：两个 rank 各不相同，每个 epoch 的顺序也不同。`backward` 时 DDP 对所有 rank 的梯度求平均，所以每一步都等于单个进程在两个 rank 的批量合在一起时走的那一步：

# %%
from torch.utils.data.distributed import DistributedSampler

from tutorials_pkg.distributed import optimizer_and_scheduler, tiny_model, toy_dataset, train_step

dataset = toy_dataset()
reference = tiny_model(seed=0)  # rank 0's initial weights, which DDP gave every rank
optimizer, scheduler = optimizer_and_scheduler(reference)
for epoch in (1, 2):
    shares = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, seed=0)
        sampler.set_epoch(epoch)
        shares.append(list(sampler))
    print(f"epoch {epoch}: rank 0 gets {shares[0]}, rank 1 gets {shares[1]}")
    for start in (0, 4):  # two steps of 4 samples per rank
        train_step(reference, optimizer, *dataset[shares[0][start:start + 4] + shares[1][start:start + 4]])
    scheduler.step()
close = all(torch.allclose(reference.state_dict()[k], results[0]["state_dict"][k], atol=1e-6)
            for k in results[0]["state_dict"])
print("same as one process on both ranks' batches:", close)
assert close

# %% [markdown]
# 不调用 `set_epoch`，`DistributedSampler` 每个 epoch 的打乱方式都一样：

# %%
sampler = DistributedSampler(dataset, num_replicas=2, rank=0, seed=0)
print("no set_epoch, one epoch: ", list(sampler))
print("no set_epoch, the next: ", list(sampler))
sampler.set_epoch(2)
print("set_epoch(2):           ", list(sampler))
assert list(sampler) == shares[0]

# %% [markdown]
# 检查点里有恢复训练所需的一切。其中的权重和优化器状态用的是模型自己的键名：`get_state_dict` 去掉了 DDP 包装器加在每个名字前面的 `module.`。随机数生成器的状态每个 rank 一份列表。

# %%
state = torch.load("run/epoch1.pt", weights_only=True)
print(list(state))
print("model:    ", list(state["model"]))
print("optimizer:", list(state["optimizer"]["state"]),
      "learning rate", state["optimizer"]["param_groups"][0]["lr"])
print("epoch:", state["epoch"], " random generator states, one list per rank:", len(state["rng"]))

# %% [markdown]
# ## 恢复训练：每个 rank 都读取
#
# 一个新任务从 `epoch1.pt` 恢复：每个 rank 在包装模型之前调用 `load_training_state`，取回权重、优化器的动量、学习率调度器走到的步数，以及它自己的随机数生成器状态。于是第二个 epoch 和没有中断的那次运行完全一样：

# %%
resumed = run_on_ranks(train_ddp, "resumed", 2, "run/epoch1.pt")

for rank, result in enumerate(resumed):
    rng_as_uninterrupted = torch.equal(result["rng"], results[rank]["rng"])
    print(f"rank {rank}: lr {result['lr']}, RNG as in the uninterrupted run: {rng_as_uninterrupted}")
same = all(torch.equal(resumed[r]["state_dict"][k], results[r]["state_dict"][k])
           for r in range(2) for k in results[r]["state_dict"])
print("same weights as the uninterrupted run:", same)
assert same

# %% [markdown]
# ### 只在 rank 0 上读取
#
# DDP 构造时会把 rank 0 的参数和缓冲区复制给每个 rank。所以单就*权重*而言，在包装之前只在 rank 0 上读取就够了。其余的东西都不会被复制：优化器的动量、调度器的步数和每个 rank 的随机数生成器，仍然是各个 rank 自己构造出来的样子。`load_on_rank0_only` 就是这样做的，它再把 epoch 告诉其他 rank：

# %%
from tutorials_pkg.distributed import load_on_rank0_only

show_source(load_on_rank0_only)

# %%
drifted = run_on_ranks(train_ddp, "rank0_only", 2, "run/epoch1.pt", load_on_rank0_only)

for rank, result in enumerate(drifted):
    rng_as_uninterrupted = torch.equal(result["rng"], results[rank]["rng"])
    print(f"rank {rank}: lr {result['lr']}, RNG as in the uninterrupted run: {rng_as_uninterrupted}")
gap = max((drifted[0]["state_dict"][k] - drifted[1]["state_dict"][k]).abs().max().item()
          for k in results[0]["state_dict"])
print(f"largest difference between the ranks' weights after one epoch: {gap:.4f}")
assert gap > 1e-3

# %% [markdown]
# 没有任何报错。两个 rank 从相同的权重出发，平均的是相同的梯度，走的步子却不同（rank 1 的学习率是两倍，而且一开始没有动量），所以第一步之后每个 rank 手里的模型就各不相同了，下一个检查点也只是 rank 0 的那一份。应当在每个 rank 上都读取。

# %% [markdown]
# ## `DataParallel` 与 DDP：都会在每个键前面加上 `module.`
#
# 许多教程仍然用 `nn.DataParallel(model)` 做多卡训练：只有一个进程，每次前向传播都把模型复制到本机的每块 GPU 上。PyTorch 自己的文档则建议改用 DDP，即使只有一台机器；`DataParallel` 的文档字符串就是这么写的：

# %%
from torch import nn

doc = " ".join(nn.DataParallel.__doc__.split())
start = doc.index("It is recommended")
print(doc[start:doc.index(".", doc.index("single node", start)) + 1])

# %% [markdown]
# 两种包装器都把模型存为 `.module`，所以它们的 `state_dict()` 把每个张量命名为 `module.<name>`。DDP 需要一个进程组；在 notebook 里建一个只有一个进程的组就足以试一试（内存里的 `HashStore` 代替了地址和端口）：

# %%
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
print("DataParallel:", list(nn.DataParallel(tiny_model()).state_dict()))
print("DDP:         ", list(DDP(tiny_model()).state_dict()))
wrapper_state = DDP(tiny_model()).state_dict()  # wrong: the wrapper's keys
dist.destroy_process_group()

# %% [markdown]
# 普通模型（做推理时构造的就是它）没有这些键，`load_state_dict` 抛出 `RuntimeError`，列出缺少的键和多出来的键：

# %% tags=["raises-exception"] raises="RuntimeError"
tiny_model().load_state_dict(wrapper_state)

# %% [markdown]
# 像 `save_training_state` 那样保存 `get_state_dict(model, optimizer)`（或 `model.module.state_dict()`）即可。对已经带着前缀保存的文件，用 torch 自带的 `consume_prefix_in_state_dict_if_present` 去掉前缀（原地修改，而且只处理以该前缀开头的键）：

# %%
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

consume_prefix_in_state_dict_if_present(wrapper_state, "module.")
print(list(wrapper_state))
tiny_model().load_state_dict(wrapper_state)
